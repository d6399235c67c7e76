"""The area a build covers, as a small GeoJSON MultiPolygon merged from its tiles' bboxes.

The tiles' bboxes [W, S, E, N] (degrees) are marked on a grid of at most `MAX_CELLS` cells a side
(cells of half a tile, the indexer's default stride, or coarser over a large area) and the marked
cells are traced into polygons (with holes) by GDAL's polygonize. The outline follows the tiles'
bboxes to within a cell; a million tiles take well under a second (marking is one vectorised pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.features import shapes

MAX_CELLS = 256
# A cell is marked when a bbox covers at least this fraction of it along each axis: tiles whose
# lon/lat bboxes do not fall exactly on the grid (projected rasters) do not grow the outline.
MIN_OVERLAP = 0.25
DECIMALS = 7


@dataclass(frozen=True)
class Coverage:
    """A build's extent and covered area."""

    bbox: tuple[float, float, float, float]  # [W, S, E, N] of all tiles, degrees
    geometry: dict[str, Any]  # GeoJSON MultiPolygon, [lon, lat]
    n_tiles: int
    cells: tuple[int, int]  # (rows, cols) of the grid it was traced on


def coverage_of(bounds: np.ndarray, max_cells: int = MAX_CELLS) -> Coverage:
    """The coverage of tiles with these bboxes ((n, 4) W, S, E, N degrees, n >= 1)."""
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        raise ValueError("no tiles")
    west, south, east, north = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    half_w = float(np.median(b[:, 2] - b[:, 0])) / 2
    half_h = float(np.median(b[:, 3] - b[:, 1])) / 2
    cw = max(half_w, (east - west) / max_cells, 1e-12)
    ch = max(half_h, (north - south) / max_cells, 1e-12)
    cols = max(1, min(max_cells, math.ceil((east - west) / cw - MIN_OVERLAP)))
    rows = max(1, min(max_cells, math.ceil((north - south) / ch - MIN_OVERLAP)))
    c0 = np.clip(np.floor((b[:, 0] - west) / cw + MIN_OVERLAP), 0, cols - 1).astype(np.int64)
    c1 = np.clip(np.ceil((b[:, 2] - west) / cw - MIN_OVERLAP), c0 + 1, cols).astype(np.int64)
    r0 = np.clip(np.floor((north - b[:, 3]) / ch + MIN_OVERLAP), 0, rows - 1).astype(np.int64)
    r1 = np.clip(np.ceil((north - b[:, 1]) / ch - MIN_OVERLAP), r0 + 1, rows).astype(np.int64)
    # Each bbox adds 1 over its cell rectangle: corners of a difference array, summed along both axes.
    diff = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    np.add.at(diff, (r0, c0), 1)
    np.add.at(diff, (r0, c1), -1)
    np.add.at(diff, (r1, c0), -1)
    np.add.at(diff, (r1, c1), 1)
    covered = (diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols] > 0).astype(np.uint8)
    # The last column / row ends at the outermost tiles' edges, not at a whole cell.
    xs = np.minimum(west + cw * np.arange(cols + 1), east)
    ys = np.maximum(north - ch * np.arange(rows + 1), south)
    transform = Affine(cw, 0.0, west, 0.0, -ch, north)
    polygons = []
    for geom, _ in shapes(covered, mask=covered.astype(bool), connectivity=4, transform=transform):
        polygons.append([_ring(ring, (west, north, cw, ch), xs, ys) for ring in geom["coordinates"]])
    return Coverage(
        bbox=tuple(round(float(v), DECIMALS) for v in (west, south, east, north)),  # type: ignore[arg-type]
        geometry={"type": "MultiPolygon", "coordinates": polygons},
        n_tiles=len(b),
        cells=(rows, cols),
    )


def _ring(
    ring: list[tuple[float, float]], grid: tuple[float, float, float, float], xs: np.ndarray, ys: np.ndarray
) -> list[list[float]]:
    """A traced ring (grid: west, north, cell width, cell height) with its vertices put back on the
    grid's exact edges, rounded. GDAL traces exteriors counterclockwise and holes clockwise, as
    RFC 7946 asks (tests/service/test_builds.py checks it)."""
    west, north, cw, ch = grid
    out = []
    for x, y in ring:
        col, row = (x - west) / cw, (north - y) / ch
        lon = xs[min(max(round(col), 0), len(xs) - 1)]
        lat = ys[min(max(round(row), 0), len(ys) - 1)]
        out.append([round(float(lon), DECIMALS), round(float(lat), DECIMALS)])
    return out
