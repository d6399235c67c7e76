"""Tile grids in UTM, Web Mercator and degrees, checked against rasterio + pyproj computed here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod, Transformer

from indexer.errors import InputRejected
from indexer.sources import inspect_raster, resolve_inputs
from indexer.tiles import ChipReader, plan_csv, plan_raster

GEOD = Geod(ellps="WGS84")


def _raster(request: pytest.FixtureRequest, generated: str, shared_name: str) -> Path:
    """The generated stand-in fixture `generated`, or, for the "real" case, the shared sample file
    it copies the georeferencing of (skipped without ../shared, failing under CI=true)."""
    if request.param == "real":
        return Path(request.getfixturevalue("shared_data")) / "geotiff" / shared_name
    return Path(request.getfixturevalue(generated))


@pytest.fixture(params=["generated", "real"])
def mercator_tif(request: pytest.FixtureRequest) -> Path:
    return _raster(request, "mercator_cog", "cogeo.tif")


@pytest.fixture(params=["generated", "real"])
def utm_nodata_tif(request: pytest.FixtureRequest) -> Path:
    return _raster(request, "utm_nodata_raster", "RGB.byte.tif")


@pytest.fixture(params=["generated", "real"])
def degrees_tif(request: pytest.FixtureRequest) -> Path:
    return _raster(request, "degrees_raster", "world.rgb.tif")


def _ground_width_height(row: dict) -> tuple[float, float]:
    """Ground size of a tile's footprint: geodesic lengths of its south and west edges."""
    ring = json.loads(row["footprint"])["coordinates"][0]
    (w_lon, s_lat), (e_lon, _), _, (_, n_lat), _ = ring
    width = GEOD.inv(w_lon, s_lat, e_lon, s_lat)[2]
    height = GEOD.inv(w_lon, s_lat, w_lon, n_lat)[2]
    return width, height


def test_plan_utm_raster_lays_exact_metre_grid(make_raster: Callable[..., Path]) -> None:
    # 0.5 m pixels in UTM 33N: 70 m = 140 px, 35 m stride = 70 px; 300 px -> 3 x 3 tiles
    path = make_raster("utm.tif", size=(300, 300), gsd=0.5)
    rows = list(plan_raster(inspect_raster(str(path)), 70.0, 35.0))
    assert len(rows) == 9
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    for i, row in enumerate(rows):
        r, c = divmod(i, 3)
        # UTM metres are ground metres up to the scale factor (0.9996..1.0004 here): within 0.1 %
        assert row["col_off"] == pytest.approx(c * 70, rel=2e-3, abs=0.2)
        assert row["row_off"] == pytest.approx(r * 70, rel=2e-3, abs=0.2)
        assert row["width"] == pytest.approx(140, rel=1e-3)
        lon, lat = to_ll.transform(
            500000 + 0.5 * (row["col_off"] + row["width"] / 2),
            5000000 - 0.5 * (row["row_off"] + row["height"] / 2),
        )
        assert (row["lat"], row["lon"]) == pytest.approx((lat, lon), abs=1e-7)
        assert row["gsd_m"] == pytest.approx(0.5, rel=1e-3)
        w, h = _ground_width_height(row)
        assert (w, h) == pytest.approx((70.0, 70.0), rel=1e-3)


