"""The shared raster and road primitives that the object placers build on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synth import layout as L
from synth.geo import WorldFrame
from synth.raster import Rect, beside, draw_path, inside, is_free, rect_patch, stamp
from synth.sampling import usable_range
from synth.world import World


def grass_world(size_px: int = 100, gsd_m: float = 0.5) -> World:
    frame = WorldFrame(47.37, 8.54, size_px * gsd_m, gsd_m)
    colour = np.full((size_px, size_px, 3), 90, np.uint8)
    return World(
        frame,
        0,
        np.full((size_px, size_px), L.GRASS, np.uint8),
        np.zeros((size_px, size_px), np.float32),
        colour,
        colour.copy(),
        180.0,
        45.0,
    )


def test_stamp_writes_only_the_rectangle() -> None:
    world = grass_world()
    rect = Rect(25.0, 25.0, math.pi / 4, 4.0, 2.0)
    patch = rect_patch(rect, 0.5, world.size_px)
    assert patch is not None
    mask = inside(patch, rect)
    top = np.full((*mask.shape, 3), 300.0, np.float32)  # clipped to 255 when written
    stamp(world, patch, mask, L.CAR, np.full(mask.shape, 1.5, np.float32), top, np.array([10.0, 20.0, 30.0]))
    # A rotated 8 m x 4 m rectangle covers 32 m^2 = 128 px at 0.5 m/px (up to its jagged rim).
    assert abs(int((world.cls == L.CAR).sum()) - 128) < 12
    assert world.cls[50, 50] == L.CAR and world.cls[50, 62] == L.GRASS
    assert world.height[50, 50] == 1.5 and world.albedo[50, 50].tolist() == [255, 255, 255]
    assert world.side[50, 50].tolist() == [10, 20, 30]
    assert (world.height[world.cls == L.GRASS] == 0.0).all()


def test_is_free_needs_allowed_ground_inside_the_world() -> None:
    world = grass_world()
    rect = Rect(25.0, 25.0, 0.0, 3.0, 2.0)
    assert is_free(world, rect, 1.0, L.FREE)
    assert not is_free(world, rect, 1.0, (L.ROAD,))
    world.cls[50, 56] = L.WATER  # 3.25 m east of the centre: inside only the grown rectangle
    assert not is_free(world, rect, 1.0, L.FREE)
    assert is_free(world, rect, 0.0, L.FREE)
    assert not is_free(world, Rect(2.0, 25.0, 0.0, 3.0, 2.0), 0.0, L.FREE)  # reaches over the edge


def test_beside_puts_the_rectangle_to_the_requested_side() -> None:
    east = np.array([1.0, 0.0])
    left = beside(np.array([10.0, 10.0]), east, 1.0, 5.0, 3.0, 1.0)
    right = beside(np.array([10.0, 10.0]), east, -1.0, 5.0, 3.0, 1.0)
    assert (left.cu, left.cv, left.angle) == (10.0, 15.0, 0.0)
    assert (right.cu, right.cv) == (10.0, 5.0)


def test_draw_path_width_and_road_mask() -> None:
    img = np.zeros((40, 40), np.uint8)
    draw_path(img, np.array([[2.0, 10.0], [18.0, 10.0]]), 3.0, 7, 0.5)  # 3 m wide: 6 px
    column = np.flatnonzero(img[:, 20] == 7)
    assert 5 <= len(column) <= 7 and column.min() <= 20 <= column.max()
    mask = L.RoadMask(100.0)
    mask.add(L.Road(np.array([[0.0, 50.0], [100.0, 50.0]]), 8.0, L.STREET))
    # Within width / 2 + 4 m of the centre line: 8 m here.
    hits = mask.hits(np.array([[50.0, 50.0], [50.0, 56.0], [50.0, 62.0], [-10.0, 50.0]]))
    assert hits.tolist() == [True, True, False, False]


def test_road_frames_walk_the_road_with_unit_tangents() -> None:
    road = L.Road(np.array([[0.0, 0.0], [15.0, 20.0], [30.0, 40.0]]), 6.0, L.STREET)
    assert L.arc_lengths(road.points).tolist() == [0.0, 25.0, 50.0]
    frames = list(L.road_frames(road, (5.0, 5.0), np.random.default_rng(0)))
    # First frame half a spacing in, then one every 5 m until the road's end at 50 m.
    assert len(frames) == 10
    for k, (point, tangent) in enumerate(frames):
        assert point == pytest.approx(np.array([0.6, 0.8]) * (2.5 + 5.0 * k))
        assert tangent == pytest.approx([0.6, 0.8])


def test_usable_range_keeps_aerial_crops_inside() -> None:
    lo, hi = usable_range(1000.0, 70.0)
    assert (lo, hi) == (36.0, 964.0)
    assert lo - 35.0 > 0 and hi + 35.0 < 1000.0
