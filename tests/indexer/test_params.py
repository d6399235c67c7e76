"""BuildParams: frozen, stored as the same `Build.params` JSON as before, one fingerprint for resume."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexer.cli import main
from indexer.errors import IndexerError
from indexer.params import BuildParams, FileIdent
from indexer.sources import inspect_raster
from model.checkpoint import file_sha256
from storage import catalog
from storage.db import make_engine, session_scope, upgrade
from storage.models import Build

SHA = "1c48cb8e23eb6ff07c90b80ae27c85ec4eb17f65bb22f11a49b061a7656558e5"

# `Build.params` as the previous version stored them (fingerprints computed by that version):
# an 8-bit raster alone, and a 16-bit raster with a tile list and an input that matched nothing.
STORED_RASTER: dict[str, Any] = {
    "inputs": [["/srv/imagery/cogeo.tif", 298232, 1796525874608689894]],
    "tiles_csv": None,
    "tile_size_m": 70.0,
    "stride_m": 15.0,
    "index_type": "auto",
    "batch_size": 16,
    "shard_size": 64,
    "activate": True,
    "missing_inputs": [],
    "fingerprint": "2f7028cfc9601daaaaaa2e9fbf29c2374e9347280494d4c15653381e3e535a04",
    "sources": {
        "/srv/imagery/cogeo.tif": {
            "path": "/srv/imagery/cogeo.tif",
            "crs": "EPSG:3857",
            "width": 1024,
            "height": 1024,
            "transform": [
                0.5971640348434448,
                0.0,
                14321853.115736904,
                0.0,
                -0.5971640348434448,
                4533021.525424092,
            ],
            "bands": [1, 2, 3],
            "stretch": None,
        }
    },
}
STORED_MIXED: dict[str, Any] = {
    "inputs": [["/srv/imagery/deep.tif", 154104, 1796526382094416830]],
    "tiles_csv": ["/srv/imagery/tiles.csv", 39, 1796526382100349735],
    "tile_size_m": 60.0,
    "stride_m": 30.0,
    "index_type": "flat",
    "batch_size": 32,
    "shard_size": 2048,
    "activate": False,
    "missing_inputs": [["/srv/imagery/nope.tif", "no such file or folder"]],
    "fingerprint": "d17b7071933f8b1c84f44f06857c8877661350e5407821ef70a48f13d6f2ca73",
    "sources": {
        "/srv/imagery/deep.tif": {
            "path": "/srv/imagery/deep.tif",
            "crs": "EPSG:32633",
            "width": 160,
            "height": 160,
            "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0],
            "bands": [1, 2, 3],
            "stretch": [[81.0, 3926.0], [80.98000000000002, 3912.0200000000004], [80.0, 3923.0]],
        }
    },
}


def _stored_fingerprint(stored: dict[str, Any], sha: str) -> str:
    """The stored format's fingerprint, written out: sha256 of the sorted-key JSON of the input
    keys and the weights' hash."""
    keys = ("inputs", "tiles_csv", "tile_size_m", "stride_m", "index_type")
    return hashlib.sha256(
        json.dumps({k: stored[k] for k in keys} | {"weights_sha256": sha}, sort_keys=True).encode()
    ).hexdigest()


@pytest.mark.parametrize("stored", [STORED_RASTER, STORED_MIXED], ids=["raster", "mixed"])
@pytest.mark.parametrize("planned", [True, False], ids=["planned", "unplanned"])
def test_stored_params_round_trip_to_an_equal_object_and_fingerprint(
    stored: dict[str, Any], planned: bool
) -> None:
    stored = copy.deepcopy(stored)
    if not planned:
        del stored["sources"]  # a build killed before its plan committed stores no sources
    params = BuildParams.from_json(stored, SHA)
    assert params.fingerprint() == stored["fingerprint"] == _stored_fingerprint(stored, SHA)
    out = params.to_json()
    assert out == stored and list(out) == list(stored)  # same keys, same order (`cvm-index info`)
    assert json.loads(json.dumps(out)) == out  # JSON types only
    again = BuildParams.from_json(json.loads(json.dumps(out)), SHA)
    assert again == params and again.fingerprint() == params.fingerprint()
    assert (params.sources is None) is not planned
    assert params.same_inputs(stored) and not params.same_inputs({**stored, "fingerprint": "0" * 64})


def test_typed_fields_of_stored_params() -> None:
    params = BuildParams.from_json(STORED_MIXED, SHA)
    assert params.inputs == (FileIdent("/srv/imagery/deep.tif", 154104, 1796526382094416830),)
    assert params.tiles_csv is not None and params.tiles_csv.path == "/srv/imagery/tiles.csv"
    assert (params.tile_size_m, params.stride_m, params.index_type) == (60.0, 30.0, "flat")
    assert (params.batch_size, params.shard_size, params.activate) == (32, 2048, False)
    assert params.missing_inputs == (("/srv/imagery/nope.tif", "no such file or folder"),)
    info = params.raster_infos["/srv/imagery/deep.tif"]
    assert info.bands == (1, 2, 3) and info.stretch is not None and info.stretch[0] == (81.0, 3926.0)
    assert params.input_paths == ["/srv/imagery/deep.tif"]


