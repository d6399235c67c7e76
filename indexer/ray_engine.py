"""`cvm-index build --engine ray`: the embedding stage as a Ray Data pipeline.

The driver (the `cvm-index` process) plans the build, writes the shards and publishes the index
exactly as the local engine does (indexer.build, indexer.publish); Ray runs the middle:

    shards (rows)  --read: CPU tasks-->  one row per forward batch  --embed: actor pool-->  vectors
                                                                                    |
    driver: a shard whose batches have all come back -> `write_shard`  <-----------+

* read: one task per pending shard reads its windows as the local engine does (`tile_runs`,
  `read_run`) and cuts its OK chips into forward batches with `ok_batches`, the local engine's
  own cut (`embed_shard`), so every tile is embedded in the same batch as by the local engine;
  each batch travels as one row of model-size uint8 pixels, the shard's ids, status and read
  errors as one more row;
* embed: an actor pool of the weights' satellite branch (`Embedder`), one GPU per actor when the
  cluster has GPUs, else CPU actors computing with `--torch-threads` torch threads as the local
  engine does; each call embeds one row, i.e. one forward batch (the pipeline's batch size is
  one row on purpose);
* the driver gathers the batches of each shard, assembles its arrays with `ShardBook.arrays` and
  writes the shard file (`write_shard`: temporary name, fsync, rename).

The shard files are the same as the local engine's (same ids, status, bit-identical vectors on
the CPU with the same torch thread count), so a build resumes on either engine: a killed worker
or actor is restarted by Ray and its task retried; a killed driver leaves the shards written so
far, and the same command run again skips them. Reads are independent, so a later shard does not
learn that an earlier one found a file unreadable (the local engine marks its remaining tiles
failed without reading them); the merge drops every tile of such a file anyway, so the published
index is the same.

Workers must see the imagery and the weights at the driver's paths (a shared filesystem, or the
same files on every node); shards are written by the driver only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer import build as stages
from indexer.embed import (
    RUN_MAX_PX,
    Embedder,
    ShardBook,
    TileTask,
    ok_batches,
    read_run,
    shard_path,
    tile_runs,
    write_shard,
)
from indexer.errors import IndexerError, UsageError
from indexer.params import BuildParams
from indexer.sources import RasterInfo
from indexer.tiles import ChipReader
from model.config import Preprocessing

RAY_EXTRA = "pip install 'cvm-geoloc[ray]'"
# Tests: an embedding actor exits (as a killed process would) after embedding this many batches,
# once per build (a marker file, `.ray-fault-<build>` in the index folder, spares the restarted
# actor).
FAULT_ENV = "CVM_RAY_FAULT_AFTER_BATCHES"
# Tiles of pending shards handed to one pipeline: the driver holds their windows (about 100
# bytes a tile), so a build of any size runs as pipelines of at most this many tiles.
WAVE_TILES = 1_000_000
# Seconds to wait for a Ray address to accept a connection before calling it unreachable (Ray
# itself retries an unreachable address for minutes).
CONNECT_TIMEOUT_S = 5.0
DEFAULT_GCS_PORT, DEFAULT_CLIENT_PORT = 6379, 10001
# The last line of a Python traceback: `package.module.SomeError: message`.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


def import_ray() -> Any:
    """The `ray` module, or a usage error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the pipeline needs Ray Data, not only Ray core)
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs Ray, an optional extra that is not installed ({exc}); "
            f"install it with: {RAY_EXTRA}"
        ) from None
    return ray


@dataclass(frozen=True)
class RaySetup:
    """How the pipeline uses the cluster: `actors` embedding actors, each with `gpus` GPUs (0 or
    1) and `cpus` CPUs of Ray's accounting, computing with `threads` torch threads on the CPU
    (0: one per core of the actor's node, resolved there)."""

    actors: int
    gpus: int
    cpus: float
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


