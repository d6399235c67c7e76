"""The overview `cvm-index build` writes into the build folder (storage.overview, indexer.overview)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds

from indexer.cli import main
from storage import catalog
from storage.db import make_engine, session_scope
from storage.overview import OVERVIEW_JSON, OVERVIEW_PNG, OverviewSource, read_overview, write_overview


def _build(tmp_path: Path, weights: Path, *args: str) -> Path:
    """Build into a fresh catalogue; the active build's folder."""
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert main(
        [
            "--database-url",
            url,
            "--index-dir",
            str(idx),
            "build",
            "--no-progress",
            "--weights",
            str(weights),
            *args,
        ]
    ) in (0, 3)
    engine = make_engine(url)
    with session_scope(engine) as session:
        build = catalog.get_active_build(session)
        assert build is not None and build.index_path
        folder = Path(build.index_path)
    engine.dispose()
    return folder


def test_build_writes_an_overview_of_its_raster(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path
) -> None:
    folder = _build(tmp_path, tiny_weights, "--imagery", str(mercator_cog))
    overview = read_overview(folder)
    assert overview is not None and (folder / OVERVIEW_PNG).is_file()
    meta = json.loads((folder / OVERVIEW_JSON).read_text())
    assert meta["crs"] == "EPSG:3857" and meta["sources"] == [mercator_cog.name]  # a name, no folder
    with rasterio.open(mercator_cog) as ds:
        expected = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        pixels = ds.read()
        mercator = ds.bounds
    # A Web Mercator raster under 2048 px keeps its grid: same size, same corners.
    assert (overview.width, overview.height) == (pixels.shape[2], pixels.shape[1])
    np.testing.assert_allclose(overview.bounds, expected, atol=1e-7)
    np.testing.assert_allclose(overview.mercator_bounds, tuple(mercator), atol=1e-3)
    png = np.asarray(Image.open(folder / OVERVIEW_PNG))
    assert png.shape == (overview.height, overview.width, 4)
    assert (png[..., 3] == 255).all()  # no nodata: opaque everywhere
    diff = np.abs(png[..., :3].astype(int) - pixels.transpose(1, 2, 0).astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8


def test_overview_is_transparent_over_nodata_and_bounded_in_size(
    tmp_path: Path, utm_nodata_raster: Path
) -> None:
    overview = write_overview(tmp_path / "b", [OverviewSource(str(utm_nodata_raster))], max_px=200)
    assert overview is not None and max(overview.width, overview.height) == 200
    png = np.asarray(Image.open(tmp_path / "b" / OVERVIEW_PNG))
    alpha = png[..., 3]
    h, w = alpha.shape
    assert alpha[h // 2, w // 2] == 255  # the scene
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0  # nodata corners
    assert 0.3 < (alpha > 0).mean() < 0.9
    with rasterio.open(utm_nodata_raster) as ds:
        lon_w, lat_s, lon_e, lat_n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    west, south, east, north = overview.bounds
    # The image covers the raster, by at most one overview pixel more on the east and south.
    assert west == pytest.approx(lon_w, abs=1e-6) and north == pytest.approx(lat_n, abs=1e-6)
    assert lon_e <= east < lon_e + (east - west) / overview.width * 1.01
    assert lat_s >= south > lat_s - (north - south) / overview.height * 1.01


def test_no_sources_no_overview(tmp_path: Path) -> None:
    assert write_overview(tmp_path, []) is None
    assert read_overview(tmp_path) is None
    (tmp_path / OVERVIEW_PNG).write_bytes(b"\x89PNG")
    (tmp_path / OVERVIEW_JSON).write_text("{not json")
    assert read_overview(tmp_path) is None  # unreadable: as if absent


def test_build_of_precut_tiles_has_no_overview(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "g").mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "g" / "0.jpg")
    (tmp_path / "g" / "tiles.csv").write_text("path,lat,lon,size_m\n0.jpg,40.1,-3.5,70\n")
    folder = _build(tmp_path, tiny_weights, "--tiles-csv", str(tmp_path / "g" / "tiles.csv"))
    assert (folder / "index.faiss").is_file()
    assert not (folder / OVERVIEW_PNG).exists() and read_overview(folder) is None
