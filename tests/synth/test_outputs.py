"""The files `cvm synth` writes: sizes, GeoTIFF placement, CSV and CVUSA formats, split."""

from __future__ import annotations

import csv
import re

import cv2
import numpy as np
import rasterio
from pyproj import Transformer

from synth import SynthResult

ID_RE = re.compile(r"^\d{7}$")


def read_rgb(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def ground_rows(result: SynthResult) -> list[dict[str, str]]:
    with open(result.out / "ground.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_synthesize_writes_images_of_the_right_sizes(small_world: SynthResult) -> None:
    out = small_world.out
    rows = ground_rows(small_world)
    assert [r["id"] for r in rows] == [f"{i:07d}" for i in range(1, 13)]
    for r in rows:
        assert read_rgb(out / r["file"]).shape == (112, 616, 3)
        assert read_rgb(out / r["photo_file"]).shape == (240, 320, 3)
        assert read_rgb(out / "cvusa" / "bingmap" / "19" / f"{r['id']}.jpg").shape == (256, 256, 3)
        pano = out / "cvusa" / "streetview" / "panos" / f"{r['id']}.jpg"
        assert pano.read_bytes() == (out / r["file"]).read_bytes()
        assert 60.0 <= float(r["fov_deg"]) <= 90.0
        assert 0.0 <= float(r["heading_deg"]) < 360.0


def test_write_geotiff_in_utm_zone_32n_tiled_with_overviews(small_world: SynthResult) -> None:
    with rasterio.open(small_world.out / "ortho.tif") as ds:
        # Zurich (8.54 E) lies in UTM zone 32 (6-12 E), northern hemisphere.
        assert ds.crs.to_epsg() == 32632
        assert (ds.width, ds.height, ds.count) == (600, 600, 3)
        assert ds.res == (0.5, 0.5)
        assert ds.block_shapes[0] == (256, 256)
        assert ds.compression is not None and ds.compression.name.upper() in ("JPEG", "DEFLATE")
        assert ds.overviews(1), "no overviews"
        east, north = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(8.54, 47.37)
        # The origin is the centre of the world.
        cx, cy = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
        assert abs(cx - east) <= 0.5 and abs(cy - north) <= 0.5


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _crop_at(ds, east: float, north: float) -> np.ndarray:
    """The 70 m (140 px) square of the GeoTIFF centred on (east, north), resized to 256 px, grey."""
    col, row = ~ds.transform @ (east, north)
    pad = 60  # shifted crops may reach past the edge: pad with grey
    c0, r0 = int(round(col - 70)) + pad, int(round(row - 70)) + pad
    rgb = np.pad(np.moveaxis(ds.read(), 0, 2), ((pad, pad), (pad, pad), (0, 0)), constant_values=128)
    rgb = rgb[r0 : r0 + 140, c0 : c0 + 140]
    assert rgb.shape == (140, 140, 3)
    return cv2.cvtColor(cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)


def test_ground_point_lands_on_its_aerial_crop(small_world: SynthResult) -> None:
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    with rasterio.open(small_world.out / "ortho.tif") as ds:
        for r in ground_rows(small_world)[:6]:
            east, north = to_utm.transform(float(r["lon"]), float(r["lat"]))
            saved = cv2.cvtColor(
                read_rgb(small_world.out / "cvusa/bingmap/19" / f"{r['id']}.jpg"), cv2.COLOR_RGB2GRAY
            )
            aligned = _corr(_crop_at(ds, east, north), saved)
            shifted = _corr(_crop_at(ds, east + 6.0, north - 6.0), saved)
            north_of = _corr(_crop_at(ds, east, north + 12.0), saved)
            assert aligned > 0.8, (r["id"], aligned)
            assert aligned > shifted + 0.1 and aligned > north_of + 0.1, (r["id"], aligned, shifted, north_of)


def test_cvusa_split_files_have_three_columns_and_no_header(small_world: SynthResult) -> None:
    cvusa = small_world.out / "cvusa"
    seen = []
    for split in ("train", "val"):
        for line in (cvusa / "splits" / f"{split}-19zl.csv").read_text().splitlines():
            fields = line.split(",")
            assert len(fields) == 3, line
            pid = fields[0].removeprefix("bingmap/19/").removesuffix(".jpg")
            assert ID_RE.match(pid), line
            assert fields == [
                f"bingmap/19/{pid}.jpg",
                f"streetview/panos/{pid}.jpg",
                f"streetview/annotations/{pid}.png",
            ]
            assert (cvusa / fields[0]).is_file() and (cvusa / fields[1]).is_file()
            seen.append((pid, split))
    truth = {r["id"]: r["split"] for r in ground_rows(small_world)}
    assert sorted(seen) == sorted(truth.items())


def test_split_locations_row_is_id_minus_one(small_world: SynthResult) -> None:
    lines = (small_world.out / "cvusa/split_locations/all.csv").read_text().splitlines()
    rows = ground_rows(small_world)
    assert len(lines) == len(rows)
    for r in rows:
        fields = lines[int(r["id"]) - 1].split(",")
        assert len(fields) == 5 and fields[4] == "0"
        sat_lat, sat_lon, grd_lat, grd_lon = (float(v) for v in fields[:4])
        assert (grd_lat, grd_lon) == (float(r["lat"]), float(r["lon"]))
        assert (sat_lat, sat_lon) == (grd_lat, grd_lon)


def test_train_and_val_aerials_do_not_overlap(small_world: SynthResult) -> None:
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    east = {"train": [], "val": []}
    for r in ground_rows(small_world):
        east[r["split"]].append(to_utm.transform(float(r["lon"]), float(r["lat"]))[0])
    assert len(east["val"]) == round(0.2 * 12) and len(east["train"]) == 12 - len(east["val"])
    # Validation lies east; 70 m aerial crops centred on the points never overlap.
    assert min(east["val"]) - max(east["train"]) >= 70.0