class RayCluster:
    """A connection to Ray for one build: to `address`, or a Ray instance started on this machine
    (None); a connection made by the caller (`ray.init` before) is used and left open."""

    def __init__(self, address: str | None) -> None:
        self.ray = import_ray()
        self.started = False
        if self.ray.is_initialized():
            return
        if address not in (None, "auto"):
            _check_reachable(address)
        try:
            self.ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = f"at --ray-address {address}" if address else "on this machine"
            hint = ""
            if address not in (None, "auto") and not os.environ.get("RAY_AUTH_MODE"):
                # Ray sends its token to an explicit address only when told to (docs/scale.md)
                hint = "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token"
            raise UsageError(f"cannot connect to a Ray cluster {where}: {_first_line(exc)}{hint}") from None
        self.started = True

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there."""
    target = address.removeprefix("ray://")
    default_port = DEFAULT_CLIENT_PORT if address.startswith("ray://") else DEFAULT_GCS_PORT
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise UsageError(f"--ray-address {address}: not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(
            f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head` and give the address it prints"
        ) from None


def plan_resources(ray: Any, device: str, actors: int, torch_threads: int) -> RaySetup:
    """The actor pool for the cluster: one actor per GPU (device auto/cuda and GPUs present),
    else CPU actors (default: half the cluster's CPUs), always leaving CPUs to the readers."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), int(res.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise UsageError("--device cuda asked for, but the Ray cluster has no GPU")
    if actors < 0:
        raise UsageError(f"--ray-actors must be 0 (automatic) or more, got {actors}")
    if device != "cpu" and gpus > 0:
        n = actors or gpus
        if n > gpus:
            raise UsageError(f"--ray-actors {n} asks for more GPU actors than the cluster's {gpus} GPUs")
        setup = RaySetup(n, 1, 1.0, torch_threads)
    else:
        n = actors or max(1, int(cpus // 2))
        # Several CPU actors with one thread per core each would oversubscribe the cores: without
        # --torch-threads they share the cluster's CPUs (one actor keeps one per core, the count
        # the local engine uses, so that its vectors equal the local engine's by default).
        threads = torch_threads or (0 if n == 1 else max(1, int(cpus // n)))
        setup = RaySetup(n, 0, 1.0, threads)
    if cpus - setup.actors * setup.cpus < 1:
        raise UsageError(
            f"{setup.actors} embedding actor(s) of {setup.cpus:g} CPU would leave none of the Ray "
            f"cluster's {cpus:g} CPUs to read tiles; give fewer --ray-actors"
        )
    return setup


# --- the pipeline's functions (run on the workers) ----------------------------------------------


def _windows(tasks: list[TileTask]) -> np.ndarray:
    """(n, 4) float64 windows, NaN rows for pre-cut tiles (no window)."""
    out = np.full((len(tasks), 4), np.nan)
    for i, t in enumerate(tasks):
        if t.window is not None:
            out[i] = t.window
    return out


def shard_item(shard: list[TileTask]) -> dict[str, Any]:
    """One pending shard as a row of the pipeline's input."""
    return {
        "shard": shard[0].id,
        "ids": np.asarray([t.id for t in shard], dtype=np.int64).tobytes(),
        "sources": json.dumps([t.source for t in shard]),
        "windows": _windows(shard).tobytes(),
    }


def item_tasks(item: dict[str, Any]) -> list[TileTask]:
    """The tasks of a row made by `shard_item`."""
    ids = np.frombuffer(item["ids"], dtype=np.int64)
    windows = np.frombuffer(item["windows"], dtype=np.float64).reshape(-1, 4)
    sources = json.loads(item["sources"])
    tasks = []
    for i, src, w in zip(ids, sources, windows, strict=True):
        window = None if np.isnan(w[0]) else (float(w[0]), float(w[1]), float(w[2]), float(w[3]))
        tasks.append(TileTask(int(i), src, window))
    return tasks


def _row(shard: int, seq: int, rows: int, data: bytes, ids: bytes, status: bytes, errors: str) -> dict:
    """A row between the stages: seq >= 0, a forward batch of `rows` tiles (`data`: its pixels,
    then its vectors); seq -1, the shard's book (`rows`: its batch count)."""
    return {
        "shard": np.asarray([shard], np.int64),
        "seq": np.asarray([seq], np.int64),
        "rows": np.asarray([rows], np.int64),
        "data": np.asarray([data], dtype=object),
        "ids": np.asarray([ids], dtype=object),
        "status": np.asarray([status], dtype=object),
        "errors": np.asarray([errors], dtype=object),
    }


def read_shards(
    batch: dict[str, np.ndarray],
    sources: dict[str, dict],
    prep: Preprocessing,
    batch_size: int,
    failed: list[str],
) -> Iterator[dict[str, np.ndarray]]:
    """Read task: each shard row -> one row per forward batch, then the shard's book row."""
    reader = ChipReader({p: RasterInfo.from_dict(d) for p, d in sources.items()}, prep.sat_size)
    failed_set = set(failed)
    try:
        for i in range(len(batch["shard"])):
            item = {k: batch[k][i] for k in ("ids", "sources", "windows")}
            tasks, first = item_tasks(item), int(batch["shard"][i])
            runs = tile_runs(tasks, max_tiles=batch_size)
            chips = chain.from_iterable(read_run(reader, prep, run, failed_set) for run in runs)
            book = ShardBook()
            n = 0
            for n, pixels in enumerate(ok_batches(chips, batch_size, book), start=1):
                yield _row(first, n - 1, len(pixels), pixels.tobytes(), b"", b"", "")
            ids = np.asarray(book.ids, np.int64).tobytes()
            status = np.asarray(book.status, np.uint8).tobytes()
            yield _row(first, -1, n, b"", ids, status, json.dumps(book.errors))
    finally:
        reader.close()


class EmbedActor:
    """Embedding actor: the weights' satellite branch on this actor's device; each call embeds
    the forward batches of its rows and passes book rows through."""

    def __init__(
        self,
        weights: str,
        weights_sha256: str,
        device: str,
        threads: int,
        fault_after: int = 0,
        fault_marker: str = "",
    ) -> None:
        import torch

        from model.checkpoint import file_sha256, load_checkpoint
        from model.runtime import claim_pool, reuse_freed_memory

        reuse_freed_memory()  # as `cvm-index` does: forward passes repeat
        if file_sha256(weights) != weights_sha256:
            raise UsageError(f"{weights}: this worker's file is not the build's weights (sha256 differs)")
        if device == "cpu":
            claim_pool(threads)  # the local engine's count on this node: same threads, same results
        loaded = load_checkpoint(Path(weights), device="cpu")
        self.prep = loaded.config.preprocessing
        self.embedder = Embedder(loaded.model, torch.device(device), self.prep)
        self.fault_after, self.fault_marker, self.done = fault_after, fault_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.prep.sat_size
        data = []
        for seq, rows, pixels in zip(batch["seq"], batch["rows"], batch["data"], strict=True):
            if seq < 0:
                data.append(b"")
                continue
            chips = np.frombuffer(pixels, dtype=np.uint8).reshape(int(rows), s, s, 3)
            data.append(self.embedder(chips).tobytes())
            self.done += 1
            self._maybe_fail()
        return {**batch, "data": np.asarray(data, dtype=object)}

    def _maybe_fail(self) -> None:
        if self.fault_after and self.done >= self.fault_after:
            try:
                os.close(os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


# --- the driver ---------------------------------------------------------------------------------


class ShardAssembler:
    """Collects the rows of each shard; writes its file once its book and all its batches are in."""

    def __init__(self, shard_dir: Path, dim: int, bar: tqdm) -> None:
        self.shard_dir, self.dim, self.bar = shard_dir, dim, bar
        self.books: dict[int, ShardBook] = {}
        self.batch_count: dict[int, int] = {}
        self.vectors: dict[int, dict[int, np.ndarray]] = {}
        self.failed: set[str] = set()

    def add(self, row: dict[str, Any]) -> None:
        shard, seq = int(row["shard"]), int(row["seq"])
        if seq < 0:
            ids = np.frombuffer(row["ids"], np.int64).tolist()
            status = np.frombuffer(row["status"], np.uint8).tolist()
            self.books[shard] = ShardBook(ids, status, json.loads(row["errors"]))
            self.batch_count[shard] = int(row["rows"])
        else:
            vectors = np.frombuffer(row["data"], np.float32).reshape(int(row["rows"]), self.dim)
            self.vectors.setdefault(shard, {})[seq] = vectors
        self._write_if_complete(shard)

    def _write_if_complete(self, shard: int) -> None:
        book, got = self.books.get(shard), self.vectors.get(shard, {})
        if book is None or len(got) < self.batch_count[shard]:
            return
        arrays = book.arrays([got[k] for k in range(self.batch_count[shard])], self.dim)
        write_shard(shard_path(self.shard_dir, shard), arrays)
        self.failed.update(book.errors)
        self.bar.update(len(book.ids))
        del self.books[shard], self.batch_count[shard]
        self.vectors.pop(shard, None)

    @property
    def open_shards(self) -> list[int]:
        return sorted(set(self.books) | set(self.vectors))


def embed_stage(
    ctx: stages.BuildContext,
    params: BuildParams,
    planned: int,
    opts: stages.BuildOptions,
    cluster: RayCluster,
    setup: RaySetup,
) -> None:
    """Stage 2 on Ray: embed every shard whose file is missing (the local engine's stage 2)."""
    ray = cluster.ray
    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver has its own bar
    # A block as large as one forward batch's pixels: each batch row then ends a block of its own,
    # so that the batches of one shard spread over the actors and reach them while the shard is
    # still being read (a read task's rows would otherwise travel as one block of up to 128 MiB).
    prep = ctx.loaded.config.preprocessing
    context.target_max_block_size = max(params.batch_size * prep.sat_size**2 * 3, 1 << 16)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-pipeline INFO lines on stderr
    failed = stages._failed_sources(shard_dir)
    bar = tqdm(total=planned, unit="tile", disable=not opts.progress, desc="embedding", mininterval=1.0)
    assembler = ShardAssembler(shard_dir, ctx.loaded.config.descriptor_dim, bar)
    wave: list[dict[str, Any]] = []
    wave_tiles = 0
    for shard in stages.shard_tasks(ctx, params.shard_size):
        if shard_path(shard_dir, shard[0].id).exists():
            bar.update(len(shard))
            continue
        wave.append(shard_item(shard))
        wave_tiles += len(shard)
        if wave_tiles >= WAVE_TILES:
            _run_wave(ray, ctx, params, setup, wave, sorted(failed | assembler.failed), assembler)
            wave, wave_tiles = [], 0
    if wave:
        _run_wave(ray, ctx, params, setup, wave, sorted(failed | assembler.failed), assembler)
    bar.close()


def _run_wave(
    ray: Any,
    ctx: stages.BuildContext,
    params: BuildParams,
    setup: RaySetup,
    items: list[dict[str, Any]],
    failed: list[str],
    assembler: ShardAssembler,
) -> None:
    prep = ctx.loaded.config.preprocessing
    sources = {p: info.to_dict() for p, info in params.raster_infos.items()}
    fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    # one block per shard, so that the shards are read in parallel
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_shards,
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={"sources": sources, "prep": prep, "batch_size": params.batch_size, "failed": failed},
        # a reservation for Ray's scheduler, which also keeps Ray Data from fusing the reads
        # into the embedding actors (whose forward passes would then wait for their own reads)
        memory=read_memory_bytes(prep, params.batch_size),
    )
    ds = ds.map_batches(
        EmbedActor,
        batch_size=1,  # one row = one forward batch, cut as the local engine cuts it
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=setup.actors),
        num_cpus=setup.cpus,
        num_gpus=setup.gpus,
        fn_constructor_kwargs={
            "weights": str(ctx.loaded.path.resolve()),
            "weights_sha256": ctx.weights_sha256,
            "device": setup.device,
            "threads": setup.threads,
            "fault_after": fault_after,
            # beside the work folder, which a published build removes: tests look for it after
            "fault_marker": str(ctx.index_root / f".ray-fault-{ctx.build_id}"),
        },
    )
    try:
        for row in ds.iter_rows():
            assembler.add(row)
    except (KeyboardInterrupt, UsageError, IndexerError):
        raise
    except Exception as exc:  # Ray wraps a worker's failure in its own exception types
        raise IndexerError(
            f"the Ray pipeline failed: {_first_line(exc)}; the shards written so far are kept, "
            "run the same command again to resume"
        ) from None
    if assembler.open_shards:
        raise IndexerError(f"the Ray pipeline returned incomplete shards {assembler.open_shards[:5]}")


def read_memory_bytes(prep: Preprocessing, batch_size: int) -> int:
    """Memory a read task holds at most: the band of rows of one read run (uint8 RGB) and a
    forward batch of chips twice over (the chips, then the stacked batch)."""
    return RUN_MAX_PX * 3 + 2 * batch_size * prep.sat_size**2 * 3


def _first_line(exc: BaseException) -> str:
    """The message of an exception; of a Ray error that carries a worker's traceback, the
    worker's own exception line (`module.SomeError: message`), the last such line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    raised = [ln for ln in lines[1:] if _EXCEPTION_LINE.match(ln)]
    return raised[-1] if raised else lines[0]


def describe(setup: RaySetup) -> str:
    """One line for stderr: how the pipeline used the cluster."""
    threads = f"{setup.threads} torch threads" if setup.threads else "one torch thread per core of its node"
    where = "GPU" if setup.gpus else f"CPU, {threads}"
    return f"ray: {setup.actors} embedding actor(s) ({where} each)"
