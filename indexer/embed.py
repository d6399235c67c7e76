"""Embedding stage: tile chips -> satellite-branch descriptors, written as resumable shards.

Reader threads read and prepare chips ahead of the model through a bounded, ordered queue of
futures, so the forward pass does not wait for I/O. Tiles are grouped into shards of a fixed
number of consecutive tile ids; each shard's descriptors go to `shard-<first id>.npz`, written
under a temporary name and renamed, so a shard file either is complete or does not exist. Batches
never cross a shard boundary, which makes a resumed build compute exactly the same batches (hence
bit-identical vectors) as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window

from indexer.tiles import ChipReader
from model.config import Preprocessing
from model.transforms import ImageLoadError, load_image_rgb, prepare_satellite

OK, NODATA, FAILED = 0, 1, 2
# A tile is skipped when more than half of it is nodata / alpha-masked.
MIN_VALID_FRACTION = 0.5

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class TileTask:
    """One tile to embed: its id, source file and pixel window (None: the whole image, pre-cut)."""

    id: int
    source: str
    window: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class Chip:
    """A read tile: (3, S, S) float32 input when status is OK, else the reason it has none."""

    task: TileTask
    status: int
    tensor: torch.Tensor | None = None
    error: str | None = None


def read_chip(reader: ChipReader, prep: Preprocessing, task: TileTask, failed: set[str]) -> Chip:
    """Read and prepare one tile; never raises for a bad input (returns a FAILED chip instead)."""
    if task.source in failed:
        return Chip(task, FAILED, error="an earlier tile of this file could not be read")
    try:
        if task.window is None:
            rgb, valid = load_image_rgb(task.source), 1.0
        else:
            rgb, valid = reader.read_window(task.source, Window(*task.window))
    except (RasterioError, ImageLoadError, OSError, ValueError) as exc:
        return Chip(task, FAILED, error=f"cannot read pixels ({_gdal_reason(exc)})")
    if valid < MIN_VALID_FRACTION:
        return Chip(task, NODATA)
    return Chip(task, OK, prepare_satellite(rgb, prep))


def _gdal_reason(exc: BaseException) -> str:
    """The most specific message: rasterio chains GDAL's own error as the cause."""
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def prefetch(fn: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor, depth: int) -> Iterator[R]:
    """fn over items on `pool`, results in input order, at most `depth` items in flight."""
    pending: deque[Future[R]] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            break
    while pending:
        result = pending.popleft().result()
        for item in it:
            pending.append(pool.submit(fn, item))
            break
        yield result


class Embedder:
    """The satellite branch of a loaded model on a device: (b, 3, S, S) -> (b, d) float32 numpy."""

    def __init__(self, net: Any, device: torch.device) -> None:
        self.net = net.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device, non_blocking=True)
        return self.net.embed_satellite(x).float().cpu().numpy()


def shard_path(shard_dir: Path, first_id: int) -> Path:
    return shard_dir / f"shard-{first_id:012d}.npz"


def embed_shard(chips: Iterable[Chip], embedder: Embedder, batch_size: int, dim: int) -> dict[str, Any]:
    """Embed one shard's chips in batches of OK chips; returns the arrays its file holds."""
    ids, status, errors = [], [], {}
    vectors: list[np.ndarray] = []
    batch: list[Chip] = []

    def flush() -> None:
        if batch:
            out = embedder(torch.stack([c.tensor for c in batch if c.tensor is not None]))
            vectors.extend(out)
            batch.clear()

    for chip in chips:
        ids.append(chip.task.id)
        status.append(chip.status)
        if chip.status == FAILED and chip.task.source not in errors:
            errors[chip.task.source] = chip.error or "unreadable"
        if chip.status == OK:
            batch.append(chip)
            if len(batch) == batch_size:
                flush()
    flush()
    st = np.asarray(status, dtype=np.uint8)
    full = np.zeros((len(ids), dim), dtype=np.float32)
    if vectors:
        full[st == OK] = np.stack(vectors)
    return {
        "ids": np.asarray(ids, dtype=np.int64),
        "status": st,
        "vectors": full,
        "errors": json.dumps(errors),
    }


def write_shard(path: Path, arrays: dict[str, Any]) -> None:
    """Write a shard atomically: temporary file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Shard:
    ids: np.ndarray  # (n,) int64 tile ids, increasing
    status: np.ndarray  # (n,) uint8 OK / NODATA / FAILED
    vectors: np.ndarray  # (n, d) float32, zero rows unless OK
    errors: dict[str, str]  # source -> first read error


def load_shard(path: Path) -> Shard:
    """Read a shard file written by `write_shard`."""
    with np.load(path, allow_pickle=False) as z:
        return Shard(z["ids"], z["status"], z["vectors"], json.loads(str(z["errors"])))


def shard_files(shard_dir: Path) -> list[Path]:
    """Completed shard files of a build, in tile-id order (temporary files are ignored)."""
    return sorted(shard_dir.glob("shard-*.npz"))
