"""The orthophoto: the world's top surface lit by the sun, with cast shadows; GeoTIFF output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from synth.world import World

AMBIENT_RGB = np.array([0.50, 0.54, 0.62], dtype=np.float32)  # sky light, bluish in shadows
DIRECT_RGB = np.array([0.80, 0.76, 0.68], dtype=np.float32)  # warm sunlight


def _shift(a: np.ndarray, du: int, dv: int, fill: float) -> np.ndarray:
    """out[v, u] = a[v + dv, u + du], `fill` where that falls outside."""
    out = np.full_like(a, fill)
    rows, cols = a.shape
    if abs(du) >= cols or abs(dv) >= rows:
        return out
    dst_r = slice(max(-dv, 0), rows - max(dv, 0))
    src_r = slice(max(dv, 0), rows - max(-dv, 0))
    dst_c = slice(max(-du, 0), cols - max(du, 0))
    src_c = slice(max(du, 0), cols - max(-du, 0))
    out[dst_r, dst_c] = a[src_r, src_c]
    return out


def cast_shadows(height: np.ndarray, gsd_m: float, sun_az_deg: float, sun_el_deg: float) -> np.ndarray:
    """Shadow strength (S, S) float32 in 0..1 of a height field (metres) under the sun.

    A point is in shadow when some point towards the sun, k pixels away, rises above the sun ray:
    h(p + k d) - k |d| gsd tan(el) > h(p). The maximum over k = 1..2^n is built by doubling,
    so n full-raster passes cover shadows 2^n pixels long.
    """
    az = math.radians(sun_az_deg)
    step = np.array([math.sin(az), -math.cos(az)])  # towards the sun in (u, v) pixels
    step /= np.abs(step).max()
    tan_el = math.tan(math.radians(sun_el_deg))
    reach_px = float(height.max()) / tan_el / gsd_m + 2
    best = np.full_like(height, -1e6)  # max over k in [1, 2^j] of h(p + k d) - drop_k
    span = 1
    first = True
    while span <= 2 * reach_px:
        du, dv = (int(round(c * span)) for c in step)
        drop = np.float32(math.hypot(du, dv) * gsd_m * tan_el)
        if first:
            best = _shift(height, du, dv, -1e6) - drop
            first = False
        else:
            np.maximum(best, _shift(best, du, dv, -1e6) - drop, out=best)
        span *= 2
    return np.clip((best - height) / 0.4, 0.0, 1.0).astype(np.float32)


def lambert(height: np.ndarray, gsd_m: float, sun: np.ndarray) -> np.ndarray:
    """Cosine of the sun's incidence on the height field's surface (S, S), at least 0."""
    dv, du = np.gradient(height, gsd_m)
    np.clip(du, -2.5, 2.5, out=du)
    np.clip(dv, -2.5, 2.5, out=dv)
    dot = -du * sun[0] - dv * sun[1] + sun[2]
    return np.clip(dot / np.sqrt(du * du + dv * dv + 1.0), 0.0, 1.0).astype(np.float32)


def render_ortho(world: World) -> np.ndarray:
    """The lit orthophoto (S, S, 3) uint8 RGB: albedo x (ambient + direct x cos x no-shadow)."""
    gsd = world.frame.gsd_m
    light = lambert(world.height, gsd, world.sun_vector)
    light *= 1.0 - cast_shadows(world.height, gsd, world.sun_az_deg, world.sun_el_deg)
    out = np.empty(world.albedo.shape, dtype=np.uint8)
    for c in range(3):  # per channel keeps the float temporaries at one raster
        lit = world.albedo[..., c] * (AMBIENT_RGB[c] + DIRECT_RGB[c] * light)
        out[..., c] = np.clip(lit * 1.25, 0, 255)
    return out


def write_geotiff(path: Path, rgb: np.ndarray, world: World) -> None:
    """Write `rgb` (S, S, 3) uint8 as a tiled (256 px), JPEG-compressed GeoTIFF in the world's UTM
    zone, with internal overviews (2x .. 16x)."""
    frame = world.frame
    profile = {
        "driver": "GTiff",
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "count": 3,
        "dtype": "uint8",
        "crs": frame.crs,
        "transform": frame.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "JPEG",
        "photometric": "YCBCR",
        "jpeg_quality": 92,
        "interleave": "pixel",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, 2, 0))
        factors = [f for f in (2, 4, 8, 16) if min(rgb.shape[:2]) // f >= 64]
        if factors:
            dst.build_overviews(factors, Resampling.average)
        dst.update_tags(ns="rio_overview", resampling="average")
        dst.update_tags(SYNTH_SEED=str(world.seed), ORIGIN_LAT_LON=f"{frame.origin_lat},{frame.origin_lon}")
