"""Tiles: a metric grid over each raster (or pre-cut tile images), and reading one tile's chip.

Grid: rows and columns of `size_m` x `size_m` ground squares every `stride_m` metres, starting at
the raster's top-left corner; only whole tiles inside the raster are kept. The local metre scale
(indexer.geo) is measured at each row, so Web Mercator and degree rasters get true ground sizes.
Tiles follow the CRS's grid north (exact for Mercator and geographic rasters; in UTM, grid north
differs from true north by the meridian convergence, at most a few degrees).

Reading: tiles are read through pixel windows (`ChipReader.read_row`): a tile much larger than the
model input on its own with out_shape = the input size, so GDAL uses overviews; smaller ones cut
from one native-resolution read of the band of rows of their tile row. The whole raster is never
loaded.
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from indexer.errors import InputRejected
from indexer.geo import GroundFrame, square_around
from indexer.sources import RasterInfo, to_uint8

# Tolerance (pixels) for a tile edge landing on the raster edge through float rounding.
EDGE_EPS_PX = 1e-6
# Fewest source pixels across a tile: a raster with coarser pixels is skipped (check_resolution).
MIN_TILE_PX = 32


def plan_raster(info: RasterInfo, size_m: float, stride_m: float) -> Iterator[dict[str, Any]]:
    """Tile rows (dicts of Tile columns, without id/build_id) of one raster, row-major from the
    top-left. A generator: tiles are laid out as they are consumed, never all held at once."""
    frame = GroundFrame(info.crs)
    for y_c, half_w, half_h, mx, my in _grid_rows(info, frame, size_m, stride_m):
        for x_c in _grid_columns(info, half_w, stride_m / mx):
            yield _raster_row(info, frame, (x_c, y_c, half_w, half_h), size_m, (mx, my))


def count_raster(
    info: RasterInfo, size_m: float, stride_m: float, on_row: Callable[[int], Any] | None = None
) -> int:
    """How many tiles `plan_raster` lays out, without computing their footprints (the same grid);
    `on_row(n)` is called with the tile count of each tile row (progress)."""
    frame = GroundFrame(info.crs)
    total = 0
    for _, half_w, _, mx, _ in _grid_rows(info, frame, size_m, stride_m):
        n = sum(1 for _ in _grid_columns(info, half_w, stride_m / mx))
        total += n
        if on_row is not None:
            on_row(n)
    return total


def _grid_rows(
    info: RasterInfo, frame: GroundFrame, size_m: float, stride_m: float
) -> Iterator[tuple[float, float, float, float, float]]:
    """(y_c, half_w, half_h, mx, my) of each tile row, top to bottom: its centre y, the half
    sizes of its tiles in CRS units and the local metres per CRS unit along x and y."""
    a, _, c, _, e, f = info.transform
    top, bottom = f, f + e * info.height
    x_mid = (c + (c + a * info.width)) / 2
    # scales are sampled 1/200 pixel around a point, so a point 1/100 pixel inside the raster
    # never samples beyond it (e.g. past the pole of a world raster)
    y_c = top + e / 100
    for _ in range(3):  # fixed point: the first row's top edge on the raster's top edge
        _, my = _scale(frame, info, x_mid, y_c)
        y_c = top - size_m / my / 2
    while y_c + e / 100 > bottom:
        mx, my = _scale(frame, info, x_mid, y_c)
        half_w, half_h = size_m / mx / 2, size_m / my / 2
        if (y_c - half_h - bottom) / -e < -EDGE_EPS_PX:
            return
        yield y_c, half_w, half_h, mx, my
        y_c -= stride_m / my


def _grid_columns(info: RasterInfo, half_w: float, step: float) -> Iterator[float]:
    """Centre x of each whole tile of a tile row, left to right, `step` CRS units apart."""
    a, c = info.transform[0], info.transform[2]
    right = c + a * info.width
    x_c = c + half_w
    while (right - (x_c + half_w)) / a >= -EDGE_EPS_PX:
        yield x_c
        x_c += step


def tile_pixels(info: RasterInfo, size_m: float) -> tuple[float, float]:
    """(source pixels across a `size_m` tile, ground metres per pixel), measured at the raster's
    centre (the mean of the two axes, as a tile's `gsd_m`)."""
    a, _, c, _, e, f = info.transform
    mx, my = _scale(GroundFrame(info.crs), info, c + a * info.width / 2, f + e * info.height / 2)
    gsd = (a * mx + -e * my) / 2
    return size_m / gsd, gsd


def check_resolution(info: RasterInfo, size_m: float, min_px: int = MIN_TILE_PX) -> None:
    """Refuse a raster whose pixels are too coarse for the tile size: fewer than `min_px` pixels
    across a tile would make a tile of a handful of pixels, and the grid of such a raster (tiles
    every few metres over pixels of hundreds) runs to millions of tiles of nothing."""
    px, gsd = tile_pixels(info, size_m)
    if px < min_px:
        raise InputRejected(
            f"{info.path}: pixels of {gsd:.3g} m are too coarse for {size_m:g} m tiles ({px:.2g} "
            f"pixels across a tile, at least {min_px} needed); give --tile-size-m "
            f"{math.ceil(min_px * gsd)} or more, or finer imagery"
        )


def _scale(frame: GroundFrame, info: RasterInfo, x: float, y: float) -> tuple[float, float]:
    mx, my = frame.metres_per_unit(x, y, info.transform[0] / 100)
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        raise InputRejected(f"{info.path}: cannot measure ground distances at {x}, {y} in {info.crs}")
    return mx, my


def _raster_row(
    info: RasterInfo,
    frame: GroundFrame,
    box: tuple[float, float, float, float],
    size_m: float,
    scale: tuple[float, float],
) -> dict[str, Any]:
    x_c, y_c, half_w, half_h = box
    a, _, c, _, e, f = info.transform
    col_off = max(0.0, (x_c - half_w - c) / a)
    row_off = max(0.0, (y_c + half_h - f) / e)
    width = min(2 * half_w / a, info.width - col_off)
    height = min(2 * half_h / -e, info.height - row_off)
    # the footprint is that of the window actually read (clamping moves it by float noise only)
    x0, y1 = c + a * col_off, f + e * row_off
    fp = frame.footprint(x0, y1 + e * height, x0 + a * width, y1)
    return {
        "source": info.path,
        "col_off": col_off,
        "row_off": row_off,
        "width": width,
        "height": height,
        "crs": info.crs,
        # metres per source pixel on the ground, mean of the two axes
        "gsd_m": (a * scale[0] + -e * scale[1]) / 2,
        "size_m": size_m,
        **fp.columns(),
    }


@dataclass(frozen=True)
class CsvPlan:
    rows: list[dict[str, Any]]
    rejected: list[tuple[str, str]]


def plan_csv(csv_path: str) -> CsvPlan:
    """Tile rows of a pre-cut tile list (columns path,lat,lon,size_m; paths relative to the CSV).

    Rows with a missing image or bad numbers are rejected (with the reason); the rest are kept.
    """
    path = Path(csv_path).expanduser().resolve()
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "lat", "lon", "size_m"} - set(reader.fieldnames or [])
            if missing:
                raise InputRejected(f"{path}: tile list lacks column(s) {', '.join(sorted(missing))}")
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputRejected(f"{path}: cannot read tile list ({exc})") from None
    rows, rejected = [], []
    for line, rec in enumerate(records, start=2):
        try:
            rows.append(_csv_row(path.parent, rec))
        except InputRejected as exc:
            rejected.append((f"{path}:{line}", str(exc)))
    return CsvPlan(rows, rejected)


