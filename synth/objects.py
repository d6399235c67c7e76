"""Parking lots and cars.

Objects are rotated rectangles in the metric frame (u east, v south) stamped into the world's
raster layers with the primitives of `raster`. Buildings (`buildings`) and trees (`vegetation`)
are placed the same way; `generate` calls all three in a fixed order.
"""

from __future__ import annotations

import math

import numpy as np

from synth import layout as L
from synth import textures
from synth.raster import Patch, Rect, beside, inside, is_free, rect_patch, stamp, within_extent
from synth.world import World

CAR_HALF_LENGTH_M = 2.2
CAR_HALF_WIDTH_M = 0.9
STALL_M = 2.6  # width of a parking stall along the lot's long side


def place_parking(cls: np.ndarray, roads: list[L.Road], gsd_m: float, rng: np.random.Generator) -> list[Rect]:
    """Parking lots beside some streets, drawn into `cls` as PARKING."""
    lots: list[Rect] = []
    for road in roads:
        if road.kind != L.STREET or rng.random() > 0.35:
            continue
        for point, tangent in L.road_frames(road, (120.0, 300.0), rng):
            half_a, half_b = rng.uniform(12, 30), float(rng.choice([6.0, 8.5, 11.0]))
            side = 1.0 if rng.random() < 0.5 else -1.0
            rect = beside(point, tangent, side, road.width_m / 2 + 3.5 + half_b, half_a, half_b)
            patch = rect_patch(rect, gsd_m, cls.shape[0], 1.0)
            if patch is None or not _patch_free(cls, patch, rect, cls.shape[0] * gsd_m):
                continue
            cls[patch.rows, patch.cols][inside(patch, rect)] = L.PARKING
            lots.append(rect)
    return lots


def _patch_free(cls: np.ndarray, patch: Patch, rect: Rect, extent_m: float) -> bool:
    if not within_extent(rect, 0.0, extent_m):
        return False
    return bool(np.isin(cls[patch.rows, patch.cols][inside(patch, rect, 1.0)], L.FREE).all())


def paint_parking(world: World, lots: list[Rect], rng: np.random.Generator) -> None:
    """Stall lines on each lot and parked cars in some stalls."""
    gsd = world.frame.gsd_m
    for lot in lots:
        patch = rect_patch(lot, gsd, world.size_px)
        assert patch is not None
        in_row = inside(patch, lot) & (np.abs(patch.t) >= lot.half_b - 5.0)
        line = (np.mod(patch.s, STALL_M) < 0.45) & in_row
        world.albedo[patch.rows, patch.cols][line] = textures.MARKING_RGB
        ca, sa = math.cos(lot.angle), math.sin(lot.angle)
        for row_t in (-(lot.half_b - 2.5), lot.half_b - 2.5):
            for k in range(int((2 * lot.half_a - STALL_M) / STALL_M)):
                if rng.random() < 0.55:
                    s = -lot.half_a + STALL_M * (k + 1)
                    cu, cv = lot.cu + s * ca - row_t * sa, lot.cv + s * sa + row_t * ca
                    car = Rect(cu, cv, lot.angle + math.pi / 2, CAR_HALF_LENGTH_M, CAR_HALF_WIDTH_M)
                    add_car(world, car, rng)


def park_cars(world: World, roads: list[L.Road], rng: np.random.Generator) -> None:
    """Cars parked along the kerbs of main roads and streets."""
    for road in roads:
        if road.kind == L.LANE:
            continue
        for point, tangent in L.road_frames(road, (6.0, 14.0), rng):
            if rng.random() < 0.3:
                side = 1.0 if rng.random() < 0.5 else -1.0
                offset = road.width_m / 2 - 1.3  # the car's outer side 0.4 m inside the kerb
                add_car(world, beside(point, tangent, side, offset, CAR_HALF_LENGTH_M, CAR_HALF_WIDTH_M), rng)


def add_car(world: World, rect: Rect, rng: np.random.Generator) -> bool:
    """Stamp a car (a 1.5 m box with dark windows) if it lies wholly on road or parking."""
    if not is_free(world, rect, 0.2, (L.ROAD, L.PARKING)):
        return False
    patch = rect_patch(rect, world.frame.gsd_m, world.size_px)
    assert patch is not None
    mask = inside(patch, rect)
    colour = textures.jitter_colour(textures.CAR_PALETTE[rng.integers(len(textures.CAR_PALETTE))], rng, 0.1)
    top = np.broadcast_to(colour, (*mask.shape, 3)).copy()
    glass = (np.abs(patch.s) > 0.5) & (np.abs(patch.s) < 1.3)
    top[glass] = (40, 44, 50)
    height = np.full(mask.shape, rng.uniform(1.4, 1.7), np.float32)
    stamp(world, patch, mask, L.CAR, height, top, colour * 0.75)
    return True
