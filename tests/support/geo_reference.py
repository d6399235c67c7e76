"""Reference values for the dataset galleries, computed without the project's code: a textbook
inverse transverse Mercator (UTM) and the datasets' published ground resolutions."""

from __future__ import annotations

import math

# Metres per pixel of VIGOR's 640 px tiles as measured per city by SliceMatch (Lentsch et al.,
# CVPR 2023, the corrected VIGOR labels), which the published metre-level loaders use.
SLICEMATCH_M_PER_PX = {
    "NewYork": 0.113248,
    "Seattle": 0.100817,
    "SanFrancisco": 0.118141,
    "Chicago": 0.111262,
}
# CVACT: the dataset author's ground resolution at lat -35.204202 (zoom 20, 0.1219 m), with the
# 2x upsampling of the Google API download: 0.1219 / 2 m per pixel of a 1200 px tile
# (OriCNN issue #5); the cosine of latitude carries it to other latitudes.
CVACT_AUTHOR_GSD = (0.1219 / 2, -35.204202)


def snyder_utm_inverse(easting: float, northing: float, zone: int, south: bool) -> tuple[float, float]:
    """(lat, lon) degrees of a WGS 84 UTM position: Snyder, Map Projections - A Working Manual
    (USGS PP 1395, 1987), equations 8-18 to 8-25 (accurate to well under a metre in a zone)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = easting - 500000.0
    y = northing - (10_000_000.0 if south else 0.0)
    m = y / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    c1, t1 = ep2 * c * c, t * t
    n1 = a / math.sqrt(1 - e2 * s * s)
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    phi = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lam = (
        d
        - (1 + 2 * t1 + c1) * d**3 / 6
        + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    lon0 = -183.0 + 6.0 * zone
    return math.degrees(phi), lon0 + math.degrees(lam)
