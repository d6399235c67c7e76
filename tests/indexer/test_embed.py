"""Reading tiles in runs of a tile row and normalising per batch give what per-tile reads and
prepare_satellite give, checked against rasterio reads and the model's own preprocessing."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from indexer.cli import main
from indexer.embed import FAILED, NODATA, OK, TileTask, read_run, tile_runs
from indexer.sources import inspect_raster, to_uint8
from indexer.tiles import ChipReader, plan_raster
from model.checkpoint import load_checkpoint
from model.config import preset_config
from model.transforms import normalise_batch, prepare_satellite
from storage import catalog
from storage.db import make_engine, session_scope
from storage.faiss_index import read_index
from tests.support.rasters import write_geotiff

PREP = preset_config("cvm-net-i", "cpu").preprocessing  # 128 px input, BGR, Caffe means


def _tasks(path: Path, size_m: float = 70.0, stride_m: float = 35.0) -> list[TileTask]:
    rows = plan_raster(inspect_raster(str(path)), size_m, stride_m)
    return [
        TileTask(i, str(path), (r["col_off"], r["row_off"], r["width"], r["height"]))
        for i, r in enumerate(rows)
    ]


def _own_read(path: Path, window: tuple[float, float, float, float]) -> np.ndarray:
    """A tile's pixels as a read of its own window, snapped to whole pixels, gives them."""
    info = inspect_raster(str(path))
    with rasterio.open(path) as ds:
        data = ds.read(list(info.bands), window=Window(*(round(v) for v in window)))
    return np.ascontiguousarray(to_uint8(data, info.stretch).transpose(1, 2, 0))


def test_tile_runs_group_one_tile_row_in_order(make_raster: Callable[..., Path]) -> None:
    # 0.6 m pixels, 600 px: 360 m of ground -> 9 tiles a row, 9 rows
    tasks = _tasks(make_raster("r.tif", size=(600, 600), gsd=0.6))
    runs = list(tile_runs(tasks, max_tiles=4))
    assert [t for run in runs for t in run] == tasks
    assert [len(r) for r in runs[:3]] == [4, 4, 1] and len(runs) == 27
    for run in runs:
        assert len({t.window[1] for t in run if t.window}) == 1  # one row offset per run
    assert [len(r) for r in tile_runs(tasks, max_tiles=100, max_px=3 * 117**2)] == [3, 3, 3] * 9


@pytest.mark.parametrize(("bands", "dtype"), [(3, "uint8"), (1, "uint8"), (3, "uint16")])
def test_runs_give_each_tile_the_pixels_of_its_own_window(
    make_raster: Callable[..., Path], bands: int, dtype: str
) -> None:
    # 70 m = 116.7 px: native resolution; greyscale replicated, 16-bit stretched to 8 bits
    path = make_raster("r.tif", bands=bands, size=(600, 600), gsd=0.6, dtype=dtype)
    tasks = _tasks(path)
    reader = ChipReader({str(path): inspect_raster(str(path))}, PREP.sat_size)
    chips = [c for run in tile_runs(tasks, max_tiles=32) for c in read_run(reader, PREP, run, set())]
    assert [c.task for c in chips] == tasks and all(c.status == OK for c in chips)
    for chip in chips:
        assert chip.task.window is not None and chip.pixels is not None
        expected = prepare_satellite(_own_read(path, chip.task.window), PREP)
        torch.testing.assert_close(normalise_batch(chip.pixels[None], PREP)[0], expected, rtol=0, atol=0)


def test_runs_count_nodata_per_tile(tmp_path: Path) -> None:
    data = np.full((3, 400, 600), 90, dtype=np.uint8)
    data[:, :, :250] = 0  # the western 150 m are nodata
    path = write_geotiff(tmp_path / "nd.tif", data, "EPSG:32633", Affine(0.6, 0, 5e5, 0, -0.6, 5e6), nodata=0)
    tasks = _tasks(path)
    reader = ChipReader({str(path): inspect_raster(str(path))}, PREP.sat_size)
    chips = [c for run in tile_runs(tasks, max_tiles=32) for c in read_run(reader, PREP, run, set())]
    for chip in chips:
        assert chip.task.window is not None
        col, _, width, _ = (round(v) for v in chip.task.window)
        valid = np.clip(col + width - 250, 0, width) / width
        assert chip.status == (NODATA if valid < 0.5 else OK)
    assert {c.status for c in chips} == {OK, NODATA}


def test_a_failed_read_fails_its_run_and_later_runs_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.tif"
    tasks = [TileTask(i, str(path), (i * 50.0, 0.0, 100.0, 100.0)) for i in range(3)]
    write_geotiff(path, np.ones((3, 100, 400), np.uint8), "EPSG:32633", Affine(1, 0, 0, 0, -1, 0))
    info = inspect_raster(str(path))
    path.write_bytes(b"not a raster any more")  # replaced after planning
    chips = read_run(ChipReader({str(path): info}, PREP.sat_size), PREP, tasks, set())
    assert [c.status for c in chips] == [FAILED] * 3 and "cannot read pixels" in str(chips[0].error)
    later = read_run(ChipReader({str(path): info}, PREP.sat_size), PREP, tasks[:1], {str(path)})
    assert later[0].status == FAILED and "earlier tile" in str(later[0].error)


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_batch_normalisation_equals_prepare_satellite(order: str) -> None:
    prep = replace(PREP, channel_order=order, std=(58.4, 57.1, 57.4))
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(5)]
    expected = torch.stack([prepare_satellite(c, prep) for c in rgb])
    torch.testing.assert_close(normalise_batch(np.stack(rgb), prep), expected, rtol=0, atol=0)


def test_build_vectors_equal_embedding_each_tile_on_its_own(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights_128: Path
) -> None:
    path = make_raster("r.tif", size=(400, 700), gsd=0.6)  # native-resolution reads, 5 x 11 tiles
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    args = ["--database-url", url, "--index-dir", str(idx), "build", "--no-progress"]
    assert main([*args, "--weights", str(tiny_weights_128), "--imagery", str(path), "--batch-size", "8"]) == 0
    assert gc.get_freeze_count() == 0  # what the build froze for the collector is released
    engine = make_engine(url)
    with session_scope(engine) as s:
        build = catalog.get_active_build(s)
        assert build is not None
        tiles = list(catalog.iter_tiles(s, build.id))
    engine.dispose()
    assert len(tiles) == 55
    index, _ = read_index(idx / f"build-{build.id}")
    assert sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map)) == [t.id for t in tiles]
    loaded = load_checkpoint(tiny_weights_128)
    prep = loaded.config.preprocessing
    x = torch.stack(
        [prepare_satellite(_own_read(path, (t.col_off, t.row_off, t.width, t.height)), prep) for t in tiles]
    )
    with torch.no_grad():
        expected = loaded.model.embed_satellite(x).numpy()
    stored = np.stack([index.reconstruct(t.id) for t in tiles])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