def test_params_are_frozen_and_stages_derive_new_ones() -> None:
    params = BuildParams.from_json(STORED_RASTER, SHA)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.stride_m = 35.0  # type: ignore[misc]
    unplanned = dataclasses.replace(params, sources=None)
    assert params.sources is not None and unplanned.sources is None and unplanned != params
    assert dataclasses.replace(unplanned, sources=params.sources) == params
    assert len({params, BuildParams.from_json(STORED_RASTER, SHA), unplanned}) == 2  # hashable


def test_fingerprint_follows_the_inputs_only() -> None:
    base = BuildParams.from_json(STORED_MIXED, SHA)
    csv = base.tiles_csv
    assert csv is not None
    other_inputs = {
        "inputs": (base.inputs[0]._replace(mtime_ns=base.inputs[0].mtime_ns + 1),),
        "tiles_csv": csv._replace(size=csv.size + 1),
        "tile_size_m": 61.0,
        "stride_m": 20.0,
        "index_type": "hnsw",
        "weights_sha256": "f" * 64,
    }
    for name, value in other_inputs.items():
        changed = dataclasses.replace(base, **{name: value})
        assert changed.fingerprint() != base.fingerprint(), name
        assert not changed.same_inputs(STORED_MIXED), name
    same_inputs = {"batch_size": 8, "shard_size": 64, "activate": True, "missing_inputs": (), "sources": None}
    for name, value in same_inputs.items():
        assert dataclasses.replace(base, **{name: value}).fingerprint() == base.fingerprint(), name


def test_unreadable_stored_params_are_an_indexer_error() -> None:
    with pytest.raises(IndexerError, match="stored build parameters"):
        BuildParams.from_json({}, SHA)
    broken = {**STORED_RASTER, "inputs": [["/srv/imagery/cogeo.tif", "big", 1]]}
    with pytest.raises(IndexerError, match="stored build parameters"):
        BuildParams.from_json(broken, SHA)


def _build(url: str, idx: Path, weights: Path, *args: str) -> int:
    argv = ["--database-url", url, "--index-dir", str(idx), "build", "--no-progress"]
    return main([*argv, "--weights", str(weights), *args])


def test_a_build_stores_params_that_read_back_equal(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    raster = make_raster("a.tif", size=(300, 300))
    assert _build(url, idx, tiny_weights, "--imagery", str(raster), str(tmp_path / "none.tif")) == 3
    engine = make_engine(url)
    with session_scope(engine) as s:
        build = catalog.get_active_build(s)
        assert build is not None
        stored, sha = dict(build.params), build.weights_sha256
    engine.dispose()
    params = BuildParams.from_json(stored, sha)
    assert params.to_json() == stored and params.fingerprint() == stored["fingerprint"]
    assert stored["fingerprint"] == _stored_fingerprint(stored, file_sha256(tiny_weights))
    st = os.stat(raster)
    assert params.inputs == (FileIdent(str(raster.resolve()), st.st_size, st.st_mtime_ns),)
    assert params.raster_infos == {str(raster.resolve()): inspect_raster(str(raster.resolve()))}
    assert params.missing_inputs == ((str(tmp_path / "none.tif"), "no such file or folder"),)
    assert (params.tile_size_m, params.stride_m, params.batch_size) == (70.0, 35.0, 32)


def test_an_unfinished_build_stored_in_the_previous_format_is_resumed(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build row as the previous version left it when killed before planning: the same command
    resumes it; another stride or --fresh starts a new build."""
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    raster = str(make_raster("a.tif", size=(300, 300)).resolve())
    st, sha = os.stat(raster), file_sha256(tiny_weights)
    stored: dict[str, Any] = {
        "inputs": [[raster, st.st_size, st.st_mtime_ns]],
        "tiles_csv": None,
        "tile_size_m": 70.0,
        "stride_m": 35.0,
        "index_type": "auto",
        "batch_size": 32,
        "shard_size": 2048,
        "activate": True,
        "missing_inputs": [],
    }
    stored["fingerprint"] = _stored_fingerprint(stored, sha)
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        s.add(
            Build(
                status="building",
                is_active=False,
                weights_path=str(tiny_weights),
                weights_sha256=sha,
                model_arch="cvm-net-i",
                embed_dim=16,
                params=stored,
                counts={},
                timings={},
                stats={},
                n_tiles=0,
            )
        )
    capsys.readouterr()
    assert _build(url, idx, tiny_weights, "--imagery", raster) == 0
    assert "build 1: complete (resumed)" in capsys.readouterr().out
    assert _build(url, idx, tiny_weights, "--imagery", raster, "--stride-m", "30") == 0
    assert "build 2: complete\n" in capsys.readouterr().out
    with session_scope(engine) as s:
        first = catalog.get_build(s, 1)
        assert first is not None and first.n_tiles == 9
        # planning added the sources; every other stored value is as it was
        assert {k: v for k, v in first.params.items() if k != "sources"} == stored
        assert list(first.params["sources"]) == [raster]
    engine.dispose()
