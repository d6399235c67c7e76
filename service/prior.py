"""A search prior: where the photo is known to have been taken, roughly (a phone's coarse GPS, a
known city). `/localize?near=LAT,LON&radius_m=R` or `?bbox=W,S,E,N`, and `cvm localize --near /
--radius-m / --bbox`.

A tile is inside the prior when its centre is: within `radius_m` metres of `near` (great-circle
distance on a sphere of the Earth's mean radius, within 0.5 % of the ellipsoid's), or inside the
box (west <= lon <= east, south <= lat <= north; a box across the antimeridian is not supported:
give two requests). The search then ranks only those tiles (`IndexSnapshot.search`, `allowed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.metrics import EARTH_RADIUS_M, M_PER_DEG_LAT, haversine_m
from service.errors import BadPrior

# Half the Earth's circumference: a circle this wide already holds every point of the globe.
MAX_RADIUS_M = math.pi * EARTH_RADIUS_M
# What the two parameters look like (a number, a comma, a number...); ranges are checked after.
_NUMBER = r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*"
NEAR_PATTERN = rf"^{_NUMBER},{_NUMBER}$"
BBOX_PATTERN = rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$"


@dataclass(frozen=True)
class Prior:
    """A circle (lat, lon, radius_m) or a box (west, south, east, north), degrees and metres."""

    near: tuple[float, float] | None = None
    radius_m: float | None = None
    bbox: tuple[float, float, float, float] | None = None

    def contains(self, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
        """Boolean mask of the points (degrees) inside the prior."""
        if self.bbox is not None:
            w, s, e, n = self.bbox
            return (lons >= w) & (lons <= e) & (lats >= s) & (lats <= n)
        assert self.near is not None and self.radius_m is not None
        return great_circle_m(self.near[0], self.near[1], lats, lons) <= self.radius_m

    def lat_band(self) -> tuple[float, float]:
        """(south, north) degrees holding every point inside the prior: the box's, or the
        circle's (a great circle is at least as long as the difference of latitude it spans),
        widened by a hair against rounding."""
        if self.bbox is not None:
            return self.bbox[1], self.bbox[3]
        assert self.near is not None and self.radius_m is not None
        half = self.radius_m / M_PER_DEG_LAT * (1 + 1e-9) + 1e-9
        return self.near[0] - half, self.near[0] + half

    def lon_window(self) -> tuple[float, float] | None:
        """(centre, half width) in degrees of longitude holding every point of a circle that
        reaches no pole: asin(sin d / cos lat) for an angular radius d (the circle's tangent
        meridians), widened by a hair against rounding; None for a box or a circle around a pole."""
        if self.bbox is not None:
            return None
        assert self.near is not None and self.radius_m is not None
        angle = self.radius_m / EARTH_RADIUS_M
        lat = math.radians(abs(self.near[0]))
        if angle >= math.pi / 2 - lat:
            return None
        half = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(lat))))
        return self.near[1], half * (1 + 1e-9) + 1e-9

    def describe(self) -> str:
        if self.bbox is not None:
            return "bbox " + ",".join(f"{v:g}" for v in self.bbox)
        assert self.near is not None
        return f"{self.radius_m:g} m around {self.near[0]:g},{self.near[1]:g}"


def great_circle_m(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Haversine distance in metres from (lat, lon) to each point (degrees)."""
    return np.asarray(haversine_m(np.asarray(lat, float), np.asarray(lon, float), lats, lons))


def parse_prior(near: str | None, radius_m: float | None, bbox: str | None) -> Prior | None:
    """The prior of the request's parameters, None without any; BadPrior (422) names what is wrong."""
    if near is None and bbox is None:
        if radius_m is not None:
            raise BadPrior("radius_m is given without near: give near=LAT,LON with it")
        return None
    if near is not None and bbox is not None:
        raise BadPrior("give either near=LAT,LON&radius_m=R or bbox=W,S,E,N, not both")
    if bbox is not None:
        if radius_m is not None:
            raise BadPrior("radius_m goes with near=LAT,LON, not with bbox")
        w, s, e, n = _numbers("bbox", bbox, 4, "W,S,E,N")
        for name, lon in (("west", w), ("east", e)):
            _check_range(f"bbox {name}", lon, 180.0)
        for name, lat in (("south", s), ("north", n)):
            _check_range(f"bbox {name}", lat, 90.0)
        if w >= e:
            raise BadPrior(
                f"bbox west ({w:g}) must be less than east ({e:g}); a box across the antimeridian "
                "is not supported"
            )
        if s >= n:
            raise BadPrior(f"bbox south ({s:g}) must be less than north ({n:g})")
        return Prior(bbox=(w, s, e, n))
    assert near is not None
    lat, lon = _numbers("near", near, 2, "LAT,LON")
    _check_range("near latitude", lat, 90.0)
    _check_range("near longitude", lon, 180.0)
    if radius_m is None:
        raise BadPrior("near needs radius_m (metres) with it")
    if not (math.isfinite(radius_m) and 0 < radius_m <= MAX_RADIUS_M):
        raise BadPrior(
            f"radius_m must be > 0 and at most {MAX_RADIUS_M:.0f} (half the Earth's circumference)"
        )
    return Prior(near=(lat, lon), radius_m=float(radius_m))


def _numbers(name: str, text: str, count: int, form: str) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or len(parts) != count or not all(math.isfinite(v) for v in values):
        raise BadPrior(f"{name} must be {form} ({count} finite numbers separated by commas), got {text!r}")
    return values


def _check_range(name: str, value: float, limit: float) -> None:
    if not -limit <= value <= limit:
        raise BadPrior(f"{name} {value:g} is out of range [-{limit:g}, {limit:g}]")
