"""The 2.5D world as raster layers at the ground sampling distance (GSD).

Layers (S = side in pixels, row 0 = north):
    cls     (S, S) uint8    ground class (see `layout` constants)
    height  (S, S) float32  height of the surface above the flat ground, metres
    albedo  (S, S, 3) uint8 colour of the top surface (RGB), unlit
    side    (S, S, 3) uint8 colour of vertical faces there (walls, crown sides, car bodies), lit
Both renderers (`ortho`, `panorama`) read only these layers, so the two views of one place show
the same objects but never share pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from synth import layout as L
from synth import objects, textures
from synth.geo import WorldFrame

SHIFT = 2  # fixed-point bits for cv2 drawing: sub-pixel accurate road geometry


@dataclass
class World:
    """Raster layers of one generated world plus its lighting."""

    frame: WorldFrame
    seed: int
    cls: np.ndarray
    height: np.ndarray
    albedo: np.ndarray
    side: np.ndarray
    sun_az_deg: float
    sun_el_deg: float

    @property
    def size_px(self) -> int:
        return int(self.cls.shape[0])

    @property
    def sun_vector(self) -> np.ndarray:
        """Unit vector towards the sun in (u east, v south, up) (3,)."""
        az, el = math.radians(self.sun_az_deg), math.radians(self.sun_el_deg)
        return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def _poly(points_m: np.ndarray, gsd_m: float) -> list[np.ndarray]:
    return [np.round(points_m / gsd_m * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)]


def _draw_path(img: np.ndarray, points_m: np.ndarray, width_m: float, value: int, gsd_m: float) -> None:
    thickness = max(1, int(round(width_m / gsd_m)))
    cv2.polylines(img, _poly(points_m, gsd_m), False, value, thickness, cv2.LINE_8, SHIFT)


def draw_water(cls: np.ndarray, extent_m: float, gsd_m: float, rng: np.random.Generator) -> None:
    """A river (most worlds) and a few ponds, written into `cls` as WATER."""
    if rng.random() < 0.7:
        _draw_path(cls, L.river_path(extent_m, rng), rng.uniform(14.0, 34.0), L.WATER, gsd_m)
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
            _draw_path(cls, road.points, road.width_m + 4.0, L.SIDEWALK, gsd_m)
    for road in roads:
        _draw_path(cls, road.points, road.width_m, L.ROAD, gsd_m)
    return roads


def road_markings(shape: tuple[int, int], roads: list[L.Road], gsd_m: float) -> np.ndarray:
    """Boolean mask of dashed centre lines on main roads and streets."""
    mask = np.zeros(shape, dtype=np.uint8)
    for road in roads:
        if road.kind == L.LANE:
            continue
        dense = _resample(road.points, 1.0)
        for start in range(0, len(dense) - 3, 9):
            cv2.polylines(mask, _poly(dense[start : start + 4], gsd_m), False, 1, 1, cv2.LINE_8, SHIFT)
    return mask.astype(bool)


def _resample(points: np.ndarray, step_m: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
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
    objects.populate(world, roads, lots, rng)
    return world
