"""A tile's imagery as PNG: a windowed read of its source raster (or its pre-cut image file)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from service.catalog import TileRecord
from service.errors import TileSourceMissing

log = logging.getLogger(__name__)


def _to_uint8_rgb(bands: np.ndarray) -> np.ndarray:
    """(c, h, w) raster bands -> (h, w, 3) uint8 RGB; 1 band becomes grey, others are stretched."""
    rgb = np.repeat(bands[:1], 3, axis=0) if bands.shape[0] < 3 else bands[:3]
    if rgb.dtype != np.uint8:
        # 16-bit or float imagery: a 2-98 percentile stretch keeps the preview readable.
        lo, hi = np.percentile(rgb, (2, 98)) if rgb.size else (0.0, 1.0)
        rgb = np.clip((rgb.astype(np.float32) - lo) / max(float(hi - lo), 1e-6) * 255.0, 0, 255)
    return np.ascontiguousarray(rgb.astype(np.uint8).transpose(1, 2, 0))


def read_window_rgb(tile: TileRecord, size_px: int) -> np.ndarray:
    """The tile's pixel window of its source raster, resampled to (size_px, size_px, 3) uint8."""
    assert tile.col_off is not None and tile.row_off is not None
    assert tile.width is not None and tile.height is not None
    window = Window(tile.col_off, tile.row_off, tile.width, tile.height)
    with rasterio.open(tile.source) as src:
        indexes = [1, 2, 3] if src.count >= 3 else [1]
        # boundless: a tile overhanging the raster edge reads nodata/zeros there instead of failing.
        bands = src.read(
            indexes,
            window=window,
            out_shape=(len(indexes), size_px, size_px),
            resampling=Resampling.average,
            boundless=True,
            fill_value=0,
        )
    return _to_uint8_rgb(bands)


def read_precut_rgb(tile: TileRecord, size_px: int) -> np.ndarray:
    """A pre-cut tile's own image file, resized to (size_px, size_px, 3) uint8."""
    bgr = cv2.imread(tile.source, cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError("not a readable image")
    bgr = cv2.resize(bgr, (size_px, size_px), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def render_tile_png(tile: TileRecord, size_px: int) -> bytes:
    """PNG bytes of the tile; TileSourceMissing (404) when its source is gone or unreadable."""
    # Public messages name the file, never the server's folders (the log has the full path).
    name = Path(tile.source).name
    if not Path(tile.source).exists():
        log.warning("tile %d: source %s no longer exists", tile.id, tile.source)
        raise TileSourceMissing(f"tile {tile.id}: its source {name} no longer exists")
    try:
        rgb = read_precut_rgb(tile, size_px) if tile.is_precut else read_window_rgb(tile, size_px)
    except (RasterioError, OSError) as exc:
        log.warning("tile %d: source %s cannot be read: %s", tile.id, tile.source, exc)
        raise TileSourceMissing(f"tile {tile.id}: its source {name} cannot be read") from exc
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise TileSourceMissing(f"tile {tile.id}: could not encode the image")
    return png.tobytes()
