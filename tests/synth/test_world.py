"""Geometry of the world and its renderers, checked against hand-computed expectations."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
from pyproj import Transformer

from synth import SynthResult
from synth import layout as L
from synth.generate import generate_world
from synth.geo import WorldFrame, parse_origin, utm_epsg
from synth.ortho import cast_shadows
from synth.pairs import aerial_crop
from synth.panorama import PANO_SIZE, Sky, render_panorama, render_photo
from synth.sampling import plan_split
from synth.world import World

SKY = Sky(horizon=(200.0, 210.0, 220.0), zenith=(100.0, 140.0, 210.0), haze_m=1e6, clouds=0.0)


@pytest.mark.parametrize(
    ("lat", "lon", "epsg"),
    [(47.37, 8.54, 32632), (-33.92, 18.42, 32734), (40.71, -74.01, 32618), (35.68, 139.69, 32654)],
)
def test_utm_epsg_known_places(lat: float, lon: float, epsg: int) -> None:
    assert utm_epsg(lat, lon) == epsg


def test_parse_origin_rejects_bad_text() -> None:
    assert parse_origin("47.37,8.54") == (47.37, 8.54)
    with pytest.raises(ValueError, match="LAT,LON"):
        parse_origin("47.37")
    with pytest.raises(ValueError, match="latitude"):
        parse_origin("95,8")


def flat_world(size_px: int = 700, gsd_m: float = 0.5) -> World:
    """An empty grass world on the equator at a central meridian (grid north = true north),
    large enough that 150 m rays from its centre stay inside."""
    frame = WorldFrame(0.0, 9.0, size_px * gsd_m, gsd_m)
    grey = np.full((size_px, size_px, 3), 90, np.uint8)
    return World(
        frame,
        0,
        np.full((size_px, size_px), L.GRASS, np.uint8),
        np.zeros((size_px, size_px), np.float32),
        grey,
        grey.copy(),
        180.0,
        45.0,
    )


def test_cast_shadows_fall_away_from_the_sun() -> None:
    h = np.zeros((100, 100), np.float32)
    h[50:54, 48:52] = 10.0  # a 2 m x 2 m, 10 m tall column at 0.5 m/px
    # Sun due south at 45 degrees: a 10 m shadow (20 px) reaching north (smaller rows).
    shadow = cast_shadows(h, 0.5, 180.0, 45.0)
    assert shadow[40, 50] > 0.9  # 5 m north of the column
    assert shadow[33, 50] > 0.9  # 9 m north
    assert shadow[26, 50] < 0.1  # 12 m north: beyond the shadow
    assert shadow[60, 50] < 0.1  # south: sunlit
    assert shadow[40, 60] < 0.1  # to the east: sunlit


def test_render_panorama_puts_east_at_quarter_width() -> None:
    world = flat_world()
    # A red 12 m tall wall 20 m east of the camera at the centre (100, 100).
    world.height[330:370, 390:396] = 12.0
    world.side[330:370, 390:396] = (220, 20, 20)
    world.cls[330:370, 390:396] = L.BUILDING
    pano = render_panorama(world, 350.0, 350.0, SKY)
    horizon_row = int(PANO_SIZE[0] * 35 / 80)  # elevation 0 lies 35 of 80 degrees down
    red = (pano[horizon_row - 5, :, 0] > 150) & (pano[horizon_row - 5, :, 1] < 80)
    cols = np.nonzero(red)[0]
    assert cols.size > 0
    # The wall spans azimuth 90 +/- atan(10 / 20) = 63..117 degrees: around width / 4 = 154.
    assert abs(cols.mean() - PANO_SIZE[1] / 4) < 6
    assert cols.min() > PANO_SIZE[1] * 55 / 360 and cols.max() < PANO_SIZE[1] * 125 / 360


def test_render_photo_looks_along_heading() -> None:
    world = flat_world()
    world.height[290:296, 340:360] = 12.0  # wall 30 m north of the camera
    world.side[290:296, 340:360] = (220, 20, 20)
    # Rows 20-30 of 60 look 4-12 degrees up, columns 36-44 of 80 within 6 degrees of the heading;
    # the 10 m wide wall spans +/-9.5 degrees and reaches atan(10 / 30) = 18 degrees up.
    north = render_photo(world, 350.0, 350.0, 0.0, 90.0, (60, 80), SKY)[20:30, 36:44]
    south = render_photo(world, 350.0, 350.0, 180.0, 90.0, (60, 80), SKY)[20:30, 36:44]
    assert north[..., 0].mean() > 180 and north[..., 1].mean() < 60
    assert south[..., 0].mean() < south[..., 2].mean()  # sky


def test_aerial_crop_is_centred_on_the_position() -> None:
    ortho = np.zeros((400, 400, 3), np.uint8)
    ortho[200, 150] = 255  # pixel (col 150, row 200) covers [150, 151) x [200, 201)
    crop = aerial_crop(ortho, 150.5, 200.5, 0.5)
    row, col = np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2])
    assert abs(row - 127.5) <= 1.5 and abs(col - 127.5) <= 1.5


def test_plan_split_edges() -> None:
    assert plan_split(1000.0, 10, 0.0, 70.0).n_val == 0
    assert plan_split(1000.0, 10, 1.0, 70.0).n_train == 0
    plan = plan_split(1000.0, 10, 0.2, 70.0)
    assert plan.n_val == 2 and plan.val_u[0] - plan.train_u[1] >= 70.0
    with pytest.raises(ValueError, match="val-fraction"):
        plan_split(1000.0, 10, 1.5, 70.0)


def test_ground_positions_avoid_buildings_and_water(small_world: SynthResult) -> None:
    world = generate_world(WorldFrame(47.37, 8.54, 300.0, 0.5), 7)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    west, north = world.frame.west_north
    points = []
    with open(small_world.out / "ground.csv", newline="") as f:
        for r in csv.DictReader(f):
            e, n = to_utm.transform(float(r["lon"]), float(r["lat"]))
            col, row = int((e - west) / 0.5), int((north - n) / 0.5)
            assert world.cls[row, col] in (L.ROAD, L.SIDEWALK, L.PARKING, L.GRASS, L.BARE)
            assert world.height[row, col] == 0.0
            points.append((e, n))
    gaps = [math.dist(a, b) for i, a in enumerate(points) for b in points[i + 1 :]]
    assert min(gaps) >= 10.0


def test_panorama_shows_sky_on_top_and_differs_from_aerial(small_world: SynthResult) -> None:
    out = small_world.out
    diffs, lift, bright = [], [], []
    for i in range(1, 13):
        pano = cv2.cvtColor(cv2.imread(str(out / f"ground/{i:07d}.jpg")), cv2.COLOR_BGR2RGB).astype(float)
        aerial = cv2.cvtColor(cv2.imread(str(out / f"cvusa/bingmap/19/{i:07d}.jpg")), cv2.COLOR_BGR2RGB)
        top = pano[:4].reshape(-1, 3)
        ground = pano[-30:].reshape(-1, 3).mean(axis=0)
        # Sky (possibly clouded): bright over most of the top rows, brighter than the ground.
        bright.append(np.mean(top.mean(axis=1) > 90))
        lift.append(top.mean() - ground.mean())
        diffs.append(np.abs(ground - aerial.reshape(-1, 3).mean(axis=0)).sum())
    # Trees next to a camera may hide part of its sky, never most of every sky.
    assert np.mean(bright) > 0.75 and min(bright) > 0.3
    assert np.mean(lift) > 20.0 and np.mean(np.array(lift) > 0) >= 0.75
    assert np.mean(diffs) > 15.0


def test_photo_centre_matches_panorama_at_its_heading() -> None:
    world = generate_world(WorldFrame(47.37, 8.54, 400.0, 0.5), 21)
    ys, xs = np.nonzero(world.cls[300:500, 300:500] == L.ROAD)
    x, y = xs[0] + 300.5, ys[0] + 300.5
    pano = render_panorama(world, x, y, SKY).mean(axis=2)
    rows = PANO_SIZE[0]
    scores = []
    for heading in (30.0, 140.0, 260.0):
        # A 90-degree photo, 2 px wide at its centre, with rows at the panorama's elevations:
        # 112 rows spanning +35..-45 degrees need a square photo whose focal length is half its width.
        photo = render_photo(world, x, y, heading, 90.0, (rows * 8, rows * 8), SKY).mean(axis=2)
        focal = rows * 8 / 2
        el = np.radians(35.0 - (np.arange(rows) + 0.5) * 80.0 / rows)
        photo_rows = np.clip(np.round(rows * 4 - focal * np.tan(el) - 0.5).astype(int), 0, rows * 8 - 1)
        column = photo[photo_rows, rows * 4 - 1 : rows * 4 + 1].mean(axis=1)
        col = int(heading / 360.0 * PANO_SIZE[1])
        right = np.corrcoef(column, pano[:, col])[0, 1]
        wrong = np.corrcoef(column, pano[:, (col + PANO_SIZE[1] // 2) % PANO_SIZE[1]])[0, 1]
        scores.append((right, wrong))
    assert all(r > 0.9 for r, _ in scores), scores
    assert np.mean([r for r, _ in scores]) > np.mean([w for _, w in scores]) + 0.05, scores


def _polar_aerial(aerial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The aerial (256, 256) grey warped into the panorama's ground rows (where the ground lies
    within the crop): returns (warped (r, 616), valid mask (r, 616))."""
    rows, cols = PANO_SIZE
    el = np.radians(35.0 - (np.arange(rows) + 0.5) * 80.0 / rows)
    az = (np.arange(cols) + 0.5) / cols * 2 * np.pi
    dist = np.where(el < -0.05, 2.0 / np.tan(-np.minimum(el, -0.05)), np.inf)[:, None]
    px = 128 + np.sin(az)[None, :] * dist * 256 / 70
    py = 128 - np.cos(az)[None, :] * dist * 256 / 70
    valid = (dist < 30.0) & np.isfinite(px) & np.isfinite(py)
    map_x = np.where(valid, px, 0).astype(np.float32)
    map_y = np.where(valid, py, 0).astype(np.float32)
    return cv2.remap(aerial, map_x, map_y, cv2.INTER_LINEAR), valid


def test_panorama_ground_is_not_a_warped_aerial(small_world: SynthResult) -> None:
    corr = []
    for i in range(1, 13):
        pano = cv2.imread(str(small_world.out / f"ground/{i:07d}.jpg"), cv2.IMREAD_GRAYSCALE)
        aerial = cv2.imread(str(small_world.out / f"cvusa/bingmap/19/{i:07d}.jpg"), cv2.IMREAD_GRAYSCALE)
        warped, valid = _polar_aerial(aerial)
        a, b = pano[valid].astype(float), warped[valid].astype(float)
        corr.append(np.corrcoef(a, b)[0, 1])
        # Grey levels differ by the per-view camera response, not by a constant copy.
        assert np.abs(a - b).mean() > 5.0
    # The same layout shows through (positively related), but far from a pixel copy.
    assert 0.0 < np.mean(corr) < 0.9, corr
