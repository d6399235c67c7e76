"""Exact inner-product search of an `IDMap2,Flat` index by torch, in two passes.

The search reads every vector once per query, so it is bound by memory bandwidth, and a request
meets the index after its forward pass has pushed it out of the caches. So the first pass scores
every vector with an int8 copy (a quarter of the bytes), and the second recomputes in float32 only
the few whose float32 score could be among the k best. The gain grows with the index: for the
flat indexes `cvm-index build` makes (up to `storage.faiss_index.FLAT_MAX_TILES` tiles) it is a
noticeable part of a whole request, against FAISS's own search too (docs/benchmarks.md,
`scripts/bench_request_parts.py --after-forward`). Why the answer is the float32 one:

* Every vector x is stored as s * c (c int8, one scale s for the index), the query q likewise as
  t * p. Then q.x - t s (p.c) = (t p).(x - s c) + (q - t p).x, so by Cauchy-Schwarz the int8
  score is within B = |t p| max|x - s c| + |q - t p| max|x| of the exact one, the largest
  rounding error and norm over the rows being measured when the vectors are quantised. The int8
  product is exact (int32 sums), so the first pass works on integers alone.
* k rows have an int8 score of at least the k-th best, m, so an exact score of at least
  t s m - B: a row whose int8 score is below m - 2B / (t s) cannot be among the k best. The
  float32 rounding of the second pass is covered by a margin in B, so its top k is the full float32
  product's top k: the same tiles in the same order, ties broken by row as before.

A query whose candidates are not a small part of the index is simply scored in full (float32).

A compressed index (IVF-PQ) that keeps its exact vectors on disk (`storage.faiss_index.
ExactVectors`) is searched by `RerankView`: FAISS finds max(4k, 100) candidates from the codes,
and their exact float32 scores, read from the memory-mapped vectors, rank them. A search
restricted to some tiles (a prior) scores those tiles' exact vectors, as for a flat index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from model.runtime import omp_threads, search_threads
from storage.faiss_index import VECTORS_FILE, ExactVectors, exact_vectors_of, rerank_candidates

INT8_LEVELS = 127
# The second pass has a fixed cost on top of the int8 product: measured after a forward pass,
# two passes only win from indexes of about this many floats on.
MIN_VALUES_TWO_PASS = 8 * 2**20
# Past this share of the index as candidates, the second pass would cost more than scoring all.
MAX_CANDIDATE_SHARE = 0.25
_QUANTISE_CHUNK = 2048  # rows quantised at a time: float64 temporaries of 16 MiB each at d=1,024
_FLOAT32_EPS = 2.0**-24


@dataclass(frozen=True)
class Int8Rows:
    """Int8 copies of (N, d) vectors: x ~ scale * codes, with the largest rounding error and norm."""

    codes: torch.Tensor  # (N, d) int8
    scale: float
    max_error: float  # max over rows of |x - scale * codes|
    max_norm: float  # max over rows of |x|


def quantise(x: torch.Tensor, scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, d) float -> codes round(x / scale) (n, d) int8, each row's |x - scale * codes| and each
    row's |x| (float64). `scale` (one, or (n, 1) per row) must be at least max |x| / 127."""
    x64 = x.double()
    norms = torch.linalg.vector_norm(x64, dim=1)
    codes = (x64 / scale).round_().clamp_(-INT8_LEVELS, INT8_LEVELS)
    x64.sub_(codes * scale)  # the rounding error, in place
    return codes.to(torch.int8), torch.linalg.vector_norm(x64, dim=1), norms


def scale_of(x: torch.Tensor) -> float:
    """The scale that maps the largest |x| to 127 (1 for zeros)."""
    if not x.numel():
        return 1.0
    lowest, highest = torch.aminmax(x)  # no |x| copy of a large index
    peak = max(-float(lowest), float(highest))
    return peak / INT8_LEVELS if peak > 0 else 1.0


