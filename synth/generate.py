"""Generating a world: ground, water, roads, parking, buildings, vegetation and cars, in that
order, all drawn from one random stream seeded by the world's seed.

Water and roads are drawn into the class raster here; the objects come from `objects`,
`buildings` and `vegetation`, which share the raster primitives of `raster` and never import one
another.
"""

from __future__ import annotations

import cv2
import numpy as np

from synth import buildings, objects, textures, vegetation
from synth import layout as L
from synth.geo import WorldFrame
from synth.raster import SHIFT, Rect, draw_path, fixed_point
from synth.world import World


def draw_water(cls: np.ndarray, extent_m: float, gsd_m: float, rng: np.random.Generator) -> None:
    """A river (most worlds) and a few ponds, written into `cls` as WATER."""
    if rng.random() < 0.7:
        draw_path(cls, L.river_path(extent_m, rng), rng.uniform(14.0, 34.0), L.WATER, gsd_m)
    n_ponds = rng.poisson(1.0 * (extent_m / 1000.0) ** 2)
    for _ in range(n_ponds):
        centre = rng.uniform(0.05, 0.95, size=2) * extent_m / gsd_m
        axes = rng.uniform(12.0, 45.0, size=2) / gsd_m
        angle = rng.uniform(0, 180)
        cv2.ellipse(
            cls,
            tuple(int(c) for c in centre * (1 << SHIFT)),
            tuple(int(a) for a in axes * (1 << SHIFT)),
            angle,
            0,
            360,
            L.WATER,
            -1,
            cv2.LINE_8,
            SHIFT,
        )


def build_roads(cls: np.ndarray, extent_m: float, gsd_m: float, rng: np.random.Generator) -> list[L.Road]:
    """Grow main roads, streets and lanes, draw them (sidewalks under streets) into `cls`."""
    water = cls == L.WATER
    mains = L.main_roads(extent_m, rng)
    near_roads = L.RoadMask(extent_m)
    for road in mains:
        near_roads.add(road)
    streets = L.branches(mains, L.STREET, extent_m, water, gsd_m, rng, near_roads)
    lanes = L.branches(streets, L.LANE, extent_m, water, gsd_m, rng, near_roads)
    roads = mains + streets + lanes
    for road in roads:
        if road.kind != L.LANE:
            draw_path(cls, road.points, road.width_m + 2 * L.SIDEWALK_M, L.SIDEWALK, gsd_m)
    for road in roads:
        draw_path(cls, road.points, road.width_m, L.ROAD, gsd_m)
    return roads


def road_markings(shape: tuple[int, int], roads: list[L.Road], gsd_m: float) -> np.ndarray:
    """Boolean mask of dashed centre lines on main roads and streets."""
    mask = np.zeros(shape, dtype=np.uint8)
    for road in roads:
        if road.kind == L.LANE:
            continue
        dense = _resample(road.points, 1.0)
        for start in range(0, len(dense) - 3, 9):
            dash = fixed_point(dense[start : start + 4], gsd_m)
            cv2.polylines(mask, [dash], False, 1, 1, cv2.LINE_8, SHIFT)
    return mask.astype(bool)


def _resample(points: np.ndarray, step_m: float) -> np.ndarray:
    arc = L.arc_lengths(points)
    s = np.arange(0.0, arc[-1], step_m)
    return np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], axis=1)


def ground_albedo(
    cls: np.ndarray, markings: np.ndarray, gsd_m: float, rng: np.random.Generator
) -> np.ndarray:
    """Unlit ground colour (S, S, 3) uint8 from the class map with noisy textures."""
    shape = cls.shape
    out = np.empty((*shape, 3), dtype=np.float32)
    dry = np.clip(textures.value_noise(shape, 60.0 / gsd_m, rng, 2) * 0.35 + 0.3, 0, 1)[..., None]
    grass = (
        np.asarray(textures.GRASS_RGB, dtype=np.float32) * (1 - dry)
        + np.asarray(textures.DRY_GRASS_RGB, dtype=np.float32) * dry
    )
    out[:] = grass
    colours = {
        L.BARE: textures.BARE_RGB,
        L.ROAD: textures.ASPHALT_RGB,
        L.SIDEWALK: textures.SIDEWALK_RGB,
        L.PARKING: textures.PARKING_RGB,
        L.WATER: textures.WATER_RGB,
    }
    for value, rgb in colours.items():
        out[cls == value] = rgb
    patch = textures.value_noise(shape, 6.0 / gsd_m, rng, 3)
    fine = rng.standard_normal(shape, dtype=np.float32)
    natural = (cls == L.GRASS) | (cls == L.BARE)
    amp = np.where(natural, np.float32(0.16), np.float32(0.06))
    out *= (1.0 + amp * patch + 0.5 * amp * fine)[..., None]
    out[markings & (cls == L.ROAD)] = textures.MARKING_RGB
    _shade_water(out, cls == L.WATER, gsd_m)
    return np.clip(out, 0, 255).astype(np.uint8)


def _shade_water(out: np.ndarray, water: np.ndarray, gsd_m: float) -> None:
    """Darken water away from the shore (depth) and lighten a narrow muddy bank."""
    if not water.any():
        return
    dist_m = cv2.distanceTransform(water.astype(np.uint8), cv2.DIST_L2, 3) * gsd_m
    depth = np.clip(dist_m / 8.0, 0, 1)[..., None]
    out[water] = (out * (1.15 - 0.4 * depth))[water]


def populate(world: World, roads: list[L.Road], lots: list[Rect], rng: np.random.Generator) -> None:
    """Add every object to the world: buildings first, then trees, forest, cars."""
    density = textures.value_noise((64, 64), 12.0, rng, 2)
    buildings.place_buildings(world, roads, density, rng)
    vegetation.grow_forest(world, rng)
    vegetation.place_trees(world, roads, rng)
    objects.paint_parking(world, lots, rng)
    objects.park_cars(world, roads, rng)


def generate_world(frame: WorldFrame, seed: int) -> World:
    """Build every raster layer of the world of `seed` on `frame`'s grid."""
    rng = np.random.default_rng([seed, 1])
    size, gsd = frame.size_px, frame.gsd_m
    extent = size * gsd
    cls = np.full((size, size), L.GRASS, dtype=np.uint8)
    cls[textures.value_noise((size, size), 40.0 / gsd, rng, 2) > 1.1] = L.BARE
    draw_water(cls, extent, gsd, rng)
    roads = build_roads(cls, extent, gsd, rng)
    lots = objects.place_parking(cls, roads, gsd, rng)
    albedo = ground_albedo(cls, road_markings(cls.shape, roads, gsd), gsd, rng)
    world = World(
        frame=frame,
        seed=seed,
        cls=cls,
        height=np.zeros((size, size), dtype=np.float32),
        albedo=albedo,
        side=albedo.copy(),
        # The sun stands on the equator side of the sky.
        sun_az_deg=float(rng.uniform(90.0, 270.0) + (180.0 if frame.origin_lat < 0 else 0.0)) % 360.0,
        sun_el_deg=float(rng.uniform(28.0, 62.0)),
    )
    populate(world, roads, lots, rng)
    return world
