"""The torch search of exact flat indexes: one float32 pass, or an int8 pass and a float32 one."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from service.flat_search import MAX_CANDIDATE_SHARE, FlatView, first_pass, quantise_rows


def _index(xb: np.ndarray, ids: np.ndarray | None = None) -> faiss.Index:
    index = faiss.index_factory(xb.shape[1], "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(xb, np.arange(len(xb), dtype=np.int64) if ids is None else ids)
    return index


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("two_pass", [False, True])
@pytest.mark.parametrize("k", [1, 5, 203])
def test_search_equals_faiss(k: int, two_pass: bool) -> None:
    rng = np.random.default_rng(k)
    xb = rng.standard_normal((200, 32)).astype(np.float32)  # not normalised: the bound uses norms
    index = _index(xb, rng.permutation(10_000)[:200].astype(np.int64))
    view = FlatView.of(index, min_values_two_pass=0 if two_pass else 10**12)
    assert view is not None and (view.int8 is not None) == two_pass
    assert view.vectors.data_ptr() == faiss.downcast_index(index.index).get_xb().__int__()  # no copy
    queries = rng.standard_normal((3, 32)).astype(np.float32)
    queries[1] = xb[17] + 0.01 * queries[1]  # one near a stored vector
    scores, ids = view.search(queries, k)
    want_scores, want_ids = index.search(queries, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)  # -1 past the 200 vectors, as FAISS
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)


def test_two_passes_give_the_float32_ranking_of_a_large_index() -> None:
    rng = np.random.default_rng(1)
    xb = _unit(rng, 12_000, 256)
    index = _index(xb)
    two, one = FlatView.of(index, min_values_two_pass=0), FlatView.of(index, min_values_two_pass=10**12)
    assert two is not None and one is not None and two.int8 is not None and one.int8 is None
    queries = np.concatenate([_unit(rng, 6, 256), xb[[5, 900]] + 0.05 * _unit(rng, 2, 256)])
    for k in (1, 10, 100):
        scores, ids = two.search(queries, k)
        want_scores, want_ids = one.search(queries, k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)
        # ... after scoring only a small part of the index in float32
        candidates = two._candidates(queries, k)
        assert all(c is not None and k <= len(c) < 0.05 * len(xb) for c in candidates)


def test_first_pass_bound_holds_for_every_row() -> None:
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((3000, 64)).astype(np.float32) * rng.uniform(0.1, 3.0, (3000, 1)).astype(
        np.float32
    )
    rows = quantise_rows(torch.from_numpy(xb))
    queries = rng.standard_normal((4, 64)).astype(np.float32)
    products, margin = first_pass(rows, queries)
    q_scale = np.abs(queries.astype(np.float64)).max(axis=1) / 127
    # Independently: integer products in int64 and the exact scores in float64.
    q_codes = np.rint(queries / q_scale[:, None]).astype(np.int64)
    np.testing.assert_array_equal(products.numpy().T, q_codes @ rows.codes.numpy().astype(np.int64).T)
    exact = queries.astype(np.float64) @ xb.astype(np.float64).T
    coarse = products.numpy().T * (q_scale[:, None] * rows.scale)
    slack = np.abs(exact - coarse)
    bound = margin[:, None] / 2 * (q_scale[:, None] * rows.scale)  # margin is 2B / (t s), rounded up
    assert (slack <= bound).all()
    assert slack.max() > 0.25 * bound.min()  # and is not wildly loose


def test_equal_scores_are_ordered_by_row_in_both_passes() -> None:
    same = np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (5, 1))
    for limit in (0, 10**12):
        view = FlatView.of(_index(same, np.array([50, 40, 30, 20, 10], dtype=np.int64)), limit)
        assert view is not None
        _, ids = view.search(same[:1], 5)
        assert ids.tolist() == [[50, 40, 30, 20, 10]]
        _, ids = view.search(same[:1], 2)
        assert ids.tolist() == [[50, 40]]


def test_queries_the_first_pass_cannot_narrow_are_scored_in_full() -> None:
    rng = np.random.default_rng(3)
    xb = np.tile(_unit(rng, 1, 16), (500, 1)) + 1e-4 * _unit(rng, 500, 16)  # all nearly the same
    index = _index(xb.astype(np.float32))
    view = FlatView.of(index, min_values_two_pass=0)
    assert view is not None
    q = xb[:2].astype(np.float32)
    assert view._candidates(q, 3) == [None, None]  # more than MAX_CANDIDATE_SHARE of the rows
    assert MAX_CANDIDATE_SHARE < 1
    np.testing.assert_array_equal(view.search(q, 3)[1], index.search(q, 3)[1])
    queries = np.concatenate([np.full((1, 16), np.nan, dtype=np.float32), q[:1]])
    scores, ids = view.search(queries, 3)
    assert ids[0].tolist() == [-1, -1, -1] and (scores[0] == -np.finfo(np.float32).max).all()
    np.testing.assert_array_equal(ids[1], index.search(q[:1], 3)[1][0])


def test_only_exact_inner_product_indexes_get_a_view() -> None:
    assert FlatView.of(faiss.index_factory(8, "IDMap2,Flat", faiss.METRIC_L2)) is None
    hnsw = faiss.index_factory(8, "IDMap2,HNSW8", faiss.METRIC_INNER_PRODUCT)
    assert FlatView.of(hnsw) is None
    empty = FlatView.of(faiss.index_factory(8, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT), 0)
    assert empty is not None and empty.int8 is None
    scores, ids = empty.search(np.ones((1, 8), dtype=np.float32), 2)
    assert ids.tolist() == [[-1, -1]]


def test_zero_vectors_and_a_zero_query() -> None:
    xb = np.zeros((10, 8), dtype=np.float32)
    xb[3, 0] = 1.0
    view = FlatView.of(_index(xb), min_values_two_pass=0)
    assert view is not None and view.int8 is not None
    _, ids = view.search(np.array([[2, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32), 1)
    assert ids.tolist() == [[3]]
    scores, ids = view.search(np.zeros((1, 8), dtype=np.float32), 3)
    assert ids.tolist() == [[0, 1, 2]] and scores.tolist() == [[0.0, 0.0, 0.0]]


def test_ties_among_the_candidates_are_ordered_by_row() -> None:
    rng = np.random.default_rng(4)
    xb = _unit(rng, 400, 32)
    xb[[300, 20, 150]] = xb[7]  # rows 7, 20, 150, 300 equal
    view = FlatView.of(_index(xb), min_values_two_pass=0)
    assert view is not None
    (rows,) = view._candidates(xb[7:8], 2)
    assert rows is not None and len(rows) < 0.25 * len(xb)
    assert view.search(xb[7:8], 3)[1].tolist() == [[7, 20, 150]]


def test_without_an_int8_product_the_search_keeps_one_pass(monkeypatch) -> None:
    import service.flat_search as flat_search

    def missing(*args: object) -> torch.Tensor:
        raise RuntimeError("_int_mm: not implemented for this device")

    flat_search.int8_product_available.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", missing)
    try:
        assert not flat_search.int8_product_available()
        xb = _unit(np.random.default_rng(5), 300, 16)
        view = FlatView.of(_index(xb), min_values_two_pass=0)
        assert view is not None and view.int8 is None
        assert view.search(xb[:1], 2)[1][0, 0] == 0
    finally:
        flat_search.int8_product_available.cache_clear()
