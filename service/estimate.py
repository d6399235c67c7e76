"""A location estimate from the spatial consensus of ranked tiles: pure geometry and statistics.

The index answers with tiles, each a square of ground around its centre. Neighbouring tiles
overlap (by half at the indexer's default stride), so when the query really was taken at some
place, several tiles around it tend to score well together, while a look-alike elsewhere is
usually isolated. The estimate weighs each of the best `pool` candidates by a softmax of its score
(temperature `temperature`), finds the modes of the weighted kernel density of the candidate
centres by mean shift (Gaussian kernel of `bandwidth` = `bandwidth_tiles` x tile size), groups
candidates by the mode they climb to, and answers the weighted centre of the heaviest group.

`radius_m` is that group's spread (weighted RMS distance of its members from the centre, times
`spread_factor`), at least `min_radius_strides` x the stride. `raw` (the group's share of the
softmax mass) and the other features of `Estimate.features` are what the calibration
(`service.calibration`) turns into a probability that the true place lies within `radius_m`.

Nothing here knows about the index, the model or HTTP: inputs are arrays, outputs numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.metrics import EARTH_RADIUS_M  # mean radius: rough sizes (bbox extents) only

WGS84_A, WGS84_E2 = 6_378_137.0, 6.69437999014e-3  # semi-major axis, first eccentricity squared
FEATURES = ("mass", "second", "z_top", "members")


@dataclass(frozen=True)
class EstimateParams:
    """How the consensus is formed (defaults: chosen on calibration worlds 6101-6103, docs/service.md)."""

    pool: int = 50  # candidates considered (the search asks for at least this many)
    temperature: float = 0.02  # of the softmax over scores (cosines); smaller = sharper
    bandwidth_tiles: float = 0.5  # kernel bandwidth, in tile sizes
    spread_factor: float = 1.5  # radius = spread_factor x the group's RMS spread ...
    min_radius_strides: float = 1.0  # ... but at least this many strides


@dataclass(frozen=True)
class Estimate:
    """Where the query most likely is: centre (degrees), radius (m) and the raw confidence
    features (`FEATURES`: the group's mass share, the next group's, the top score's z-score within
    the pool, the group's number of candidates)."""

    lat: float
    lon: float
    radius_m: float
    raw: float
    features: dict[str, float] = field(default_factory=dict)
    members: tuple[int, ...] = ()  # indices (into the inputs) of the group's candidates

    def feature_vector(self) -> list[float]:
        return [float(self.features[name]) for name in FEATURES]


def _radii(lat0: float) -> tuple[float, float]:
    """WGS84 radii of curvature at latitude lat0: (meridional M, prime vertical N), metres."""
    s2 = math.sin(math.radians(lat0)) ** 2
    w = 1.0 - WGS84_E2 * s2
    return WGS84_A * (1.0 - WGS84_E2) / w**1.5, WGS84_A / math.sqrt(w)


def local_xy(lats: np.ndarray, lons: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """(n, 2) east/north offsets in metres of points from (lat0, lon0): a local equirectangular
    projection with the ellipsoid's radii of curvature at lat0 (exact to about 1e-4 within a few km)."""
    m, n = _radii(lat0)
    lat_r, lon_r = np.radians(np.asarray(lats, float)), np.radians(np.asarray(lons, float))
    x = n * math.cos(math.radians(lat0)) * (lon_r - math.radians(lon0))
    y = m * (lat_r - math.radians(lat0))
    return np.stack([x, y], axis=1)


def from_local(x: float, y: float, lat0: float, lon0: float) -> tuple[float, float]:
    """The inverse of `local_xy` for one point: (lat, lon) in degrees."""
    m, n = _radii(lat0)
    return lat0 + math.degrees(y / m), lon0 + math.degrees(x / (n * math.cos(math.radians(lat0))))


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """exp(score / T), normalised to sum 1 (computed from the best score down: no overflow)."""
    s = np.asarray(scores, float)
    w = np.exp((s - s.max()) / temperature)
    return w / w.sum()


def mean_shift(
    xy: np.ndarray, w: np.ndarray, bandwidth: float, iters: int = 100, tol: float = 0.01
) -> np.ndarray:
    """The mode each point climbs to under the w-weighted Gaussian kernel density (n, 2).

    Computed in the log domain, so weights that underflow a plain product do not stall a point.
    """
    log_w = np.log(np.maximum(w, 1e-300))
    modes = xy.astype(float).copy()
    inv = 1.0 / (2.0 * bandwidth * bandwidth)
    for _ in range(iters):
        d2 = ((modes[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        logk = log_w[None, :] - d2 * inv
        logk -= logk.max(axis=1, keepdims=True)
        k = np.exp(logk)
        new = (k @ xy) / k.sum(axis=1, keepdims=True)
        shift = float(np.abs(new - modes).max())
        modes = new
        if shift < tol * bandwidth:
            break
    return modes


def group_modes(modes: np.ndarray, w: np.ndarray, radius: float) -> list[list[int]]:
    """Points whose modes lie within `radius` of a group's first mode form that group; groups are
    seeded in order of weight (heaviest point first) and returned heaviest group first."""
    order = np.argsort(-w, kind="stable")
    seeds: list[np.ndarray] = []
    groups: list[list[int]] = []
    for i in order:
        for g, seed in enumerate(seeds):
            if float(np.hypot(*(modes[i] - seed))) <= radius:
                groups[g].append(int(i))
                break
        else:
            seeds.append(modes[i])
            groups.append([int(i)])
    groups.sort(key=lambda members: -float(w[members].sum()))
    return groups


def estimate(
    lats: np.ndarray,
    lons: np.ndarray,
    scores: np.ndarray,
    tile_m: float,
    stride_m: float,
    params: EstimateParams | None = None,
) -> Estimate | None:
    """The consensus estimate of candidates (centres in degrees, scores best first or not).

    `tile_m`: the side of a tile in metres; `stride_m`: the distance between neighbouring tile
    centres. None when there is no candidate.
    """
    p = params or EstimateParams()
    lats, lons, scores = (np.asarray(a, float)[: p.pool] for a in (lats, lons, scores))
    if len(scores) == 0:
        return None
    top = int(np.argmax(scores))
    lat0, lon0 = float(lats[top]), float(lons[top])
    xy = local_xy(lats, lons, lat0, lon0)
    w = softmax_weights(scores, p.temperature)
    bandwidth = max(p.bandwidth_tiles * tile_m, 1e-6)
    modes = mean_shift(xy, w, bandwidth)
    groups = group_modes(modes, w, bandwidth / 2.0)
    best = groups[0]
    wb = w[best] / w[best].sum()
    centre = wb @ xy[best]
    spread = math.sqrt(float(wb @ ((xy[best] - centre) ** 2).sum(1)))
    radius = max(p.min_radius_strides * stride_m, p.spread_factor * spread)
    lat, lon = from_local(float(centre[0]), float(centre[1]), lat0, lon0)
    mass = float(w[best].sum())
    second = float(w[groups[1]].sum()) if len(groups) > 1 else 0.0
    sd = float(scores.std())
    z_top = float((scores.max() - scores.mean()) / sd) if sd > 0 else 0.0
    features = {"mass": mass, "second": second, "z_top": z_top, "members": float(len(best))}
    return Estimate(lat, lon, radius, mass, features, tuple(best))


def tile_grid(
    lats: np.ndarray, lons: np.ndarray, souths: np.ndarray, norths: np.ndarray, sample: int = 64
) -> tuple[float, float]:
    """(tile side, stride) in metres of a build's tiles: the median north-south extent of the
    bboxes, and the median distance from a sample of tiles to their nearest neighbour (the tile
    size when the build has a single tile)."""
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    m = _radii(float(np.mean(lats)))[0] if len(lats) else EARTH_RADIUS_M
    extent = np.radians(np.asarray(norths, float) - np.asarray(souths, float)) * m
    tile_m = float(np.median(extent)) if len(extent) else 0.0
    if len(lats) < 2:
        return tile_m, tile_m
    rng = np.random.default_rng(0)
    picks = rng.choice(len(lats), size=min(sample, len(lats)), replace=False)
    window = math.degrees(2.0 * max(tile_m, 1.0) / EARTH_RADIUS_M)
    nearest = []
    for i in picks:
        near = np.flatnonzero(
            (np.abs(lats - lats[i]) < window)
            & (np.abs(lons - lons[i]) < 2.0 * window / max(math.cos(math.radians(lats[i])), 1e-6))
        )
        near = near[near != i]
        if len(near):
            d = np.hypot(*local_xy(lats[near], lons[near], float(lats[i]), float(lons[i])).T)
            nearest.append(float(d.min()))
    return tile_m, float(np.median(nearest)) if nearest else tile_m
