"""Scene layout in the world's metric frame (u east, v south, metres): water and road network.

Roads are polylines grown by a smoothed random walk of their heading, so main roads curve and
streets branch off them at irregular spacing and angles instead of forming a grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from synth.raster import draw_path

# Ground classes of the class raster.
GRASS, BARE, WATER, ROAD, SIDEWALK, PARKING, BUILDING, TREE, CAR = range(1, 10)
CLASS_NAMES = ("", "grass", "bare", "water", "road", "sidewalk", "parking", "building", "tree", "car")
FREE = (GRASS, BARE)  # open ground on which objects may be placed

MAIN, STREET, LANE = 0, 1, 2
SIDEWALK_M = 2.0  # sidewalk width on each side of main roads and streets (lanes have none)


@dataclass(frozen=True)
class Road:
    """A road centre line: points (n, 2) in metres (u, v), carriageway width and kind."""

    points: np.ndarray
    width_m: float
    kind: int


def grow_path(
    start: np.ndarray,
    heading: float,
    length_m: float,
    wiggle: float,
    rng: np.random.Generator,
    step_m: float = 8.0,
) -> np.ndarray:
    """Polyline (n, 2) from `start` along `heading` (radians, 0 = +u) whose turn rate is a
    smoothed random walk with per-step noise `wiggle` (radians)."""
    n = max(2, int(length_m / step_m) + 1)
    turn = np.zeros(n)
    rate = 0.0
    for i in range(1, n):
        rate = 0.85 * rate + rng.normal(0.0, wiggle)
        turn[i] = rate
    angles = heading + np.cumsum(turn)
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step_m
    steps[0] = 0.0
    return np.asarray(start, dtype=np.float64) + np.cumsum(steps, axis=0)


def clip_path(points: np.ndarray, extent_m: float, margin_m: float) -> np.ndarray:
    """Points of the path up to where it first leaves the square grown by margin_m."""
    inside = np.all((points >= -margin_m) & (points <= extent_m + margin_m), axis=1)
    if inside.all():
        return points
    first_out = int(np.argmin(inside))
    return points[: max(first_out, 2)]


def edge_start(extent_m: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A point just outside a random edge and a heading pointing into the world."""
    side = int(rng.integers(4))
    t = rng.uniform(0.1, 0.9) * extent_m
    out = 40.0
    starts = [(t, -out), (extent_m + out, t), (t, extent_m + out), (-out, t)]
    start = np.array(starts[side], dtype=np.float64)
    target = rng.uniform(0.25, 0.75, size=2) * extent_m
    heading = math.atan2(target[1] - start[1], target[0] - start[0])
    return start, heading


def river_path(extent_m: float, rng: np.random.Generator) -> np.ndarray:
    """A meandering river centre line crossing the world."""
    start, heading = edge_start(extent_m, rng)
    path = grow_path(start, heading, 3.0 * extent_m, 0.05, rng, step_m=10.0)
    return clip_path(path, extent_m, 60.0)


def main_roads(extent_m: float, rng: np.random.Generator) -> list[Road]:
    """A few gently curving arterial roads crossing the world."""
    roads = []
    for _ in range(2 + int(extent_m / 600.0)):
        start, heading = edge_start(extent_m, rng)
        path = grow_path(start, heading, 3.0 * extent_m, 0.012, rng)
        roads.append(Road(clip_path(path, extent_m, 50.0), float(rng.uniform(10.0, 15.0)), MAIN))
    return roads


def arc_lengths(points: np.ndarray) -> np.ndarray:
    """Distance (n,) in metres along the polyline `points` (n, 2) from its first point."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _tangent(points: np.ndarray, i: int) -> np.ndarray:
    j0, j1 = max(i - 1, 0), min(i + 1, len(points) - 1)
    d = points[j1] - points[j0]
    return d / (np.linalg.norm(d) + 1e-9)


def road_frames(
    road: Road, spacing: tuple[float, float], rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (point (2,), unit tangent (2,)) at random spacing along a road."""
    pts = road.points
    arc = arc_lengths(pts)
    s = rng.uniform(*spacing) / 2
    while s < arc[-1]:
        i = min(int(np.searchsorted(arc, s)), len(pts) - 1)
        point = np.array([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])])
        yield point, _tangent(pts, i)
        s += rng.uniform(*spacing)


class RoadMask:
    """Coarse (2 m) raster of the ground within 4 m of any road, to end streets at T-junctions."""

    CELL_M = 2.0

    def __init__(self, extent_m: float) -> None:
        n = int(math.ceil(extent_m / self.CELL_M)) + 1
        self.mask = np.zeros((n, n), dtype=np.uint8)

    def add(self, road: Road) -> None:
        draw_path(self.mask, road.points, road.width_m + 8.0, 1, self.CELL_M)

    def hits(self, path: np.ndarray) -> np.ndarray:
        """Boolean (n,): which path points lie near a road (outside the raster: False)."""
        idx = np.floor(path / self.CELL_M).astype(np.int64)
        n = self.mask.shape[0]
        ok = np.all((idx >= 0) & (idx < n), axis=1)
        out = np.zeros(len(path), dtype=bool)
        out[ok] = self.mask[idx[ok, 1], idx[ok, 0]] > 0
        return out


def _stop_at_road(path: np.ndarray, roads: RoadMask) -> np.ndarray:
    """Cut the path where, after leaving its parent road, it first comes near another road,
    reaching 6 m on so that it joins that road."""
    near = roads.hits(path)
    away = np.flatnonzero(~near)
    if away.size == 0:
        return path[:0]
    again = np.flatnonzero(near[away[0] :])
    if again.size == 0:
        return path
    end = away[0] + again[0]
    step = path[end] - path[end - 1]
    return np.vstack([path[: end + 1], path[end] + step / (np.linalg.norm(step) + 1e-9) * 6.0])


def branches(
    parents: list[Road],
    kind: int,
    extent_m: float,
    water: np.ndarray,
    gsd_m: float,
    rng: np.random.Generator,
    roads: RoadMask,
) -> list[Road]:
    """Streets branching off `parents` at irregular spacing; they stop at water and end in a
    T-junction where they run into another road (each new street is added to `roads`)."""
    spacing, length, width = {STREET: ((50, 140), (80, 420), (6, 9)), LANE: ((40, 110), (40, 200), (4.5, 6))}[
        kind
    ]
    out = []
    for parent in parents:
        pts = parent.points
        arc = arc_lengths(pts)
        s = rng.uniform(*spacing)
        while s < arc[-1]:
            i = min(int(np.searchsorted(arc, s)), len(pts) - 1)
            tangent = _tangent(pts, i)
            side = 1.0 if rng.random() < 0.5 else -1.0
            heading = math.atan2(tangent[1], tangent[0]) + side * (math.pi / 2 + rng.normal(0, 0.25))
            path = grow_path(pts[i], heading, rng.uniform(*length), 0.02, rng)
            path = _stop_at_water(clip_path(path, extent_m, 20.0), water, gsd_m)
            path = _stop_at_road(path, roads)
            if len(path) >= 3:
                road = Road(path, float(rng.uniform(*width)), kind)
                out.append(road)
                roads.add(road)
            s += rng.uniform(*spacing)
    return out


def _stop_at_water(path: np.ndarray, water: np.ndarray, gsd_m: float) -> np.ndarray:
    size = water.shape[0]
    idx = np.clip((path / gsd_m).astype(np.int64), 0, size - 1)
    wet = water[idx[:, 1], idx[:, 0]]
    wet[0] = False
    if not wet.any():
        return path
    return path[: int(np.argmax(wet))]