def quantise_rows(vectors: torch.Tensor) -> Int8Rows:
    """Int8Rows of (N, d) float32 vectors, a chunk of rows at a time."""
    scale = scale_of(vectors)
    codes, max_error, max_norm = [], 0.0, 0.0
    for i in range(0, len(vectors), _QUANTISE_CHUNK):
        c, error, norms = quantise(vectors[i : i + _QUANTISE_CHUNK], scale)
        codes.append(c)
        max_error, max_norm = max(max_error, float(error.max())), max(max_norm, float(norms.max()))
    return Int8Rows(torch.cat(codes), scale, max_error, max_norm)


@functools.cache
def int8_product_available() -> bool:
    """Whether this torch multiplies int8 matrices into exact int32 sums on the CPU
    (`torch._int_mm`, a private function: tried once rather than assumed)."""
    try:
        a = torch.tensor([[127, -127], [3, 5]], dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, a.T.contiguous()), a.int() @ a.int().T))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class FlatView:
    """Exact inner-product search over an `IDMap2,Flat` index's own float32 vectors (not copied:
    the tensor views the index's storage, which the view keeps alive and nothing changes),
    with int8 copies for the first pass once the index is large enough."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, min_values_two_pass: int | None = None) -> None:
        self.vectors = torch.from_numpy(vectors)  # (N, d) float32 view
        self.ids = ids  # (N,) int64: tile id of each row
        least = MIN_VALUES_TWO_PASS if min_values_two_pass is None else min_values_two_pass
        # int32 sums of d products of at most 127 * 127 must not overflow
        fits = vectors.shape[1] * INT8_LEVELS**2 < 2**31
        two_pass = len(ids) > 0 and vectors.size >= least and fits and int8_product_available()
        self.int8 = quantise_rows(self.vectors) if two_pass else None
        self.owner: Any = None  # what keeps `vectors` alive, if not the caller
        self._by_id: tuple[np.ndarray, np.ndarray] | None = None  # sorted ids, their rows

    @classmethod
    def of(cls, index: Any, min_values_two_pass: int | None = None, hnsw: bool = False) -> FlatView | None:
        """The view of an IDMap2 over a flat inner-product index, else None (IVF, HNSW...).
        Two passes from `min_values_two_pass` floats on (None: MIN_VALUES_TWO_PASS).
        hnsw=True also views the float32 vectors an IDMap2 over an HNSW-Flat index stores (its
        exact scores, for searches restricted to a few tiles: `search(..., ids=)`).
        An index that keeps its exact vectors on disk gets a `RerankView`."""
        exact = exact_vectors_of(index)
        if exact is not None:
            return RerankView(index, exact)
        outer = faiss.downcast_index(index)
        if not isinstance(outer, faiss.IndexIDMap2):
            return None
        inner = faiss.downcast_index(outer.index)
        if hnsw and isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        if not isinstance(inner, faiss.IndexFlat) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        n, d = int(inner.ntotal), int(inner.d)
        vectors = (
            faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
        )
        view = cls(vectors, faiss.vector_to_array(outer.id_map).astype(np.int64), min_values_two_pass)
        view.owner = index  # the vectors live in the index's storage
        return view

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like FAISS: (n, d) -> scores (n, k) float32, ids (n, k) int64, best first; slots past
        the index size hold id -1 and score -FLT_MAX. Equal scores are ordered by row.

        `ids` (tile ids of this index) restricts the search to those tiles: the answer is the
        unrestricted ranking with every other tile taken out (scores and order unchanged)."""
        n = len(queries)
        allowed = None if ids is None else self.rows_of(ids)
        total = len(self.ids) if allowed is None else len(allowed)
        scores = np.full((n, k), -np.finfo(np.float32).max, dtype=np.float32)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        kept = min(k, total)
        if kept:
            q = np.ascontiguousarray(queries, dtype=np.float32)
            finite = np.isfinite(q).all(axis=1)  # a query with NaN or inf matches nothing
            with torch.inference_mode():
                if allowed is None:
                    candidates = self._candidates(q[finite], kept)
                else:
                    candidates = self._candidates(q[finite], kept, allowed)
                for i, rows in zip(np.flatnonzero(finite), candidates, strict=True):
                    scores[i, :kept], best = self._rescore(q[i], rows, kept)
                    out_ids[i, :kept] = self.ids[best]
        return scores, out_ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The rows (ascending) holding tile ids `ids`; ids not in the index are left out."""
        if self._by_id is None:
            order = np.argsort(self.ids, kind="stable")
            self._by_id = (self.ids[order], order)
        sorted_ids, order = self._by_id
        ids = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        found = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.sort(order[at[found]])

    def _candidates(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[np.ndarray | None]:
        """Per finite query, the rows that may be among its k best (None: all rows), among the
        `allowed` rows (ascending) when given."""
        few = allowed is not None and len(allowed) <= MAX_CANDIDATE_SHARE * len(self.ids)
        if self.int8 is None or not len(q) or few:
            return [allowed] * len(q)  # a few allowed rows are simply scored in float32
        coarse, margin = first_pass(self.int8, q)
        out: list[np.ndarray | None] = []
        for i in range(len(q)):
            column = coarse[:, i] if allowed is None else coarse[torch.from_numpy(allowed), i]
            kth = int(torch.topk(column, k).values[-1])  # k rows reach this int8 score
            rows = np.flatnonzero(column.numpy() >= kth - margin[i])
            if allowed is not None:
                rows = allowed[rows]
            out.append(rows if len(rows) <= MAX_CANDIDATE_SHARE * len(self.ids) else allowed)
        return out

    def _rescore(self, q: np.ndarray, rows: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Float32 scores of `rows` (None: all) -> the k best (scores, rows), by score then row."""
        # torch, not numpy: numpy's BLAS threads would spin on the cores torch's threads use
        vectors = self.vectors if rows is None else self.vectors[torch.from_numpy(rows)]
        sims = vectors @ torch.from_numpy(q)
        kth = torch.topk(sims, k).values[-1]
        at = torch.nonzero(sims >= kth).flatten()  # the k best and all rows tied with the k-th
        top_np, at_np = sims[at].numpy(), at.numpy()
        rows_np = at_np if rows is None else rows[at_np]
        order = np.lexsort((rows_np, -top_np))[:k]  # by score, then row, for determinism
        return top_np[order], rows_np[order]


