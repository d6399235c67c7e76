"""Loading a build into a snapshot: the checks that keep a wrong build from being served."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexer.db import make_engine
from service.catalog import BuildInfo, Catalog
from service.errors import IndexBuildError
from service.snapshot import load_snapshot, resolve_index_dir
from tests.service.world import World, write_index


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