def test_plan_cogeo_web_mercator_uses_true_ground_metres(mercator_tif: Path) -> None:
    path = mercator_tif
    rows = list(plan_raster(inspect_raster(str(path)), 70.0, 35.0))
    with rasterio.open(path) as ds:
        transform, bounds = ds.transform, ds.bounds
    to_ll = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    _, lat_mid = to_ll.transform(0, (bounds.bottom + bounds.top) / 2)
    # a Mercator metre is cos(lat) ground metres: 612 m of Mercator are ~484 m of ground
    ground_side = (bounds.right - bounds.left) * math.cos(math.radians(lat_mid))
    per_axis = int((ground_side - 70) // 35) + 1
    assert len(rows) == per_axis**2
    for row in rows[:: max(1, len(rows) // 10)]:
        col, rw = row["col_off"] + row["width"] / 2, row["row_off"] + row["height"] / 2
        x, y = transform.c + transform.a * col, transform.f + transform.e * rw
        lon, lat = to_ll.transform(x, y)
        assert (row["lat"], row["lon"]) == pytest.approx((lat, lon), abs=1e-7)
        # Korea, not swapped: lat ~37.7, lon ~128.7
        assert 37.6 < row["lat"] < 37.7 and 128.6 < row["lon"] < 128.7
        assert row["west"] < row["lon"] < row["east"] and row["south"] < row["lat"] < row["north"]
        assert row["width"] * transform.a * math.cos(math.radians(lat)) == pytest.approx(70.0, rel=5e-3)
        assert _ground_width_height(row) == pytest.approx((70.0, 70.0), rel=5e-3)


def test_plan_rgb_byte_utm_with_nodata(utm_nodata_tif: Path) -> None:
    info = inspect_raster(str(utm_nodata_tif))
    rows = list(plan_raster(info, 20000.0, 10000.0))
    assert rows and all(r["crs"] == "EPSG:32618" for r in rows)
    to_ll = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    a, _, c, _, e, f = info.transform
    for row in rows[::37]:
        lon, lat = to_ll.transform(
            c + a * (row["col_off"] + row["width"] / 2), f + e * (row["row_off"] + row["height"] / 2)
        )
        assert (row["lat"], row["lon"]) == pytest.approx((lat, lon), abs=1e-7)
        assert row["width"] * a == pytest.approx(20000.0, rel=2e-3)


def test_plan_world_degrees_gives_metre_tiles(degrees_tif: Path) -> None:
    info = inspect_raster(str(degrees_tif))
    rows = list(plan_raster(info, 2_000_000.0, 1_000_000.0))
    assert rows
    for row in rows[::29]:
        lat = row["lat"]
        # a degree of longitude spans ~111.32 km * cos(lat); of latitude ~111 km
        width_deg = row["width"] * info.transform[0]
        assert width_deg * 111_320 * math.cos(math.radians(lat)) == pytest.approx(2e6, rel=0.01)
        assert row["height"] * 0.703125 * 111_000 == pytest.approx(2e6, rel=0.01)
        assert -180 <= row["west"] < row["east"] <= 180 and -90 <= row["south"] < row["north"] <= 90
    equator = min(rows, key=lambda r: abs(r["lat"]))
    polar = max(rows, key=lambda r: r["lat"])
    assert polar["width"] > 2 * equator["width"]  # wider in degrees towards the poles


def test_inspect_rejects_raster_without_crs(make_raster: Callable[..., Path]) -> None:
    path = make_raster("nocrs.tif", crs=None)
    with pytest.raises(InputRejected, match=rf"{path}: raster has no CRS"):
        inspect_raster(str(path))


def test_inspect_rejects_non_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("not an image")
    with pytest.raises(InputRejected, match=rf"{path}: not a readable raster"):
        inspect_raster(str(path))


def test_raster_smaller_than_tile_has_no_tiles(make_raster: Callable[..., Path]) -> None:
    path = make_raster("small.tif", size=(100, 100), gsd=0.5)  # 50 m < 70 m
    assert list(plan_raster(inspect_raster(str(path)), 70.0, 35.0)) == []


def test_single_band_and_16_bit_become_rgb8(make_raster: Callable[..., Path]) -> None:
    grey = inspect_raster(str(make_raster("grey.tif", bands=1)))
    assert grey.bands == (1, 1, 1) and grey.stretch is None
    deep = inspect_raster(str(make_raster("deep.tif", dtype="uint16")))
    assert deep.stretch is not None
    # values drawn uniformly in 1..3999: the 2nd / 98th percentiles are ~80 and ~3920
    for lo, hi in deep.stretch:
        assert lo == pytest.approx(0.02 * 4000, rel=0.1) and hi == pytest.approx(0.98 * 4000, rel=0.02)
    reader = ChipReader({deep.path: deep}, 16)
    from rasterio.windows import Window

    chip, valid = reader.read_window(deep.path, Window(0, 0, 140, 140))
    assert chip.dtype == np.uint8 and chip.shape == (16, 16, 3) and valid == 1.0
    assert 60 < chip.mean() < 200


def test_chip_valid_fraction_counts_nodata(tmp_path: Path) -> None:
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from tests.support.rasters import write_geotiff

    data = np.full((3, 100, 100), 120, dtype=np.uint8)
    data[:, :, :70] = 0  # 70 % of the columns are nodata
    path = write_geotiff(tmp_path / "nd.tif", data, "EPSG:32633", Affine(1, 0, 5e5, 0, -1, 5e6), nodata=0)
    info = inspect_raster(str(path))
    _, valid = ChipReader({info.path: info}, 20).read_window(info.path, Window(0, 0, 100, 100))
    assert valid == pytest.approx(0.3, abs=0.02)


def test_plan_csv_keeps_good_rows_and_rejects_bad(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (256, 256), (10, 20, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "tiles.csv").write_text(
        "path,lat,lon,size_m\na.jpg,40.5,-3.7,70\nmissing.jpg,40.5,-3.7,70\na.jpg,north,-3.7,70\n"
    )
    plan = plan_csv(str(tmp_path / "tiles.csv"))
    assert len(plan.rows) == 1 and len(plan.rejected) == 2
    row = plan.rows[0]
    assert (row["lat"], row["lon"]) == (40.5, -3.7) and row["gsd_m"] == pytest.approx(70 / 256)
    assert _ground_width_height(row) == pytest.approx((70.0, 70.0), rel=1e-3)
    assert "missing.jpg" in plan.rejected[0][1] and "not numbers" in plan.rejected[1][1]


def test_resolve_inputs_expands_folders_and_globs(make_raster: Callable[..., Path], tmp_path: Path) -> None:
    a, b = make_raster("a.tif"), make_raster("b.tiff")
    (tmp_path / "readme.txt").write_text("x")
    found, rejected = resolve_inputs([str(tmp_path), str(tmp_path / "*.tif"), str(tmp_path / "nope.tif")])
    assert found == sorted([str(a), str(b)])
    assert rejected == [(str(tmp_path / "nope.tif"), "no such file or folder")]
