"""Buildings: rectangular and L-shaped footprints facing a road, flat or gabled roofs.

Wall colours are mixed from the roof colour and a facade palette, so what the aerial view shows
of a building (its roof) says something about what the ground view shows (its walls).
"""

from __future__ import annotations

import math

import numpy as np

from synth import layout as L
from synth import textures
from synth.raster import Patch, Rect, beside, inside, is_free, rect_patch, stamp
from synth.world import World


def _density_at(density: np.ndarray, world: World, point: np.ndarray) -> float:
    n = density.shape[0]
    extent = world.size_px * world.frame.gsd_m
    i = np.clip((point / extent * n).astype(int), 0, n - 1)
    return float(density[i[1], i[0]])


def place_buildings(world: World, roads: list[L.Road], density: np.ndarray, rng: np.random.Generator) -> None:
    """Walk both sides of every road and put buildings on free ground, denser where `density`
    (a coarse (n, n) noise grid over the world) is high."""
    for road in roads:
        kerb = road.width_m / 2 + (0.0 if road.kind == L.LANE else L.SIDEWALK_M)
        for side in (-1.0, 1.0):
            for point, tangent in L.road_frames(road, (13.0, 30.0), rng):
                d = _density_at(density, world, point)
                if rng.random() > float(np.clip(0.45 + 0.3 * d, 0.08, 0.95)):
                    continue
                offset = kerb + rng.uniform(1.5, 7.0)
                for _row in range(1 + int(rng.random() < 0.35 + 0.2 * d)):
                    half_b = rng.uniform(4.0, 9.0 + 3.0 * max(d, 0.0))
                    parts = _footprint(point, tangent, side, offset + half_b, half_b, rng)
                    if all(is_free(world, p, 1.0, L.FREE) for p in parts):
                        _add_building(world, parts, d, rng)
                    offset += 2 * half_b + rng.uniform(6.0, 16.0)


def _footprint(
    point: np.ndarray,
    tangent: np.ndarray,
    side: float,
    offset: float,
    half_b: float,
    rng: np.random.Generator,
) -> list[Rect]:
    """One rectangle, or two forming an L whose wing extends away from the road."""
    half_a = rng.uniform(4.0, 12.0)
    main = beside(point, tangent, side, offset, half_a, half_b)
    if rng.random() > 0.25:
        return [main]
    wa, wb = rng.uniform(3.0, max(3.5, 0.6 * half_a)), rng.uniform(3.0, 7.0)
    end = 1.0 if rng.random() < 0.5 else -1.0
    normal = np.array([-tangent[1], tangent[0]]) * side
    c = np.array([main.cu, main.cv]) + tangent * end * (half_a - wa) + normal * (half_b + wb - 0.25)
    return [main, Rect(float(c[0]), float(c[1]), main.angle, wa, wb)]


def _add_building(world: World, parts: list[Rect], density: float, rng: np.random.Generator) -> None:
    tall = density > 0.7 and rng.random() < 0.7
    eave = rng.uniform(12.0, 32.0) if tall else rng.uniform(3.5, 10.0)
    gable = len(parts) == 1 and not tall and rng.random() < 0.5
    roof = textures.jitter_colour(textures.ROOF_PALETTE[rng.integers(len(textures.ROOF_PALETTE))], rng, 0.12)
    facade = textures.WALL_PALETTE[rng.integers(len(textures.WALL_PALETTE))]
    mix = rng.uniform(0.25, 0.6)
    wall = textures.jitter_colour(mix * roof + (1 - mix) * facade, rng, 0.08)
    ridge = rng.uniform(2.0, 4.5) if gable else 0.0
    for part in parts:
        _stamp_part(world, part, eave, ridge, roof, wall, rng)
    if not gable:
        _rooftop_units(world, parts[0], eave, rng)


def _stamp_part(
    world: World,
    part: Rect,
    eave: float,
    ridge: float,
    roof: np.ndarray,
    wall: np.ndarray,
    rng: np.random.Generator,
) -> None:
    patch = rect_patch(part, world.frame.gsd_m, world.size_px)
    assert patch is not None
    mask = inside(patch, part)
    # The ridge runs along the longer side.
    across, half = (patch.t, part.half_b) if part.half_a >= part.half_b else (patch.s, part.half_a)
    height = eave + ridge * (1.0 - np.abs(across) / half)
    if ridge == 0.0:  # parapet of flat roofs
        rim = (part.half_a - np.abs(patch.s) < 0.6) | (part.half_b - np.abs(patch.t) < 0.6)
        height = height + 0.6 * rim
    noise = rng.standard_normal(mask.shape, dtype=np.float32)
    top = roof * (1.0 + 0.05 * noise)[..., None]
    stamp(
        world,
        patch,
        mask,
        L.BUILDING,
        height.astype(np.float32),
        top,
        _wall_colours(world, part, patch, wall),
    )


def _wall_colours(world: World, part: Rect, patch: Patch, wall: np.ndarray) -> np.ndarray:
    """Wall colour (h, w, 3) lit by the sun according to the nearest wall's outward normal."""
    ca, sa = math.cos(part.angle), math.sin(part.angle)
    on_a = (part.half_a - np.abs(patch.s)) < (part.half_b - np.abs(patch.t))
    sign = np.where(on_a, np.sign(patch.s), np.sign(patch.t))
    nu = np.where(on_a, ca, -sa) * sign
    nv = np.where(on_a, sa, ca) * sign
    sun = world.sun_vector
    lambert = np.clip(nu * sun[0] + nv * sun[1], 0.0, None)
    shade = 0.62 + 0.55 * lambert
    return wall * shade[..., None]


def _rooftop_units(world: World, base: Rect, eave: float, rng: np.random.Generator) -> None:
    """A few small boxes (ventilation, stair houses) on a flat roof."""
    ca, sa = math.cos(base.angle), math.sin(base.angle)
    for _ in range(int(rng.integers(0, 4))):
        a, b = rng.uniform(0.8, 2.5), rng.uniform(0.8, 2.0)
        s = rng.uniform(-1, 1) * max(base.half_a - a - 1.0, 0.0)
        t = rng.uniform(-1, 1) * max(base.half_b - b - 1.0, 0.0)
        unit = Rect(base.cu + s * ca - t * sa, base.cv + s * sa + t * ca, base.angle, a, b)
        patch = rect_patch(unit, world.frame.gsd_m, world.size_px)
        if patch is None:
            continue
        mask = inside(patch, unit)
        grey = np.float32(rng.uniform(150, 210))
        h = np.full(mask.shape, eave + rng.uniform(1.0, 2.5), np.float32)
        top = np.full((*mask.shape, 3), grey, np.float32)
        stamp(world, patch, mask, L.BUILDING, h, top, np.array([grey, grey, grey], np.float32) * 0.8)
