"""Loading a build into a snapshot: the checks that keep a wrong build from being served."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import pytest

import service.flat_search
from model.runtime import set_search_threads
from service.catalog import BuildInfo, Catalog
from service.errors import IndexBuildError
from service.snapshot import IndexSnapshot, load_snapshot, resolve_index_dir
from storage.db import make_engine
from tests.support.service_world import World, write_index

T = TypeVar("T")


@pytest.fixture()
def catalog(fresh_world: World):
    engine = make_engine(fresh_world.db_url)
    yield Catalog(engine)
    engine.dispose()


def _build(world: World, catalog: Catalog) -> BuildInfo:
    build = catalog.active_build()
    assert build is not None
    return build


def test_load_snapshot_of_active_build(fresh_world: World, catalog: Catalog) -> None:
    build = _build(fresh_world, catalog)
    snap = load_snapshot(
        catalog, build, fresh_world.index_dir, fresh_world.weights_sha256, fresh_world.net.out_dim
    )
    assert snap.build_id == build.id
    assert snap.ntotal == len(fresh_world.tiles)
    ids = fresh_world.builds[build.id]["tile_ids"]
    assert set(snap.tiles) == set(ids)
    assert snap.tiles[ids[7]].lon == pytest.approx(fresh_world.tiles[7].lon, abs=1e-12)


def test_load_snapshot_refuses_other_weights(fresh_world: World, catalog: Catalog) -> None:
    with pytest.raises(IndexBuildError, match="rebuild the index with these weights"):
        load_snapshot(catalog, _build(fresh_world, catalog), fresh_world.index_dir, "f" * 64, 256)


def test_load_snapshot_refuses_other_dimension(fresh_world: World, catalog: Catalog) -> None:
    with pytest.raises(IndexBuildError, match="descriptor size 256 != model output 128"):
        load_snapshot(
            catalog, _build(fresh_world, catalog), fresh_world.index_dir, fresh_world.weights_sha256, 128
        )


def test_load_snapshot_refuses_missing_folder(fresh_world: World, catalog: Catalog) -> None:
    build = _build(fresh_world, catalog)
    shutil.rmtree(fresh_world.builds[build.id]["folder"])
    with pytest.raises(IndexBuildError, match="index_meta.json"):
        load_snapshot(catalog, build, fresh_world.index_dir, fresh_world.weights_sha256, 256)


def test_load_snapshot_refuses_vector_count_mismatch(fresh_world: World, catalog: Catalog) -> None:
    build = _build(fresh_world, catalog)
    ids = fresh_world.builds[build.id]["tile_ids"][:-1]  # one tile row without a vector
    vecs = np.eye(len(ids), 256, dtype=np.float32)
    write_index(fresh_world.builds[build.id]["folder"], ids, vecs, fresh_world.weights_sha256, build.id)
    with pytest.raises(IndexBuildError, match="16 tile rows for 15 vectors"):
        load_snapshot(catalog, build, fresh_world.index_dir, fresh_world.weights_sha256, 256)


def test_resolve_index_dir_falls_back_to_index_root(tmp_path) -> None:
    (tmp_path / "root" / "build-3").mkdir(parents=True)
    assert resolve_index_dir("/gone/elsewhere/build-3", tmp_path / "root") == tmp_path / "root" / "build-3"
    assert (
        resolve_index_dir(str(tmp_path / "root" / "build-3"), tmp_path / "x") == tmp_path / "root" / "build-3"
    )


class _RecordingIndex:
    """Stands in for a FAISS index: records the OpenMP thread count a search ran with."""

    ntotal = 3

    def __init__(self) -> None:
        self.threads: list[int] = []

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.threads.append(faiss.omp_get_max_threads())
        n = len(queries)
        return np.zeros((n, k), dtype=np.float32), np.zeros((n, k), dtype=np.int64)


def _in_new_thread(fn: Callable[[], T]) -> T:
    # OpenMP thread counts are per thread: a fresh thread keeps this test's settings to itself.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def test_search_uses_search_threads_in_the_searching_thread_and_restores(tmp_path: Path) -> None:
    index = _RecordingIndex()
    snapshot = IndexSnapshot(build_id=1, index=index, meta={}, tiles={}, index_dir=tmp_path)

    def search_with_two_before() -> tuple[int, int]:
        faiss.omp_set_num_threads(2)
        snapshot.search(np.zeros((1, 4), dtype=np.float32), 2)
        return index.threads[-1], faiss.omp_get_max_threads()

    set_search_threads(1)
    assert _in_new_thread(search_with_two_before) == (1, 2)
    set_search_threads(3)
    try:
        assert _in_new_thread(search_with_two_before) == (3, 2)
    finally:
        set_search_threads(1)


def test_loaded_snapshot_ranks_tiles_and_marks_empty_slots(fresh_world: World, catalog: Catalog) -> None:
    build = _build(fresh_world, catalog)
    snap = load_snapshot(catalog, build, fresh_world.index_dir, fresh_world.weights_sha256, 256)
    ids = fresh_world.builds[build.id]["tile_ids"]
    vectors = snap.index.index.reconstruct_n(0, snap.ntotal)  # the stored descriptors, row i = tile i
    want = np.argsort(-(vectors @ vectors[5]), kind="stable")[:3]
    scores, found = snap.search(vectors[5:6], len(ids) + 2)
    assert found.shape == (1, len(ids) + 2) and found.dtype == np.int64
    assert found[0, 0] == ids[5] and scores[0, 0] == pytest.approx(float(vectors[5] @ vectors[5]), rel=1e-5)
    assert [int(i) for i in found[0, :3]] == [ids[i] for i in want]
    assert list(found[0, -2:]) == [-1, -1]  # more slots than tiles
    last, *empty = snap.lookup(found[0, -3:])
    assert last is snap.tiles[int(found[0, -3])] and empty == [None, None]


@pytest.mark.parametrize("two_pass", [False, True])
def test_loaded_snapshot_of_a_flat_build_searches_by_torch(
    monkeypatch, fresh_world: World, catalog: Catalog, two_pass: bool
) -> None:
    monkeypatch.setattr(service.flat_search, "MIN_VALUES_TWO_PASS", 0 if two_pass else 2**62)
    build = _build(fresh_world, catalog)
    snap = load_snapshot(catalog, build, fresh_world.index_dir, fresh_world.weights_sha256, 256)
    assert snap.flat is not None and (snap.flat.int8 is not None) == two_pass
    q = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    scores, ids = snap.search(q, 4)
    want_scores, want_ids = snap.index.search(q, 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)
