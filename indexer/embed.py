"""Embedding stage: tile chips -> satellite-branch descriptors, written as resumable shards.

Reader threads read and prepare chips ahead of the model through a bounded, ordered queue of
futures, so the forward pass does not wait for I/O. They work in runs of consecutive tiles of one
tile row (`tile_runs`), read together (`ChipReader.read_row`), and hand over model-size uint8
chips; the float normalisation is done per batch (`model.transforms.normalise_batch`). Tiles
are grouped into shards of a fixed number of consecutive tile ids; each shard's descriptors go
to `shard-<first id>.npz`, written under a temporary name and renamed, so a shard file either is
complete or does not exist. Batches never cross a shard boundary, which makes a resumed build
compute exactly the same batches (hence bit-identical vectors) as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window

from indexer.tiles import ChipReader
from model.config import Preprocessing
from model.transforms import ImageLoadError, load_image_rgb, normalise_batch, satellite_pixels

OK, NODATA, FAILED = 0, 1, 2
# A tile is skipped when more than half of it is nodata / alpha-masked.
MIN_VALID_FRACTION = 0.5
# Source pixels of the tiles of one read run: bounds the band of rows read for it, so that the
# readers running ahead hold a few small bands rather than whole rasters.
RUN_MAX_PX = 4_000_000

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
    """A read tile: its (S, S, 3) uint8 RGB model-size pixels when status is OK, else the reason
    it has none. Normalisation to model input happens per batch (`normalise_batch`)."""

    task: TileTask
    status: int
    pixels: np.ndarray | None = None
    error: str | None = None


def row_key(task: TileTask) -> tuple[Any, ...]:
    """Tiles with the same key lie in one tile row of one raster (same row offset and height)."""
    if task.window is None:
        return (task.id,)
    return (task.source, task.window[1], task.window[3])


def tile_runs(
    tasks: Iterable[TileTask], max_tiles: int, max_px: int = RUN_MAX_PX
) -> Iterator[list[TileTask]]:
    """Consecutive tasks of one tile row, in order, at most `max_tiles` and about `max_px` source
    pixels of tiles a run (so that the band read for a run stays small)."""
    run: list[TileTask] = []
    px = 0.0
    for task in tasks:
        area = task.window[2] * task.window[3] if task.window else 0.0
        if run and (len(run) >= max_tiles or px + area > max_px or row_key(task) != row_key(run[0])):
            yield run
            run, px = [], 0.0
        run.append(task)
        px += area
    if run:
        yield run


def read_run(reader: ChipReader, prep: Preprocessing, run: list[TileTask], failed: set[str]) -> list[Chip]:
    """Read and prepare one run of `tile_runs`; never raises for a bad input (FAILED chips instead).

    A failed read fails every tile of the run: they share one read, and a file with any failed
    read is dropped whole anyway.
    """
    first = run[0]
    if first.source in failed:
        return [Chip(t, FAILED, error="an earlier tile of this file could not be read") for t in run]
    try:
        if first.window is None:
            read = [(load_image_rgb(first.source), 1.0)]
        else:
            read = reader.read_row(first.source, [Window(*t.window) for t in run])  # type: ignore[misc]
        return [_chip(t, rgb, valid, prep) for t, (rgb, valid) in zip(run, read, strict=True)]
    except (RasterioError, ImageLoadError, OSError, ValueError) as exc:
        return [Chip(t, FAILED, error=f"cannot read pixels ({_gdal_reason(exc)})") for t in run]


def read_chip(reader: ChipReader, prep: Preprocessing, task: TileTask, failed: set[str]) -> Chip:
    """Read and prepare one tile (as `read_run` would within its run)."""
    return read_run(reader, prep, [task], failed)[0]


def _chip(task: TileTask, rgb: np.ndarray, valid: float, prep: Preprocessing) -> Chip:
    if valid < MIN_VALID_FRACTION:
        return Chip(task, NODATA)
    return Chip(task, OK, satellite_pixels(rgb, prep))


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
    """The satellite branch of a loaded model on a device: (b, S, S, 3) uint8 chips -> (b, d)
    float32 numpy."""

    def __init__(self, net: Any, device: torch.device, prep: Preprocessing) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.prep = prep

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = normalise_batch(pixels, self.prep).to(self.device, non_blocking=True)
        return self.net.describe_satellite(x).float().cpu().numpy()


def shard_path(shard_dir: Path, first_id: int) -> Path:
    return shard_dir / f"shard-{first_id:012d}.npz"


@dataclass
class ShardBook:
    """What a shard records of its chips as they pass, in tile-id order: ids, status and each
    failed source's first error. Both engines fill one per shard (`ok_batches`) and turn it and
    the batches' vectors into the shard's arrays (`arrays`)."""

    ids: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def record(self, chip: Chip) -> None:
        self.ids.append(chip.task.id)
        self.status.append(chip.status)
        if chip.status == FAILED and chip.task.source not in self.errors:
            self.errors[chip.task.source] = chip.error or "unreadable"

    def arrays(self, vectors: list[np.ndarray], dim: int) -> dict[str, Any]:
        """The arrays of the shard's file, given the (b, dim) outputs of its batches in order."""
        st = np.asarray(self.status, dtype=np.uint8)
        full = np.zeros((len(self.ids), dim), dtype=np.float32)
        if vectors:
            full[st == OK] = np.concatenate(vectors)
        return {
            "ids": np.asarray(self.ids, dtype=np.int64),
            "status": st,
            "vectors": full,
            "errors": json.dumps(self.errors),
        }


def ok_batches(chips: Iterable[Chip], batch_size: int, book: ShardBook) -> Iterator[np.ndarray]:
    """The (b, S, S, 3) uint8 pixels of one shard's OK chips, `batch_size` at a time in tile order
    (the last batch shorter), recording every chip in `book` as it passes.

    These are the forward passes of the shard, whichever engine runs them: torch's CPU results
    depend on the batch a tile is in, so equal batches are what makes equal vectors.
    """
    batch: list[np.ndarray] = []
    for chip in chips:
        book.record(chip)
        if chip.status == OK and chip.pixels is not None:
            batch.append(chip.pixels)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
    if batch:
        yield np.stack(batch)


def embed_shard(chips: Iterable[Chip], embedder: Embedder, batch_size: int, dim: int) -> dict[str, Any]:
    """Embed one shard's chips in batches of OK chips; returns the arrays its file holds."""
    book = ShardBook()
    vectors = [embedder(pixels) for pixels in ok_batches(chips, batch_size, book)]
    return book.arrays(vectors, dim)


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
