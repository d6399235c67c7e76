"""`cvm-index build` end to end: real rasters, bad inputs, exit codes, activation, exports, verify."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from indexer.cli import main
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import Preprocessing
from model.transforms import prepare_satellite
from model.views import set_inference_options
from storage import catalog
from storage.db import make_engine, session_scope
from storage.faiss_index import read_index


def run(db_url: str, index_dir: Path, *args: str) -> int:
    return main(["--database-url", db_url, "--index-dir", str(index_dir), *args])


def build(db_url: str, index_dir: Path, weights: Path, *args: str) -> int:
    return run(db_url, index_dir, "build", "--no-progress", "--weights", str(weights), *args)


def _active(db_url: str) -> tuple[int, dict[int, object]]:
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        b = catalog.get_active_build(s)
        assert b is not None
        tiles = {t.id: t for t in catalog.iter_tiles(s, b.id)}
        bid = b.id
    engine.dispose()
    return bid, tiles


def _tile_input(raster: Path, tile: Any, prep: Preprocessing) -> torch.Tensor:
    """A tile's network input computed by hand: its window read by rasterio at 32 px, prepared."""
    with rasterio.open(raster) as ds:
        window = Window(tile.col_off, tile.row_off, tile.width, tile.height)
        data = ds.read(window=window, out_shape=(3, 32, 32), resampling=Resampling.average)
    return prepare_satellite(np.ascontiguousarray(data.transpose(1, 2, 0)), prep)


def test_build_cogeo_indexes_every_tile_with_its_own_vector(
    db_url: str, index_dir: Path, tiny_weights: Path, mercator_cog: Path
) -> None:
    cogeo = mercator_cog
    assert build(db_url, index_dir, tiny_weights, "--imagery", str(cogeo)) == 0
    build_id, tiles = _active(db_url)
    index, meta = read_index(index_dir / f"build-{build_id}")
    assert meta["ntotal"] == index.ntotal == len(tiles) == 144
    assert meta["factory"] == "IDMap2,Flat" and meta["build_id"] == build_id
    ids = np.sort(faiss.vector_to_array(faiss.downcast_index(index).id_map))
    assert ids.tolist() == sorted(tiles)
    # recompute one tile's descriptor by hand: read its window with rasterio, prepare, embed
    loaded = load_checkpoint(tiny_weights)
    tile = tiles[sorted(tiles)[50]]
    x = _tile_input(cogeo, tile, loaded.config.preprocessing)
    with torch.no_grad():
        expected = loaded.model.embed_satellite(x[None]).numpy()[0]
    np.testing.assert_allclose(index.reconstruct(tile.id), expected, atol=1e-5)
    # the nearest stored vector to that descriptor is the tile itself
    _, nn = index.search(expected[None].astype(np.float32), 1)
    assert nn[0, 0] == tile.id


