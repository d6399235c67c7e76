"""Objects of the world: parking lots, buildings, trees, forest canopy and cars.

Each object is a set of rotated rectangles (or a disc) in the metric frame (u east, v south),
stamped into the world's raster layers. Buildings face the road they were placed along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from synth import layout as L
from synth import textures

if TYPE_CHECKING:
    from synth.world import World

FREE = (L.GRASS, L.BARE)


@dataclass(frozen=True)
class Rect:
    """Rotated rectangle: centre (u, v) metres, long-axis angle (radians), half sizes (m)."""

    cu: float
    cv: float
    angle: float
    half_a: float
    half_b: float


@dataclass
class Patch:
    """Pixel window of a rectangle: slices into the rasters and the local coordinates (s, t)."""

    rows: slice
    cols: slice
    s: np.ndarray
    t: np.ndarray


def rect_patch(rect: Rect, gsd_m: float, size_px: int, grow_m: float = 0.0) -> Patch | None:
    """Window covering `rect` (grown by grow_m) clipped to the raster; None when outside."""
    r = math.hypot(rect.half_a, rect.half_b) + grow_m + gsd_m
    c0, c1 = int((rect.cu - r) / gsd_m), int((rect.cu + r) / gsd_m) + 1
    r0, r1 = int((rect.cv - r) / gsd_m), int((rect.cv + r) / gsd_m) + 1
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, size_px), min(r1, size_px)
    if c1 <= c0 or r1 <= r0:
        return None
    du = (np.arange(c0, c1, dtype=np.float32) + 0.5) * gsd_m - rect.cu
    dv = (np.arange(r0, r1, dtype=np.float32) + 0.5) * gsd_m - rect.cv
    ca, sa = math.cos(rect.angle), math.sin(rect.angle)
    s = du[None, :] * ca + dv[:, None] * sa
    t = -du[None, :] * sa + dv[:, None] * ca
    return Patch(slice(r0, r1), slice(c0, c1), s, t)


def inside(patch: Patch, rect: Rect, grow_m: float = 0.0) -> np.ndarray:
    return (np.abs(patch.s) <= rect.half_a + grow_m) & (np.abs(patch.t) <= rect.half_b + grow_m)


def is_free(world: World, rect: Rect, grow_m: float, allowed: tuple[int, ...] = FREE) -> bool:
    """True when every pixel of `rect` grown by grow_m lies inside the world on an allowed class."""
    gsd, size = world.frame.gsd_m, world.size_px
    r = math.hypot(rect.half_a, rect.half_b) + grow_m
    if min(rect.cu, rect.cv) - r < 0 or max(rect.cu, rect.cv) + r > size * gsd:
        return False
    patch = rect_patch(rect, gsd, size, grow_m)
    assert patch is not None
    cls = world.cls[patch.rows, patch.cols][inside(patch, rect, grow_m)]
    return bool(np.isin(cls, allowed).all())


def road_frames(road: L.Road, spacing: tuple[float, float], rng: np.random.Generator):
    """Yield (point (2,), unit tangent (2,)) at random spacing along a road."""
    pts = road.points
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = rng.uniform(*spacing) / 2
    while s < arc[-1]:
        i = min(int(np.searchsorted(arc, s)), len(pts) - 1)
        j0, j1 = max(i - 1, 0), min(i + 1, len(pts) - 1)
        d = pts[j1] - pts[j0]
        point = np.array([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])])
        yield point, d / (np.linalg.norm(d) + 1e-9)
        s += rng.uniform(*spacing)


def beside(
    point: np.ndarray, tangent: np.ndarray, side: float, offset: float, half_a: float, half_b: float
) -> Rect:
    """Rectangle aligned with the road whose centre lies `offset` metres to one side."""
    normal = np.array([-tangent[1], tangent[0]]) * side
    c = point + normal * offset
    return Rect(float(c[0]), float(c[1]), math.atan2(tangent[1], tangent[0]), half_a, half_b)


def place_parking(cls: np.ndarray, roads: list[L.Road], gsd_m: float, rng: np.random.Generator) -> list[Rect]:
    """Parking lots beside some streets, drawn into `cls` as PARKING."""
    lots: list[Rect] = []
    for road in roads:
        if road.kind != L.STREET or rng.random() > 0.35:
            continue
        for point, tangent in road_frames(road, (120.0, 300.0), rng):
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
    r = math.hypot(rect.half_a, rect.half_b)
    if min(rect.cu, rect.cv) - r < 0 or max(rect.cu, rect.cv) + r > extent_m:
        return False
    return bool(np.isin(cls[patch.rows, patch.cols][inside(patch, rect, 1.0)], FREE).all())


def paint_parking(world: World, lots: list[Rect], rng: np.random.Generator) -> None:
    """Stall lines on each lot and parked cars in some stalls."""
    gsd = world.frame.gsd_m
    for lot in lots:
        patch = rect_patch(lot, gsd, world.size_px)
        assert patch is not None
        in_row = inside(patch, lot) & (np.abs(patch.t) >= lot.half_b - 5.0)
        line = (np.mod(patch.s, 2.6) < 0.45) & in_row
        world.albedo[patch.rows, patch.cols][line] = textures.MARKING_RGB
        ca, sa = math.cos(lot.angle), math.sin(lot.angle)
        for row_t in (-(lot.half_b - 2.5), lot.half_b - 2.5):
            for k in range(int((2 * lot.half_a - 2.6) / 2.6)):
                if rng.random() < 0.55:
                    s = -lot.half_a + 2.6 * (k + 1)
                    cu, cv = lot.cu + s * ca - row_t * sa, lot.cv + s * sa + row_t * ca
                    add_car(world, Rect(cu, cv, lot.angle + math.pi / 2, 2.2, 0.9), rng)


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
    _stamp(
        world, patch, mask, L.CAR, np.full(mask.shape, rng.uniform(1.4, 1.7), np.float32), top, colour * 0.75
    )
    return True


def _stamp(
    world: World,
    patch: Patch,
    mask: np.ndarray,
    cls_value: int,
    height: np.ndarray,
    top: np.ndarray,
    side: np.ndarray,
) -> None:
    """Write an object's class, height (m), top colour (h, w, 3) and side colour into the rasters."""
    sl = (patch.rows, patch.cols)
    world.cls[sl][mask] = cls_value
    world.height[sl][mask] = height[mask]
    world.albedo[sl][mask] = np.clip(top[mask], 0, 255)
    side_arr = np.broadcast_to(side, (*mask.shape, 3)) if np.ndim(side) == 1 else side
    world.side[sl][mask] = np.clip(side_arr[mask], 0, 255)


def populate(world: World, roads: list[L.Road], lots: list[Rect], rng: np.random.Generator) -> None:
    """Add every object to the world: buildings first, then trees, forest, cars."""
    from synth import buildings, vegetation  # local: these modules import this one

    density = textures.value_noise((64, 64), 12.0, rng, 2)
    buildings.place_buildings(world, roads, density, rng)
    vegetation.grow_forest(world, rng)
    vegetation.place_trees(world, roads, rng)
    paint_parking(world, lots, rng)
    for road in roads:
        if road.kind == L.LANE:
            continue
        for point, tangent in road_frames(road, (6.0, 14.0), rng):
            if rng.random() < 0.3:
                side = 1.0 if rng.random() < 0.5 else -1.0
                rect = beside(point, tangent, side, road.width_m / 2 - 1.3, 2.2, 0.9)
                add_car(world, rect, rng)
