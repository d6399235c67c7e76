"""Placing the synthetic world on Earth: UTM zone, raster grid and lat/lon conversions.

The world is an axis-aligned square in the UTM zone of its origin, centred on the origin.
Pixel coordinates are continuous: pixel (col, row) covers [col, col+1) x [row, row+1), row 0 is
the northern edge. The world's own metric frame is (u east, v south) in metres from the
north-west corner, i.e. u = col * gsd_m, v = row * gsd_m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine

DEFAULT_ORIGIN = (47.37, 8.54)  # lat, lon: Zurich, Switzerland (UTM zone 32N)


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the standard UTM zone holding (lat, lon): 326zz north, 327zz south.

    The Norway/Svalbard zone exceptions are not applied.
    """
    if not (-80.0 <= lat <= 84.0):
        raise ValueError(f"latitude {lat} is outside the UTM range -80..84 degrees")
    if not (-180.0 <= lon <= 180.0):
        raise ValueError(f"longitude {lon} is outside -180..180 degrees")
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def parse_origin(text: str) -> tuple[float, float]:
    """Parse "LAT,LON" (decimal degrees) into (lat, lon), with a clear error on bad input."""
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--origin must be LAT,LON in decimal degrees, got {text!r}") from None
    utm_epsg(lat, lon)
    return lat, lon


@dataclass(frozen=True)
class WorldFrame:
    """The raster grid of a world: origin (lat, lon) at the centre, square of extent_m."""

    origin_lat: float
    origin_lon: float
    extent_m: float
    gsd_m: float

    @cached_property
    def epsg(self) -> int:
        return utm_epsg(self.origin_lat, self.origin_lon)

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)

    @property
    def size_px(self) -> int:
        """Side of the square raster in pixels."""
        return int(round(self.extent_m / self.gsd_m))

    @cached_property
    def _to_utm(self) -> Transformer:
        return Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)

    @cached_property
    def _to_lonlat(self) -> Transformer:
        return Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)

    @cached_property
    def west_north(self) -> tuple[float, float]:
        """UTM easting of the western edge and northing of the northern edge, snapped to the GSD."""
        east, north = self._to_utm.transform(self.origin_lon, self.origin_lat)
        half = self.size_px * self.gsd_m / 2.0
        west = round((east - half) / self.gsd_m) * self.gsd_m
        top = round((north + half) / self.gsd_m) * self.gsd_m
        return float(west), float(top)

    @property
    def transform(self) -> Affine:
        west, top = self.west_north
        return Affine(self.gsd_m, 0.0, west, 0.0, -self.gsd_m, top)

    def pixel_to_lonlat(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates (n,) -> (lon, lat) (n,) in degrees."""
        west, top = self.west_north
        east = west + np.asarray(col, dtype=np.float64) * self.gsd_m
        north = top - np.asarray(row, dtype=np.float64) * self.gsd_m
        lon, lat = self._to_lonlat.transform(east, north)
        return np.asarray(lon), np.asarray(lat)

    @cached_property
    def true_north_grid_deg(self) -> float:
        """Azimuth of true north measured clockwise from grid north (UTM meridian convergence).

        A true azimuth A points along grid azimuth A + this angle.
        """
        e0, n0 = self._to_utm.transform(self.origin_lon, self.origin_lat)
        e1, n1 = self._to_utm.transform(self.origin_lon, self.origin_lat + 1e-3)
        return math.degrees(math.atan2(e1 - e0, n1 - n0))
