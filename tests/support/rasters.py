"""GeoTIFFs generated with rasterio: a writer, random rasters, and stand-ins with the georeferencing
of the shared sample rasters (../shared/data/geotiff) for the tests whose point is not the real file.

The stand-ins copy each sample's CRS, size and geotransform (so tile counts and places are those of
the real file) and fill them with generated pixels: a smooth, varied scene plus noise, so that
neighbouring tiles look different.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

# Georeferencing of cogeo.tif: an aerial photo in Web Mercator (Korea), 0.597 m pixels, ~612 m wide.
MERCATOR_CRS = "EPSG:3857"
MERCATOR_SIZE = (1024, 1024)  # (height, width)
MERCATOR_PX = 0.5971640348434448
MERCATOR_TRANSFORM = Affine(MERCATOR_PX, 0.0, 14321853.115736904, 0.0, -MERCATOR_PX, 4533021.525424092)
# Georeferencing of RGB.byte.tif: a Landsat crop in UTM 18N, 300 m pixels, a rotated footprint with
# nodata (0) corners.
UTM_CRS = "EPSG:32618"
UTM_SIZE = (718, 791)
UTM_TRANSFORM = Affine(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0)
# Georeferencing of world.rgb.tif: the whole world in degrees (EPSG:4326), 0.703125 degree pixels.
DEGREES_CRS = "EPSG:4326"
DEGREES_SIZE = (256, 512)
DEGREES_TRANSFORM = Affine(0.703125, 0.0, -180.0, 0.0, -0.703125, 90.0)


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str | None,
    transform: Affine | None,
    nodata: float | None = None,
    **options: Any,
) -> Path:
    """Write (bands, h, w) `data` as a GeoTIFF (its dtype kept); `options` are creation options."""
    profile: dict[str, Any] = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rasters without CRS on purpose
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def random_pixels(bands: int, size: tuple[int, int], dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """(bands, h, w) uniform noise, never 0 (so that a nodata value of 0 marks nothing)."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == "uint8" else 4000
    return rng.integers(1, top, size=(bands, *size)).astype(dtype)


def scene_pixels(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(3, h, w) uint8 in 1..255: a few smooth colour waves at random scales plus fine noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((3, h, w), np.float32)
    for band in range(3):
        acc = np.zeros((h, w), np.float32)
        for _ in range(6):
            fy, fx = rng.uniform(0.5, 12.0, 2) / np.array([h, w])
            acc += np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
        out[band] = 128 + 18 * acc + rng.normal(0, 12, (h, w))
    return np.clip(out, 1, 255).astype(np.uint8)


def write_mercator_cog(path: Path, seed: int = 0) -> Path:
    """A Cloud-Optimized GeoTIFF like cogeo.tif: Web Mercator, 1024 x 1024 px of 0.597 m, 512 px
    JPEG/YCbCr blocks and internal overviews 2..64."""
    plain = path.with_name(path.stem + ".plain.tif")
    write_geotiff(plain, scene_pixels(MERCATOR_SIZE, seed), MERCATOR_CRS, MERCATOR_TRANSFORM)
    rasterio.shutil.copy(
        plain,
        path,
        driver="COG",
        compress="JPEG",
        blocksize=512,
        overview_resampling="average",
        overview_count=6,
    )
    plain.unlink()
    return path


def write_utm_with_nodata(path: Path, seed: int = 0, angle_deg: float = 12.0) -> Path:
    """A raster like RGB.byte.tif: UTM 18N, 791 x 718 px of 300 m, nodata 0 outside a rectangle
    turned by `angle_deg` (the rotated footprint of a Landsat scene)."""
    h, w = UTM_SIZE
    data = scene_pixels(UTM_SIZE, seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.radians(angle_deg)
    dx, dy = xx - w / 2, yy - h / 2
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    outside = (np.abs(u) > 0.40 * w) | (np.abs(v) > 0.40 * h)
    data[:, outside] = 0
    return write_geotiff(path, data, UTM_CRS, UTM_TRANSFORM, nodata=0)


def write_world_degrees(path: Path, seed: int = 0) -> Path:
    """A raster like world.rgb.tif: the whole world in EPSG:4326, 512 x 256 px of 0.703125 degrees."""
    return write_geotiff(path, scene_pixels(DEGREES_SIZE, seed), DEGREES_CRS, DEGREES_TRANSFORM)
