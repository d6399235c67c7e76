"""Trees (individual crowns along streets and in the open) and forest canopy."""

from __future__ import annotations

import cv2
import numpy as np

from synth import layout as L
from synth import textures
from synth.raster import Rect, rect_patch, stamp
from synth.world import World

NO_TREE = (L.BUILDING, L.WATER, L.CAR)
CROWN_SIDE_SHADE = 0.72  # sides of tree crowns are darker than their sunlit tops


def add_tree(
    world: World, cu: float, cv: float, radius: float, top_m: float, rng: np.random.Generator
) -> None:
    """A round, slightly ragged crown of `radius` metres whose top is `top_m` above ground."""
    rect = Rect(cu, cv, 0.0, radius, radius)
    patch = rect_patch(rect, world.frame.gsd_m, world.size_px)
    if patch is None:
        return
    r2 = (patch.s**2 + patch.t**2) / radius**2
    ragged = rng.standard_normal(r2.shape, dtype=np.float32)
    height = (top_m * (1.0 - 0.35 * r2)).astype(np.float32)
    sl = (patch.rows, patch.cols)
    mask = (r2 + 0.12 * ragged <= 1.0) & ~np.isin(world.cls[sl], NO_TREE) & (height > world.height[sl])
    colour = textures.jitter_colour(
        textures.CROWN_PALETTE[rng.integers(len(textures.CROWN_PALETTE))], rng, 0.1
    )
    top = colour * (1.0 + 0.16 * ragged - 0.25 * r2)[..., None]
    stamp(world, patch, mask, L.TREE, height, top, top * CROWN_SIDE_SHADE)


def place_trees(world: World, roads: list[L.Road], rng: np.random.Generator) -> None:
    """Rows of street trees beside some streets, and trees scattered over open ground."""
    gsd, size = world.frame.gsd_m, world.size_px
    for road in roads:
        if road.kind != L.STREET or rng.random() > 0.45:
            continue
        radius = rng.uniform(2.0, 4.0)
        for point, tangent in L.road_frames(road, (9.0, 15.0), rng):
            for side in (-1.0, 1.0):
                normal = np.array([-tangent[1], tangent[0]]) * side
                p = point + normal * (road.width_m / 2 + 3.5)
                _maybe_tree(world, p, radius * rng.uniform(0.85, 1.15), rng, allowed=(*L.FREE, L.SIDEWALK))
    extent = size * gsd
    for p in rng.uniform(0, extent, size=(int(extent * extent * 0.0012), 2)):
        _maybe_tree(world, p, rng.uniform(2.0, 5.5), rng, allowed=L.FREE)


def _maybe_tree(
    world: World, p: np.ndarray, radius: float, rng: np.random.Generator, allowed: tuple[int, ...]
) -> None:
    gsd, size = world.frame.gsd_m, world.size_px
    col, row = int(p[0] / gsd), int(p[1] / gsd)
    if not (0 <= col < size and 0 <= row < size) or world.cls[row, col] not in allowed:
        return
    top = radius * rng.uniform(1.6, 2.8) + rng.uniform(1.0, 3.0)
    add_tree(world, float(p[0]), float(p[1]), radius, top, rng)


def grow_forest(world: World, rng: np.random.Generator) -> None:
    """Patches of closed canopy on open ground away from roads and buildings."""
    gsd, size = world.frame.gsd_m, world.size_px
    shape = (size, size)
    patches = textures.value_noise(shape, 160.0 / gsd, rng, 2) > 1.0
    free = np.isin(world.cls, L.FREE).astype(np.uint8)
    k = max(3, int(round(8.0 / gsd)) | 1)
    free = cv2.erode(free, np.ones((k, k), np.uint8)).astype(bool)
    mask = patches & free
    if not mask.any():
        return
    clumps = textures.value_noise(shape, 4.0 / gsd, rng, 2)[mask]
    tall = 12.0 + 3.0 * textures.value_noise(shape, 40.0 / gsd, rng, 1)[mask]
    tone = np.clip(textures.value_noise(shape, 30.0 / gsd, rng, 1)[mask] * 0.4 + 0.5, 0, 1)[:, None]
    base = textures.CROWN_PALETTE[2] * (1 - tone) + textures.CROWN_PALETTE[1] * tone
    top = base * (1.0 + 0.22 * clumps)[:, None]
    world.cls[mask] = L.TREE
    world.height[mask] = np.clip(tall * (0.85 + 0.12 * clumps), 3.0, None)
    world.albedo[mask] = np.clip(top, 0, 255)
    world.side[mask] = np.clip(top * CROWN_SIDE_SHADE, 0, 255)