def _csv_row(base: Path, rec: dict[str, str]) -> dict[str, Any]:
    image = (base / (rec.get("path") or "").strip()).resolve()
    try:
        lat, lon, size_m = float(rec["lat"]), float(rec["lon"]), float(rec["size_m"])
    except (TypeError, ValueError):
        raise InputRejected(f"{image}: lat/lon/size_m are not numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and size_m > 0):
        raise InputRejected(f"{image}: lat {lat} / lon {lon} / size_m {size_m} out of range")
    try:
        with Image.open(image) as im:
            width = im.size[0]
    except (OSError, UnidentifiedImageError) as exc:
        raise InputRejected(f"{image}: not a readable image ({exc})") from None
    fp = square_around(lat, lon, size_m)
    cols = {**fp.columns(), "lat": lat, "lon": lon}
    return {"source": str(image), "crs": None, "gsd_m": size_m / width, "size_m": size_m, **cols}


class ChipReader:
    """Reads tile chips; safe to call from several threads (one open dataset per thread and file)."""

    def __init__(self, sources: dict[str, RasterInfo], out_size: int, max_open: int = 16) -> None:
        self.sources = sources
        self.out_size = out_size
        self.max_open = max_open
        self._local = threading.local()

    def read_window(self, source: str, window: Window) -> tuple[np.ndarray, float]:
        """(h, w, 3) uint8 RGB chip of `window` and its valid (not nodata / masked) fraction."""
        return self.read_row(source, [window])[0]

    def read_row(self, source: str, windows: list[Window]) -> list[tuple[np.ndarray, float]]:
        """Chips of tiles of one tile row (windows sharing row_off and height), as `read_window`.

        A window at least twice the model input is read with out_shape = (S, S), so GDAL
        averages (from an overview when there is one). Smaller ones are read at native
        resolution, snapped to whole pixels (at most half a pixel off), and left to the caller's
        INTER_AREA resize (that of prepare_satellite, the preprocessing the weights were trained
        with); they are cut from one read of the band of rows the windows span, since
        neighbouring tiles overlap (by half at the default stride) and reading each window on its
        own decodes and converts the same pixels again. Slicing a native-resolution band gives
        the very pixels each window's own read would.
        """
        ds = self._dataset(source)
        if windows[0].width >= 2 * self.out_size:
            return [self._read_resampled(ds, self.sources[source], w) for w in windows]
        return self._read_band(ds, self.sources[source], [snap_window(w) for w in windows])

    def _read_resampled(self, ds: Any, info: RasterInfo, window: Window) -> tuple[np.ndarray, float]:
        shape = (self.out_size, self.out_size)
        data = ds.read(list(info.bands), window=window, out_shape=(3, *shape), resampling=Resampling.average)
        rgb = np.ascontiguousarray(to_uint8(data, info.stretch).transpose(1, 2, 0))
        mask = None if _all_valid(ds) else ds.dataset_mask(window=window, out_shape=shape)
        return rgb, _valid_fraction(mask)

    def _read_band(self, ds: Any, info: RasterInfo, windows: list[Window]) -> list[tuple[np.ndarray, float]]:
        left = min(w.col_off for w in windows)
        right = max(w.col_off + w.width for w in windows)
        band = Window(left, windows[0].row_off, right - left, windows[0].height)
        rgb = _read_rgb(ds, info, band)
        mask = None if _all_valid(ds) else ds.dataset_mask(window=band)
        chips = []
        for w in windows:
            cols = slice(w.col_off - left, w.col_off - left + w.width)
            chips.append((rgb[:, cols], _valid_fraction(None if mask is None else mask[:, cols])))
        return chips

    def _dataset(self, source: str) -> Any:
        cache: dict[str, Any] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        ds = cache.get(source)
        if ds is None:
            if len(cache) >= self.max_open:
                oldest = next(iter(cache))
                cache.pop(oldest).close()
            ds = cache[source] = rasterio.open(source)
        return ds

    def close(self) -> None:
        """Close this thread's datasets (others close when their threads end)."""
        for ds in getattr(self._local, "cache", {}).values():
            ds.close()
        self._local.cache = {}


def snap_window(window: Window) -> Window:
    """`window` on whole pixels (each of offset and size rounded on its own)."""
    return Window(*(round(v) for v in (window.col_off, window.row_off, window.width, window.height)))


def _read_rgb(ds: Any, info: RasterInfo, window: Window) -> np.ndarray:
    """(h, w, 3) uint8 RGB of a native-resolution window."""
    if info.stretch is not None:
        return np.ascontiguousarray(
            to_uint8(ds.read(list(info.bands), window=window), info.stretch).transpose(1, 2, 0)
        )
    # 8-bit: GDAL writes the pixels interleaved straight into the (h, w, 3) buffer, through a
    # (3, h, w) view of it, which halves the cost of reading and transposing a band
    rgb = np.empty((int(window.height), int(window.width), 3), dtype=np.uint8)
    ds.read(list(info.bands), window=window, out=rgb.transpose(2, 0, 1))
    return rgb


def _all_valid(ds: Any) -> bool:
    """No nodata, alpha or mask band: there is nothing to count."""
    return all(flag == [MaskFlags.all_valid] for flag in ds.mask_flag_enums)


def _valid_fraction(mask: np.ndarray | None) -> float:
    return 1.0 if mask is None else float(np.count_nonzero(mask)) / mask.size