# Rows scored at a time by a restricted search over memory-mapped vectors (16 MiB at d=1,024).
_RERANK_CHUNK = 4096
# Rows are scored run by run (in place) when their runs of consecutive rows are this long on
# average; shorter runs cost more in calls than the copy they save.
_MIN_RUN = 8


def _runs(rows: np.ndarray, longest: int) -> list[slice]:
    """`rows` (ascending) as slices of consecutive rows, none longer than `longest`."""
    if not len(rows):
        return []
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    out: list[slice] = []
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
        first, last = int(rows[start]), int(rows[stop - 1]) + 1
        out.extend(slice(a, min(a + longest, last)) for a in range(first, last, longest))
    return out


class RerankView(FlatView):
    """Search of a compressed index re-ranked with its exact vectors (`ExactVectors`, memory-
    mapped: pages are read as candidates need them and stay in the page cache, not the heap).

    Unrestricted: the index's max(4k, 100) best candidates by their codes, ordered by exact
    score, then tile id (= row: the vectors are stored in tile-id order). Restricted to tiles
    (`ids`): the exact scores of those tiles' vectors, the answer of `FlatView.search`."""

    def __init__(self, index: Any, exact: ExactVectors) -> None:
        # no int8 copy: the vectors stay on disk; the memory map is opened copy-on-write so
        # that torch can view it (it refuses read-only arrays), and nothing ever writes to it
        vectors = np.load(exact.folder / VECTORS_FILE, mmap_mode="c") if len(exact.ids) else exact.vectors
        super().__init__(vectors, exact.ids, min_values_two_pass=2**62)
        self.owner = index
        self.exact = exact

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if ids is not None:
            return super().search(queries, k, ids)
        n = len(queries)
        scores = np.full((n, k), -np.finfo(np.float32).max, dtype=np.float32)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        finite = np.flatnonzero(np.isfinite(q).all(axis=1))  # a query with NaN or inf matches nothing
        if not len(finite) or not len(self.ids):
            return scores, out_ids
        wanted = min(len(self.ids), rerank_candidates(k))
        with omp_threads(search_threads()):
            _, candidates = self.owner.search(q[finite], wanted)
        with torch.inference_mode():
            for i, cand in zip(finite, candidates, strict=True):
                rows = self.exact.rows_of(cand[cand >= 0])
                rows = np.unique(rows[rows >= 0])
                kept = min(k, len(rows))
                if kept:
                    scores[i, :kept], best = self._rescore(q[i], rows, kept)
                    out_ids[i, :kept] = self.ids[best]
        return scores, out_ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The rows (ascending) holding tile ids `ids` (stored in id order: no sorted copy)."""
        rows = self.exact.rows_of(ids)
        rows = rows[rows >= 0]
        # a prior's ids come sorted and distinct (`TileCentres.inside`): no sort needed then
        return rows if len(rows) < 2 or bool((np.diff(rows) > 0).all()) else np.unique(rows)

    def _rescore(self, q: np.ndarray, rows: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FlatView._rescore a chunk of rows at a time: the k best of each chunk (with ties at
        its k-th) hold the k best of all, and no more than a chunk is copied from the map."""
        if rows is None:
            rows = np.arange(len(self.ids))
        runs: list[slice] | list[np.ndarray] = _runs(rows, _RERANK_CHUNK)
        if len(runs) > len(rows) // _MIN_RUN:
            if len(rows) <= _RERANK_CHUNK:
                return super()._rescore(q, rows, k)
            # scattered rows (a re-rank's candidates): copied from the map a chunk at a time
            runs = [rows[at : at + _RERANK_CHUNK] for at in range(0, len(rows), _RERANK_CHUNK)]
        best_s, best_r = [], []
        qt = torch.from_numpy(q)
        for run in runs:
            # rows in runs of consecutive rows (a prior's tiles: rows of tiles of a raster) are
            # scored in place, as views of the map, without copying them first
            vectors = (
                self.vectors[torch.from_numpy(run)] if isinstance(run, np.ndarray) else self.vectors[run]
            )
            sims = (vectors @ qt).numpy()
            chunk = run if isinstance(run, np.ndarray) else np.arange(run.start, run.stop)
            kth = np.partition(sims, len(sims) - min(k, len(sims)))[len(sims) - min(k, len(sims))]
            keep = sims >= kth
            best_s.append(sims[keep])
            best_r.append(chunk[keep])
        top, rows_np = np.concatenate(best_s), np.concatenate(best_r)
        order = np.lexsort((rows_np, -top))[:k]  # by score, then row, as FlatView._rescore
        return top[order], rows_np[order]


def first_pass(index: Int8Rows, q: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Int8 scores of (n, d) finite float32 queries against every row: (N, n) int32 products of
    the codes, and per query the margin in those units within which the int8 ranking may
    differ from the exact one (twice the bound B of the module's docstring, over t * s)."""
    q64 = torch.from_numpy(q).double()
    peak = q64.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / INT8_LEVELS, torch.ones_like(peak))
    codes, error, q_norm = quantise(q64, scale[:, None])
    code_norm = torch.linalg.vector_norm(codes.double(), dim=1) * scale
    # |q.x - t s (p.c)| <= |t p| max|x - s c| + |q - t p| max|x|, plus float32 rounding
    bound = code_norm * index.max_error + error * index.max_norm
    bound += 2.0 * _gamma(q.shape[1]) * q_norm * index.max_norm
    products = torch._int_mm(index.codes, codes.T.contiguous())
    return products, torch.ceil(2.0 * bound / (scale * index.scale)).numpy()


def _gamma(d: int) -> float:
    """Bound on the relative rounding error of a float32 sum of d products (Higham's gamma_d),
    relative to the sum of their magnitudes."""
    return d * _FLOAT32_EPS / (1.0 - d * _FLOAT32_EPS)
