"""The overview of a build: one downsampled image of its imagery, for the map page's basemap.

`cvm-index build` writes it into the build folder when it publishes the index (indexer.overview);
the service serves it (GET /builds/{id}/overview.png). Two files:

  overview.png   RGBA, at most OVERVIEW_MAX_PX pixels on its long side, in Web Mercator
                 (EPSG:3857) with square pixels, north up; alpha 0 where no source has data;
  overview.json  its size and bounds: `bounds` [west, south, east, north] in degrees (the corners
                 of the PNG, so a Leaflet ImageOverlay over them lines up exactly: Web Mercator
                 maps a longitude range and a latitude range to the image's columns and rows
                 independently), `mercator_bounds` the same in EPSG:3857 metres, and the sources'
                 file names (never their folders).

A build without these files (an older build, or one of pre-cut tiles only) has no overview.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

log = logging.getLogger(__name__)

OVERVIEW_PNG = "overview.png"
OVERVIEW_JSON = "overview.json"
OVERVIEW_MAX_PX = 2048
WEB_MERCATOR = "EPSG:3857"
# Web Mercator's latitude limit (the square world of web maps).
MAX_LAT = 85.0511287798


@dataclass(frozen=True)
class OverviewSource:
    """A raster to draw: its 1-based R, G, B bands and, for rasters that are not 8-bit, each
    band's (low, high) values mapped to 0..255 (as the indexer reads the raster's tiles)."""

    path: str
    bands: tuple[int, int, int] = (1, 2, 3)
    stretch: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Overview:
    """What overview.json records."""

    width: int
    height: int
    bounds: tuple[float, float, float, float]  # west, south, east, north, degrees
    mercator_bounds: tuple[float, float, float, float]  # the same in EPSG:3857 metres
    sources: tuple[str, ...]  # file names

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "png",
            "crs": WEB_MERCATOR,
            "width": self.width,
            "height": self.height,
            "bounds": list(self.bounds),
            "mercator_bounds": list(self.mercator_bounds),
            "sources": list(self.sources),
        }


def _mercator_bounds(ds: Any) -> tuple[float, float, float, float]:
    """A dataset's bounds in EPSG:3857, latitudes clipped to Web Mercator's limit."""
    west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    south, north = max(south, -MAX_LAT), min(north, MAX_LAT)
    return transform_bounds("EPSG:4326", WEB_MERCATOR, west, south, east, north, densify_pts=21)


def _to_uint8(data: np.ndarray, stretch: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, (lo, hi) in enumerate(stretch):
        scaled = (data[i].astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
        out[i] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
    return out


def _draw(ds: Any, source: OverviewSource, dst: np.ndarray, dst_transform: Affine, res: float) -> None:
    """Warp one source onto `dst` ((4, h, w) RGBA), over what earlier sources drew."""
    # Read at about twice the overview's resolution (GDAL averages, from internal overviews when
    # the file has them), then warp with averaging: a large raster is never read into memory whole.
    merc = _mercator_bounds(ds)
    native = min((merc[2] - merc[0]) / ds.width, (merc[3] - merc[1]) / ds.height)
    factor = max(1, int(res / max(native, 1e-9) / 2))
    out_w, out_h = max(1, math.ceil(ds.width / factor)), max(1, math.ceil(ds.height / factor))
    rgb = ds.read(list(source.bands), out_shape=(3, out_h, out_w), resampling=Resampling.average)
    mask = ds.dataset_mask(out_shape=(out_h, out_w))
    src = np.concatenate([_to_uint8(rgb, source.stretch), mask[None].astype(np.uint8)])
    src_transform = ds.transform @ Affine.scale(ds.width / out_w, ds.height / out_h)
    layer = np.zeros_like(dst)
    reproject(
        src,
        layer,
        src_transform=src_transform,
        src_crs=ds.crs,
        dst_transform=dst_transform,
        dst_crs=WEB_MERCATOR,
        resampling=Resampling.average if factor > 1 or native < res else Resampling.nearest,
    )
    covered = layer[3] > 0
    dst[:, covered] = layer[:, covered]


def write_overview(
    folder: Path, sources: Sequence[OverviewSource], max_px: int = OVERVIEW_MAX_PX
) -> Overview | None:
    """Write overview.png and overview.json of `sources` into `folder`; None (nothing written)
    without sources. The pixels are as fine as the finest source's, and at most `max_px` on the
    long side. Each file is written under a temporary name and renamed."""
    if not sources:
        return None
    opened = [rasterio.open(s.path) for s in sources]
    try:
        extents = [_mercator_bounds(ds) for ds in opened]
        west = min(e[0] for e in extents)
        south = min(e[1] for e in extents)
        east = max(e[2] for e in extents)
        north = max(e[3] for e in extents)
        native = min(
            min((e[2] - e[0]) / ds.width, (e[3] - e[1]) / ds.height)
            for e, ds in zip(extents, opened, strict=True)
        )
        res = max(native, (east - west) / max_px, (north - south) / max_px)
        width = max(1, min(max_px, math.ceil((east - west) / res - 1e-3)))
        height = max(1, min(max_px, math.ceil((north - south) / res - 1e-3)))
        # The pixel grid decides the corners: east and south follow from the size (a thousandth of
        # a pixel of rounding in the bounds does not add a column).
        east, south = west + width * res, north - height * res
        dst_transform = Affine(res, 0.0, west, 0.0, -res, north)
        rgba = np.zeros((4, height, width), dtype=np.uint8)
        for ds, source in zip(opened, sources, strict=True):
            _draw(ds, source, rgba, dst_transform, res)
    finally:
        for ds in opened:
            ds.close()
    lon_w, lat_s, lon_e, lat_n = transform_bounds(WEB_MERCATOR, "EPSG:4326", west, south, east, north)
    overview = Overview(
        width=width,
        height=height,
        bounds=(round(lon_w, 9), round(lat_s, 9), round(lon_e, 9), round(lat_n, 9)),
        mercator_bounds=(west, south, east, north),
        sources=tuple(Path(s.path).name for s in sources),
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp_png = folder / f".{OVERVIEW_PNG}.tmp"
    Image.fromarray(np.ascontiguousarray(rgba.transpose(1, 2, 0)), "RGBA").save(tmp_png, format="PNG")
    os.replace(tmp_png, folder / OVERVIEW_PNG)
    tmp_json = folder / f".{OVERVIEW_JSON}.tmp"
    tmp_json.write_text(json.dumps(overview.to_json(), indent=1))
    os.replace(tmp_json, folder / OVERVIEW_JSON)
    return overview


def read_overview(folder: Path) -> Overview | None:
    """The overview of a build folder, or None when it has none (or an unreadable one, logged)."""
    meta_path, png_path = folder / OVERVIEW_JSON, folder / OVERVIEW_PNG
    if not meta_path.is_file() or not png_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        bounds = tuple(float(v) for v in meta["bounds"])
        merc = tuple(float(v) for v in meta["mercator_bounds"])
        if len(bounds) != 4 or len(merc) != 4:
            raise ValueError("bounds need 4 numbers")
        return Overview(
            width=int(meta["width"]),
            height=int(meta["height"]),
            bounds=bounds,  # type: ignore[arg-type]
            mercator_bounds=merc,  # type: ignore[arg-type]
            sources=tuple(str(s) for s in meta.get("sources", ())),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable overview, ignored: %s", meta_path, exc)
        return None
