"""Where the ground cameras stand, and which of them are for training or validation.

Cameras stand on roads, sidewalks, parking lots or open ground, at least 1.5 m from any object
or water, mostly (75 %) on roads and sidewalks, and at least `min_spacing_m` apart where the
area allows (the spacing shrinks only when the requested count does not fit).

Split: validation cameras lie in the eastern strip of the world, training cameras west of it,
and the two strips are separated by one aerial tile size (70 m) of camera-free ground, so no
validation aerial crop overlaps a training aerial crop. `val_fraction` sets both the share of
cameras and the share of usable width given to validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synth import layout as L
from synth.world import World

ON_ROAD = (L.ROAD, L.SIDEWALK)
OPEN = (L.GRASS, L.BARE, L.PARKING)
EDGE_M = 1.0  # least distance from an aerial crop around a camera to the world's edge


@dataclass(frozen=True)
class SplitPlan:
    """Camera u ranges (metres east of the western edge) of each split and their counts."""

    train_u: tuple[float, float]
    val_u: tuple[float, float]
    n_train: int
    n_val: int


def usable_range(extent_m: float, tile_m: float) -> tuple[float, float]:
    """Range of camera u (or v) in metres whose `tile_m` aerial crop lies inside the world."""
    return tile_m / 2 + EDGE_M, extent_m - tile_m / 2 - EDGE_M


def plan_split(extent_m: float, n: int, val_fraction: float, tile_m: float) -> SplitPlan:
    """Split the usable width (aerial crops stay inside the world) into train | gap | val."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"--val-fraction must lie in 0..1, got {val_fraction}")
    lo, hi = usable_range(extent_m, tile_m)
    n_val = int(round(val_fraction * n))
    if n_val in (0, n):
        full = (lo, hi) if hi > lo else (lo, lo)
        if hi - lo < 10.0:
            raise ValueError(f"the world ({extent_m} m) is too small for {tile_m} m aerial crops")
        empty = (hi, hi)
        return SplitPlan(full if n_val == 0 else empty, full if n_val == n else empty, n - n_val, n_val)
    avail = hi - lo - tile_m
    if avail < 40.0:
        raise ValueError(
            f"the world ({extent_m} m) is too small to split into train and validation with a "
            f"{tile_m} m buffer; use a larger --extent-m or --val-fraction 0"
        )
    val_lo = hi - max(val_fraction * avail, 10.0)
    train_hi = min(val_lo - tile_m, hi - tile_m - 10.0)
    return SplitPlan((lo, train_hi), (val_lo, hi), n - n_val, n_val)


def eligible_masks(world: World) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (S, S) masks of allowed camera pixels on roads/sidewalks and on open ground."""
    blocked = ((world.height > 0.0) | (world.cls == L.WATER)).astype(np.uint8)
    k = 2 * int(np.ceil(1.5 / world.frame.gsd_m)) + 1
    blocked = cv2.dilate(blocked, np.ones((k, k), np.uint8)).astype(bool)
    return np.isin(world.cls, ON_ROAD) & ~blocked, np.isin(world.cls, OPEN) & ~blocked


def sample_cameras(
    world: World,
    u_range: tuple[float, float],
    v_range: tuple[float, float],
    n: int,
    rng: np.random.Generator,
    min_spacing_m: float = 10.0,
) -> np.ndarray:
    """`n` camera positions (n, 2) in continuous pixel coordinates (col, row) with u (metres east
    of the western edge) in u_range and v (metres south of the northern edge) in v_range."""
    if n == 0:
        return np.zeros((0, 2))
    gsd = world.frame.gsd_m
    lo_px, hi_px = int(np.ceil(u_range[0] / gsd)), int(u_range[1] / gsd)
    v_lo, v_hi = int(np.ceil(v_range[0] / gsd)), int(v_range[1] / gsd)
    pools = []
    for mask in eligible_masks(world):
        window = mask[v_lo:v_hi, lo_px:hi_px]
        rows, cols = np.nonzero(window)
        pools.append(np.stack([cols + lo_px, rows + v_lo], axis=1))
    if sum(len(p) for p in pools) == 0:
        raise ValueError("no ground in the world is free for cameras; try another --seed or a larger world")
    return _spaced(pools, n, min_spacing_m / gsd, rng)


def _spaced(pools: list[np.ndarray], n: int, spacing_px: float, rng: np.random.Generator) -> np.ndarray:
    """Draw from the pools (75 % from the first) keeping points `spacing_px` apart; shrink the
    spacing when too few fit."""
    chosen: list[tuple[float, float]] = []
    while spacing_px >= 0.5:
        grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for p in chosen:
            grid.setdefault((int(p[0] // spacing_px), int(p[1] // spacing_px)), []).append(p)
        for _ in range(60 * n):
            pool = pools[0] if (rng.random() < 0.75 and len(pools[0])) or not len(pools[1]) else pools[1]
            c, r = pool[rng.integers(len(pool))]
            p = (c + rng.random(), r + rng.random())
            key = (int(p[0] // spacing_px), int(p[1] // spacing_px))
            near = (
                q for dx in (-1, 0, 1) for dy in (-1, 0, 1) for q in grid.get((key[0] + dx, key[1] + dy), ())
            )
            if all((q[0] - p[0]) ** 2 + (q[1] - p[1]) ** 2 >= spacing_px**2 for q in near):
                chosen.append(p)
                grid.setdefault(key, []).append(p)
                if len(chosen) == n:
                    return np.array(chosen)
        spacing_px *= 0.7
    raise ValueError(f"could not place {n} cameras in the world; use fewer --pairs or a larger world")
