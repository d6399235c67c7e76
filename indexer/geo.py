"""Ground geometry of tiles in any CRS: local metre scales and footprints in lon/lat.

A CRS unit is not a ground metre in general: Web Mercator metres shrink by cos(lat) on the
ground, UTM metres by the zone's scale factor (0.9996 on the central meridian), and a degree of
longitude spans 111 km * cos(lat). Rather than special-casing each, the scale is measured at the
tile centre: both axes are stepped by a small amount in the source CRS and the ground distance
of that step is taken on the WGS84 ellipsoid (pyproj.Geod). This is exact to first order for
every CRS, conformal or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyproj import CRS, Geod, Transformer

WGS84 = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Footprint:
    """Where a tile lies on Earth. lat/lon in degrees (EPSG:4326); bbox = [west, south, east, north];
    ring = closed counter-clockwise exterior ring of [lon, lat] pairs (RFC 7946)."""

    lat: float
    lon: float
    west: float
    south: float
    east: float
    north: float
    ring: tuple[tuple[float, float], ...]

    def geojson(self) -> str:
        """The footprint as a GeoJSON Polygon geometry (text), coordinates [lon, lat]."""
        return json.dumps({"type": "Polygon", "coordinates": [[list(p) for p in self.ring]]})

    def columns(self) -> dict[str, Any]:
        """The Tile columns this footprint fills."""
        return {
            "lat": self.lat,
            "lon": self.lon,
            "west": self.west,
            "south": self.south,
            "east": self.east,
            "north": self.north,
            "footprint": self.geojson(),
        }


class GroundFrame:
    """Converts between a source CRS and the ground: metre scales and lon/lat footprints."""

    def __init__(self, crs: CRS | str) -> None:
        self.crs = CRS.from_user_input(crs)
        # always_xy: x = easting/longitude, y = northing/latitude, whatever the CRS's axis order.
        self._to_lonlat = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)

    def lonlat(self, x: float, y: float) -> tuple[float, float]:
        """(lon, lat) in degrees of the CRS point (x, y)."""
        lon, lat = self._to_lonlat.transform(x, y)
        return float(lon), float(lat)

    def metres_per_unit(self, x: float, y: float, step: float) -> tuple[float, float]:
        """Ground metres per CRS unit along x and along y at (x, y) (central differences of `step`)."""
        h = abs(step) / 2.0
        return self._ground(x - h, y, x + h, y) / (2 * h), self._ground(x, y - h, x, y + h) / (2 * h)

    def _ground(self, x0: float, y0: float, x1: float, y1: float) -> float:
        lon0, lat0 = self.lonlat(x0, y0)
        lon1, lat1 = self.lonlat(x1, y1)
        return float(WGS84.inv(lon0, lat0, lon1, lat1)[2])

    def footprint(self, x0: float, y0: float, x1: float, y1: float) -> Footprint:
        """Footprint of the CRS rectangle x0..x1 (west to east), y0..y1 (south to north)."""
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        ring = [self.lonlat(x, y) for x, y in corners]
        ring.append(ring[0])
        lon, lat = self.lonlat((x0 + x1) / 2, (y0 + y1) / 2)
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        return Footprint(lat, lon, min(lons), min(lats), max(lons), max(lats), tuple(ring))


def square_around(lat: float, lon: float, size_m: float) -> Footprint:
    """North-up square of side `size_m` metres centred at (lat, lon): pre-cut tiles' footprint."""
    frame = GroundFrame("EPSG:4326")
    mx, my = frame.metres_per_unit(lon, lat, 1e-4)
    half_lon, half_lat = size_m / 2 / mx, size_m / 2 / my
    return frame.footprint(lon - half_lon, lat - half_lat, lon + half_lon, lat + half_lat)