def test_build_utm_nodata_and_world_degrees(
    tmp_path: Path, tiny_weights: Path, utm_nodata_raster: Path, degrees_raster: Path
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    rgb = utm_nodata_raster
    assert build(url, idx, tiny_weights, "--imagery", str(rgb), "--tile-size-m", "20000") == 0
    _, tiles = _active(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        counts = catalog.get_active_build(s).counts
    # the rotated scene leaves nodata corners: tiles there are skipped, not indexed
    assert (
        counts["skipped_nodata"] > 0
        and counts["indexed"] == len(tiles) == counts["planned"] - counts["skipped_nodata"]
    )
    with rasterio.open(rgb) as ds:
        for t in list(tiles.values())[::25]:
            mask = ds.dataset_mask(window=Window(t.col_off, t.row_off, t.width, t.height))
            assert (mask > 0).mean() >= 0.45  # computed at full resolution here
    world = degrees_raster
    # 2,600 km tiles: 33 of the world raster's 78 km pixels across (at least 32 are needed)
    assert build(url, idx, tiny_weights, "--imagery", str(world), "--tile-size-m", "2600000") == 0
    _, tiles = _active(url)
    assert len(tiles) > 100 and all(-90 <= t.lat <= 90 and -180 <= t.lon <= 180 for t in tiles.values())
    engine.dispose()


def test_bad_inputs_are_rejected_by_name_and_the_rest_indexed(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    tiny_weights_128: Path,
    shared_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    text = tmp_path / "text.tif"
    text.write_text("not a raster")
    inputs = {
        "corrupt": shared_data / "geotiff" / "corrupt.tif",
        "text": text,
        "nocrs": make_raster("nocrs.tif", crs=None),
        "small": make_raster("small.tif", size=(60, 60)),
        "grey": make_raster("grey.tif", bands=1, size=(160, 160)),
        "deep": make_raster("deep.tif", dtype="uint16", size=(160, 160)),
    }
    code = build(
        url, idx, tiny_weights_128, "--imagery", *map(str, inputs.values()), str(tmp_path / "nope.tif")
    )
    assert code == 3
    err = capsys.readouterr().err
    for name in ("corrupt", "text", "nocrs", "small"):
        # the message names the file as given or as resolved (shared/ may sit behind a link)
        assert str(inputs[name]) in err or str(inputs[name].resolve()) in err, name
    assert "nope.tif: no such file" in err and "cannot read pixels" in err
    _, tiles = _active(url)
    # grey and 16-bit rasters index (one 70 m tile each); no tile of the corrupt raster survives
    assert sorted({Path(t.source).name for t in tiles.values()}) == ["deep.tif", "grey.tif"]
    engine = make_engine(url)
    with session_scope(engine) as s:
        b = catalog.get_active_build(s)
        assert b.status == "partial" and b.counts["dropped_unreadable"] > 0
    engine.dispose()
    assert run(url, idx, "verify") == 0


def test_nothing_indexable_exits_2(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    small = make_raster("small.tif", size=(50, 50))
    assert build(url, idx, tiny_weights, "--imagery", str(small)) == 2
    assert build(url, idx, tiny_weights, "--imagery", str(tmp_path / "none.tif")) == 2
    assert run(url, idx, "info") == 2  # no active build


def test_no_activate_keeps_served_build_and_activate_rolls(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    a = make_raster("a.tif", size=(160, 160), seed=1)
    b = make_raster("b.tif", size=(300, 300), seed=2)
    assert build(url, idx, tiny_weights, "--imagery", str(a)) == 0
    first, _ = _active(url)
    assert build(url, idx, tiny_weights, "--imagery", str(b), "--no-activate") == 0
    assert _active(url)[0] == first
    second = first + 1
    assert run(url, idx, "activate", str(second)) == 0
    assert _active(url)[0] == second
    assert run(url, idx, "activate", str(first)) == 0  # roll back
    assert _active(url)[0] == first
    assert run(url, idx, "activate", "999") == 2
    assert "no build with id 999" in capsys.readouterr().err


def test_tiles_export_geojson_and_csv(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert build(url, idx, tiny_weights, "--imagery", str(make_raster("a.tif", size=(300, 300)))) == 0
    assert run(url, idx, "tiles", "-o", str(tmp_path / "t.geojson")) == 0
    fc = json.loads((tmp_path / "t.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 9
    for f in fc["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        # UTM 33N near 5000 km north: lon ~15, lat ~45 ([lon, lat] order)
        assert all(14 < lon < 16 and 44 < lat < 46 for lon, lat in ring)
        # RFC 7946: exterior rings counter-clockwise (positive shoelace area)
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False))
        assert area > 0
        w, s, e, n = f["bbox"]
        assert w <= f["properties"]["lon"] <= e and s <= f["properties"]["lat"] <= n
    assert run(url, idx, "tiles", "--format", "csv", "-o", str(tmp_path / "t.csv")) == 0
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("id,build_id,lat,lon") and len(lines) == 10


def test_verify_detects_other_weights_and_missing_rows(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, other_weights: Path
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert build(url, idx, tiny_weights, "--imagery", str(make_raster("a.tif", size=(300, 300)))) == 0
    assert run(url, idx, "verify") == 0
    assert run(url, idx, "verify", "--weights", str(other_weights)) == 1
    build_id, tiles = _active(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        catalog.delete_tiles(s, [min(tiles)])
    engine.dispose()
    assert run(url, idx, "verify") == 1


def test_info_json_and_list(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert build(url, idx, tiny_weights, "--imagery", str(make_raster("a.tif", size=(300, 300)))) == 0
    capsys.readouterr()
    assert run(url, idx, "info", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["n_tiles"] == 9 and info["is_active"] is True
    assert info["counts"]["planned"] == 9 and info["params"]["tile_size_m"] == 70.0
    assert run(url, idx, "list") == 0
    assert "complete" in capsys.readouterr().out


def test_build_from_tiles_csv(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    (tmp_path / "g").mkdir()
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10)]):
        Image.new("RGB", (256, 256), colour).save(tmp_path / "g" / f"{i}.jpg")
    csv_path = tmp_path / "g" / "tiles.csv"
    csv_path.write_text(
        "path,lat,lon,size_m\n0.jpg,40.1,-3.5,70\n1.jpg,40.2,-3.6,70\ngone.jpg,40.3,-3.7,70\n"
    )
    assert build(url, idx, tiny_weights, "--tiles-csv", str(csv_path)) == 3  # one row rejected
    assert "gone.jpg" in capsys.readouterr().err
    build_id, tiles = _active(url)
    assert sorted((t.lat, t.lon, t.col_off) for t in tiles.values()) == [
        (40.1, -3.5, None),
        (40.2, -3.6, None),
    ]
    index, _ = read_index(idx / f"build-{build_id}")
    assert index.ntotal == 2


def test_build_with_test_time_views_stores_the_multi_view_descriptor(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path
) -> None:
    loaded = load_checkpoint(tiny_weights)
    set_inference_options(loaded.model, views=4)
    weights = tmp_path / "views4.pt"
    save_checkpoint(weights, loaded.model)
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    cogeo = mercator_cog
    assert build(url, idx, weights, "--imagery", str(cogeo)) == 0
    build_id, tiles = _active(url)
    index, meta = read_index(idx / f"build-{build_id}")
    assert meta["d"] == index.d == 4 * 16
    tile = tiles[sorted(tiles)[50]]
    x = _tile_input(cogeo, tile, loaded.config.preprocessing)
    with torch.no_grad():
        views = [loaded.model.embed_satellite(torch.rot90(x, k, dims=(-2, -1))[None])[0] for k in range(4)]
    expected = torch.cat(views).numpy() / 2.0  # concatenated, divided by sqrt(4)
    np.testing.assert_allclose(index.reconstruct(tile.id), expected, atol=1e-5)


def test_verify_checks_every_tile_by_default(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    tiny_weights: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json as _json

    import faiss

    from storage import faiss_index as fi

    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert build(url, idx, tiny_weights, "--imagery", str(make_raster("a.tif", size=(700, 700)))) == 0
    build_id, tiles = _active(url)
    assert len(tiles) > 16
    capsys.readouterr()
    assert run(url, idx, "verify") == 0
    assert f"all {len(tiles)} tiles" in capsys.readouterr().out
    # One stored vector replaced by another unit vector (checksum updated, as a bad build would
    # write it): a sample could miss it, the default check may not.
    folder = next(p for p in idx.iterdir() if (p / fi.INDEX_FILE).exists())
    index, meta = fi.read_index(folder)
    victim = max(tiles)
    vec = fi.stored_vectors(index, [victim])[0][::-1].copy()
    index.remove_ids(np.asarray([victim], np.int64))
    index.add_with_ids(vec[None], np.asarray([victim], np.int64))
    faiss.write_index(index, str(folder / fi.INDEX_FILE))
    meta["index_sha256"] = fi.file_sha256(folder / fi.INDEX_FILE)
    (folder / fi.META_FILE).write_text(_json.dumps(meta))
    assert run(url, idx, "verify") == 1
    capsys.readouterr()
    run(url, idx, "verify", "--quick")  # passes or not depending on whether the sample holds it
    assert f"16 of {len(tiles)} tiles" in capsys.readouterr().out
