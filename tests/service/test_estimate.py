"""The location estimate's geometry on planted candidates with a known answer (`service.estimate`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import Geod

from service.estimate import EstimateParams, estimate, from_local, local_xy, mean_shift, tile_grid

GEOD = Geod(ellps="WGS84")
LAT0, LON0 = 47.37, 8.54
TILE_M, STRIDE_M = 70.0, 35.0


def offset(east_m: float, north_m: float, lat: float = LAT0, lon: float = LON0) -> tuple[float, float]:
    """The point east_m / north_m from (lat, lon), along geodesics (pyproj, not the module's maths)."""
    lon1, lat1, _ = GEOD.fwd(lon, lat, 90.0, east_m) if east_m else (lon, lat, 0.0)
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, 0.0, north_m) if north_m else (lon1, lat1, 0.0)
    return lat2, lon2


def dist(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    return float(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def test_local_xy_matches_geodesic_offsets() -> None:
    lat, lon = offset(300.0, -200.0)
    ((x, y),) = local_xy(np.array([lat]), np.array([lon]), LAT0, LON0)
    assert x == pytest.approx(300.0, abs=1.0) and y == pytest.approx(-200.0, abs=1.0)
    back = from_local(x, y, LAT0, LON0)
    assert dist(*back, lat, lon) < 0.01


def test_agreeing_neighbours_beat_an_isolated_look_alike() -> None:
    # A 2 x 2 block of overlapping tiles (one stride apart) centred 500 m east of the origin, each
    # scoring 0.79, and an isolated tile at the origin scoring 0.80 (the best single score).
    centre = offset(500.0, 0.0)
    block = [offset(500.0 + dx, dy) for dx in (-17.5, 17.5) for dy in (-17.5, 17.5)]
    lats = np.array([LAT0] + [p[0] for p in block])
    lons = np.array([LON0] + [p[1] for p in block])
    scores = np.array([0.80, 0.79, 0.79, 0.79, 0.79])
    params = EstimateParams(temperature=0.02, bandwidth_tiles=0.5, spread_factor=1.5, min_radius_strides=1.0)
    est = estimate(lats, lons, scores, TILE_M, STRIDE_M, params)
    assert est is not None
    # The block's weighted centre is its centre (equal weights, symmetric), within centimetres.
    assert dist(est.lat, est.lon, *centre) < 0.05
    assert sorted(est.members) == [1, 2, 3, 4]
    # Softmax mass: each block tile weighs exp(-0.01 / 0.02) against the look-alike's 1.
    w = math.exp(-0.5)
    assert est.raw == pytest.approx(4 * w / (1 + 4 * w), rel=1e-9)
    assert est.features["second"] == pytest.approx(1 / (1 + 4 * w), rel=1e-9)
    # Radius: the block's RMS spread is sqrt(2) x 17.5 m; times 1.5 it exceeds one stride.
    assert est.radius_m == pytest.approx(1.5 * math.hypot(17.5, 17.5), rel=1e-3)


def test_a_single_strong_tile_wins_when_the_block_is_weak() -> None:
    block = [offset(500.0 + dx, dy) for dx in (-17.5, 17.5) for dy in (-17.5, 17.5)]
    lats = np.array([LAT0] + [p[0] for p in block])
    lons = np.array([LON0] + [p[1] for p in block])
    scores = np.array([0.80, 0.70, 0.70, 0.70, 0.70])  # 4 x exp(-5) << 1
    est = estimate(lats, lons, scores, TILE_M, STRIDE_M, EstimateParams(temperature=0.02))
    assert est is not None and est.members == (0,)
    assert dist(est.lat, est.lon, LAT0, LON0) < 0.01
    assert est.radius_m == pytest.approx(STRIDE_M)  # no spread: the smallest radius, one stride
    assert est.raw == pytest.approx(1 / (1 + 4 * math.exp(-5.0)), rel=1e-9)


def test_ties_far_apart_split_the_mass() -> None:
    pts = [offset(0.0, 0.0), offset(800.0, 0.0), offset(0.0, 800.0)]
    est = estimate(
        np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), np.full(3, 0.5), TILE_M, STRIDE_M
    )
    assert est is not None
    assert est.raw == pytest.approx(1 / 3) and est.features["second"] == pytest.approx(1 / 3)


def test_pool_limits_the_candidates() -> None:
    lats = np.array([LAT0, offset(0.0, 1000.0)[0]])
    lons = np.array([LON0, LON0])
    est = estimate(lats, lons, np.array([0.5, 0.5]), TILE_M, STRIDE_M, EstimateParams(pool=1))
    assert est is not None and est.raw == pytest.approx(1.0)
    assert estimate(np.array([]), np.array([]), np.array([]), TILE_M, STRIDE_M) is None


def test_mean_shift_finds_two_modes() -> None:
    rng = np.random.default_rng(0)
    xy = np.vstack([rng.normal((0, 0), 3.0, (20, 2)), rng.normal((200, 50), 3.0, (20, 2))])
    modes = mean_shift(xy, np.full(40, 1 / 40), bandwidth=10.0)
    first, second = xy[:20].mean(0), xy[20:].mean(0)
    assert np.abs(modes[:20] - first).max() < 1.5
    assert np.abs(modes[20:] - second).max() < 1.5


def test_tile_grid_measures_side_and_stride() -> None:
    lats, lons, souths, norths = [], [], [], []
    for i in range(6):
        for j in range(6):
            lat, lon = offset(j * STRIDE_M, -i * STRIDE_M)
            lats.append(lat)
            lons.append(lon)
            souths.append(offset(0.0, -TILE_M / 2, lat, lon)[0])
            norths.append(offset(0.0, TILE_M / 2, lat, lon)[0])
    side, stride = tile_grid(np.array(lats), np.array(lons), np.array(souths), np.array(norths))
    assert side == pytest.approx(TILE_M, rel=1e-3)
    assert stride == pytest.approx(STRIDE_M, rel=1e-3)
