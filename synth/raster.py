"""Raster primitives shared by the world builder: fixed-point drawing of metric polylines, and
rotated rectangles stamped into a world's layers.

This module sits at the bottom of the generator: it imports only the `World` type, so every
module that places objects (`objects`, `buildings`, `vegetation`, `generate`) can use it without
importing one another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from synth.world import World

SHIFT = 2  # fixed-point bits for cv2 drawing: sub-pixel accurate road geometry


def fixed_point(points_m: np.ndarray, cell_m: float) -> np.ndarray:
    """Metric points (n, 2) as cv2 fixed-point pixel coordinates (n, 1, 2) int32 on a grid of
    `cell_m` metres, for drawing with `shift=SHIFT`."""
    return np.round(points_m / cell_m * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def draw_path(img: np.ndarray, points_m: np.ndarray, width_m: float, value: int, cell_m: float) -> None:
    """Draw the polyline `points_m` (n, 2) metres, `width_m` wide, into `img` as `value`."""
    thickness = max(1, int(round(width_m / cell_m)))
    cv2.polylines(img, [fixed_point(points_m, cell_m)], False, value, thickness, cv2.LINE_8, SHIFT)


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


def beside(
    point: np.ndarray, tangent: np.ndarray, side: float, offset: float, half_a: float, half_b: float
) -> Rect:
    """Rectangle aligned with the road whose centre lies `offset` metres to one side."""
    normal = np.array([-tangent[1], tangent[0]]) * side
    c = point + normal * offset
    return Rect(float(c[0]), float(c[1]), math.atan2(tangent[1], tangent[0]), half_a, half_b)


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
    """Boolean mask over `patch` of the pixels inside `rect` grown by grow_m."""
    return (np.abs(patch.s) <= rect.half_a + grow_m) & (np.abs(patch.t) <= rect.half_b + grow_m)


def within_extent(rect: Rect, margin_m: float, extent_m: float) -> bool:
    """True when the circle around `rect` grown by margin_m lies inside the world's square."""
    r = math.hypot(rect.half_a, rect.half_b) + margin_m
    return not (min(rect.cu, rect.cv) - r < 0 or max(rect.cu, rect.cv) + r > extent_m)


def is_free(world: World, rect: Rect, grow_m: float, allowed: tuple[int, ...]) -> bool:
    """True when every pixel of `rect` grown by grow_m lies inside the world on an allowed class."""
    gsd, size = world.frame.gsd_m, world.size_px
    if not within_extent(rect, grow_m, size * gsd):
        return False
    patch = rect_patch(rect, gsd, size, grow_m)
    assert patch is not None
    cls = world.cls[patch.rows, patch.cols][inside(patch, rect, grow_m)]
    return bool(np.isin(cls, allowed).all())


def stamp(
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
