"""Int8 copies of float32 vectors, with the bounds that keep a search on them exact.

Every vector x is stored as s * c (c int8, one scale s for all rows), with the largest rounding
error max|x - s c| and the largest norm max|x| over the rows: what `service.flat_search` needs to
bound the int8 score of any row against its float32 one (its module docstring has the argument).
A flat index keeps such a copy in memory; a compressed index keeps one on disk beside its exact
vectors (`VECTORS_INT8_FILE`), so that a search restricted to many tiles (a prior) reads a quarter
of the bytes before re-scoring the few rows that can be among the best.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

INT8_LEVELS = 127
VECTORS_INT8_FILE = "vectors_int8.npy"
_QUANTISE_CHUNK = 2048  # rows quantised at a time: float64 temporaries of 16 MiB each at d=1,024


@dataclass(frozen=True)
class Int8Rows:
    """Int8 copies of (N, d) vectors: x ~ scale * codes, with the largest rounding error and norm."""

    codes: torch.Tensor  # (N, d) int8
    scale: float
    max_error: float  # max over rows of |x - scale * codes|
    max_norm: float  # max over rows of |x|


def quantise(x: torch.Tensor, scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, d) float -> codes round(x / scale) (n, d) int8, each row's |x - scale * codes| and each
    row's |x| (float64). `scale` (one, or (n, 1) per row) must be at least max |x| / 127."""
    x64 = x.double()
    norms = torch.linalg.vector_norm(x64, dim=1)
    codes = (x64 / scale).round_().clamp_(-INT8_LEVELS, INT8_LEVELS)
    x64.sub_(codes * scale)  # the rounding error, in place
    return codes.to(torch.int8), torch.linalg.vector_norm(x64, dim=1), norms


def scale_of(x: torch.Tensor) -> float:
    """The scale that maps the largest |x| to 127 (1 for zeros)."""
    if not x.numel():
        return 1.0
    lowest, highest = torch.aminmax(x)  # no |x| copy of a large index
    peak = max(-float(lowest), float(highest))
    return peak / INT8_LEVELS if peak > 0 else 1.0


def quantise_rows(vectors: torch.Tensor, out: torch.Tensor | None = None) -> Int8Rows:
    """Int8Rows of (N, d) float32 vectors, a chunk of rows at a time; the codes are written into
    `out` ((N, d) int8, e.g. a memory map) when given."""
    scale = scale_of(vectors)
    codes, max_error, max_norm = [], 0.0, 0.0
    for i in range(0, len(vectors), _QUANTISE_CHUNK):
        c, error, norms = quantise(vectors[i : i + _QUANTISE_CHUNK], scale)
        if out is None:
            codes.append(c)
        else:
            out[i : i + len(c)] = c
        max_error, max_norm = max(max_error, float(error.max())), max(max_norm, float(norms.max()))
    if out is None:
        out = torch.cat(codes) if codes else torch.zeros((0, vectors.shape[1]), dtype=torch.int8)
    return Int8Rows(out, scale, max_error, max_norm)


def write_int8_copy(folder: Path, vectors: np.ndarray) -> dict[str, Any]:
    """Write the int8 copy of (N, d) float32 `vectors` (a memory map: read a chunk at a time) to
    folder/VECTORS_INT8_FILE; returns its bounds (scale, max_error, max_norm) for the metadata."""
    codes = np.lib.format.open_memmap(
        folder / VECTORS_INT8_FILE, mode="w+", dtype=np.int8, shape=vectors.shape
    )
    rows = quantise_rows(torch.from_numpy(np.asarray(vectors)), torch.from_numpy(codes))
    codes.flush()
    del codes
    return {"scale": rows.scale, "max_error": rows.max_error, "max_norm": rows.max_norm}


def open_int8_copy(folder: Path, bounds: dict[str, Any]) -> Int8Rows:
    """The int8 copy in `folder`, memory-mapped (copy-on-write, so that torch can view it;
    nothing writes to it), with its bounds from the metadata."""
    codes = np.load(folder / VECTORS_INT8_FILE, mmap_mode="c")
    return Int8Rows(
        torch.from_numpy(codes), float(bounds["scale"]), float(bounds["max_error"]), float(bounds["max_norm"])
    )
