"""Inputs of a build: resolving paths/folders/globs to rasters, and checking each raster once.

`inspect_raster` opens a raster and decides how its pixels become RGB chips (which bands, how
16-bit or float values are scaled to 8 bits), or rejects it with a message naming the file.
The result is a plain dict (stored in Build.params) so that a resumed build reads exactly as
the interrupted one did.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from indexer.errors import InputRejected

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# Percentiles of the valid pixels mapped to 0 and 255 when a raster is not 8-bit.
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_PX = 1024


@dataclass(frozen=True)
class RasterInfo:
    """How to read one raster. bands: 1-based band indexes giving R, G, B (one band repeated for
    greyscale); stretch: per-band (low, high) source values mapped to 0..255, None for 8-bit."""

    path: str
    crs: str
    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]
    bands: tuple[int, int, int]
    stretch: tuple[tuple[float, float], ...] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RasterInfo:
        stretch = d.get("stretch")
        return cls(
            path=d["path"],
            crs=d["crs"],
            width=int(d["width"]),
            height=int(d["height"]),
            transform=tuple(d["transform"]),  # type: ignore[arg-type]
            bands=tuple(d["bands"]),  # type: ignore[arg-type]
            stretch=None if stretch is None else tuple(tuple(s) for s in stretch),  # type: ignore[misc]
        )


def resolve_inputs(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files, folders (recursively, raster suffixes) and glob patterns.

    Returns (sorted unique absolute paths, [(spec, reason)] for specs that matched nothing).
    """
    found: set[str] = set()
    rejected: list[tuple[str, str]] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            hits = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
            if not hits:
                rejected.append((spec, "folder holds no raster (.tif, .tiff, .vrt, .jp2, .img)"))
        elif path.is_file():
            hits = [path]
        elif glob.has_magic(spec):
            hits = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
            if not hits:
                rejected.append((spec, "pattern matches no file"))
        else:
            hits = []
            rejected.append((spec, "no such file or folder"))
        found.update(str(p.resolve()) for p in hits)
    return sorted(found), rejected


def inspect_raster(path: str) -> RasterInfo:
    """Open `path` and check that it can be tiled; raise InputRejected naming the file otherwise."""
    try:
        with warnings.catch_warnings():
            # reported below as a clear rejection instead
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return _inspect(ds, path)
    except RasterioError as exc:
        raise InputRejected(f"{path}: not a readable raster ({_first_line(exc)})") from None


def _inspect(ds: Any, path: str) -> RasterInfo:
    if ds.crs is None or ds.transform.is_identity:
        raise InputRejected(f"{path}: raster has no CRS / georeferencing; cannot place its tiles on Earth")
    t = ds.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise InputRejected(f"{path}: raster is rotated or not north-up; warp it first (gdalwarp)")
    if ds.count < 1:
        raise InputRejected(f"{path}: raster has no bands")
    bands = _rgb_bands(ds)
    stretch = None if ds.dtypes[bands[0] - 1] == "uint8" else _stretch(ds, bands, path)
    return RasterInfo(
        path=path,
        crs=ds.crs.to_string(),
        width=ds.width,
        height=ds.height,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        bands=bands,
        stretch=stretch,
    )


def _rgb_bands(ds: Any) -> tuple[int, int, int]:
    """Bands giving R, G, B: by colour interpretation when labelled, else 1-2-3, else band 1 x3."""
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        r, g, b = (interp.index(c) + 1 for c in wanted)
        return (r, g, b)
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if len(data_bands) >= 3:
        return (data_bands[0], data_bands[1], data_bands[2])
    # Greyscale (possibly with alpha): replicate the one band into the three channels.
    first = data_bands[0] if data_bands else 1
    return (first, first, first)


def _stretch(ds: Any, bands: tuple[int, int, int], path: str) -> tuple[tuple[float, float], ...]:
    """Per-band percentile range over a decimated read of the whole raster (overviews if any)."""
    scale = max(ds.width, ds.height) / STRETCH_SAMPLE_PX
    shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
    try:
        data = ds.read(list(bands), out_shape=(3, *shape), masked=True)
    except RasterioError as exc:
        raise InputRejected(f"{path}: cannot read pixels ({_first_line(exc)})") from None
    ranges = []
    for band in data:
        valid = np.asarray(band.compressed(), dtype=np.float64)
        valid = valid[np.isfinite(valid)]
        if valid.size == 0:
            raise InputRejected(f"{path}: raster holds no valid pixel")
        lo, hi = (float(v) for v in np.percentile(valid, STRETCH_PERCENTILES))
        ranges.append((lo, hi if hi > lo else lo + 1.0))
    return tuple(ranges)


def to_uint8(data: np.ndarray, stretch: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """(3, h, w) source values -> (3, h, w) uint8, scaling each band's (low, high) to 0..255."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, (lo, hi) in enumerate(stretch):
        scaled = (data[i].astype(np.float32) - lo) * (255.0 / (hi - lo))
        out[i] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
