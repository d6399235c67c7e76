"""`cvm-index build` as restartable stages (the faiss `contrib` / distributed_ondisk pattern).

1. plan:  inputs are checked, tiles laid out deterministically, and every tile row inserted in
          ONE transaction together with counts["planned"]; the rows' ids are the FAISS ids.
2. embed: tiles are embedded in shards of consecutive ids (indexer.embed); done shards are files.
3. merge: shards -> index, written to a temporary folder, renamed, then published
          (indexer.publish); the build becomes active only in the final transaction.

A build killed at any point keeps status "building"; running the same command again resumes it
(same inputs, parameters and weights: the fingerprint of `indexer.params.BuildParams`), as does
`--resume [BUILD]`, which takes the build's stored parameters. A resumed build skips the
planned rows and the finished shards, so its index equals that of an uninterrupted build.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine, select
from tqdm import tqdm

from indexer.embed import (
    Chip,
    Embedder,
    TileTask,
    embed_shard,
    load_shard,
    prefetch,
    read_run,
    shard_files,
    shard_path,
    tile_runs,
    write_shard,
)
from indexer.errors import InputRejected, UsageError
from indexer.params import BuildParams, FileIdent
from indexer.sources import RasterInfo, inspect_raster, resolve_inputs
from indexer.tiles import ChipReader, check_resolution, count_raster, plan_csv, plan_raster
from model.checkpoint import LoadedModel
from storage import catalog
from storage.db import session_scope
from storage.models import Build

DEFAULT_TILE_M = 70.0


@dataclass(frozen=True)
class BuildOptions:
    """What `cvm-index build` was asked to do. stride_m None = half the tile; tile_size_m None =
    the checkpoint's sat_ground_m (else 70 m). resume: None = automatic (an unfinished build with
    the same fingerprint), True = the newest unfinished build, an int = that build, False = never."""

    imagery: tuple[str, ...] = ()
    tiles_csv: str | None = None
    tile_size_m: float | None = None
    stride_m: float | None = None
    batch_size: int = 32
    index_type: str = "auto"
    activate: bool = True
    resume: bool | int | None = None
    shard_size: int = 2048
    read_threads: int = 0  # 0: default_read_threads()
    progress: bool = True
    memory_budget: int | None = None  # bytes the index may take in RAM (--memory-budget)
    region_km: float | None = None  # side of the region shards (--region-km; None: one index)
    # torch threads of the forward pass, for either engine (0: one per core of its machine)
    torch_threads: int = 0
    # "local" (this process) or "ray" (indexer.ray_engine); not part of the fingerprint: both
    # give the same shards, so a build started by one resumes on the other
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int = 0  # 0: one per GPU of the cluster, else half its CPUs


def default_read_threads() -> int:
    """Half the CPU cores (1..8): readers and the model's own threads share the CPU."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass
class BuildContext:
    """Everything the stages share: the database, the folders, the model and the build id."""

    engine: Engine
    index_root: Path
    loaded: LoadedModel
    weights_sha256: str
    device: torch.device
    build_id: int = 0
    resumed: bool = False
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # this run's stage times (s), added to the build's stored ones in the publishing transaction
    run_timings: dict[str, float] = field(default_factory=dict)

    @property
    def work_dir(self) -> Path:
        return self.index_root / f"build-{self.build_id}.work"

    @property
    def final_dir(self) -> Path:
        return self.index_root / f"build-{self.build_id}"


def tile_size_of(opts: BuildOptions, loaded: LoadedModel) -> float:
    """--tile-size-m, else the checkpoint's sat_ground_m, else DEFAULT_TILE_M."""
    return float(opts.tile_size_m or loaded.config.preprocessing.sat_ground_m or DEFAULT_TILE_M)


def make_params(opts: BuildOptions, ctx: BuildContext) -> BuildParams:
    """The parameters of a new build (inputs resolved to files with size and mtime)."""
    paths, missing = resolve_inputs(list(opts.imagery))
    ctx.rejected.extend(missing)
    tile = tile_size_of(opts, ctx.loaded)
    csv_path = str(Path(opts.tiles_csv).expanduser().resolve()) if opts.tiles_csv else None
    if csv_path and not Path(csv_path).is_file():
        raise UsageError(f"{csv_path}: tile list not found")
    return BuildParams(
        inputs=tuple(FileIdent.of(p) for p in paths),
        tiles_csv=FileIdent.of(csv_path) if csv_path else None,
        tile_size_m=tile,
        stride_m=float(opts.stride_m or tile / 2),
        index_type=opts.index_type,
        batch_size=opts.batch_size,
        shard_size=opts.shard_size,
        activate=opts.activate,
        missing_inputs=tuple(missing),
        weights_sha256=ctx.weights_sha256,
        memory_budget=opts.memory_budget,
        region_km=opts.region_km,
    )


def open_build(opts: BuildOptions, ctx: BuildContext) -> BuildParams:
    """Create the build row, or pick the unfinished build to resume; returns its parameters."""
    params = make_params(opts, ctx) if opts.resume in (None, False) else None
    with session_scope(ctx.engine) as session:
        build = _find_resumable(session, opts, params)
        if build is not None:
            if build.weights_sha256 != ctx.weights_sha256:
                raise UsageError(f"build {build.id} was made with other weights; cannot resume it with these")
            ctx.build_id, ctx.resumed = build.id, True
            stored = BuildParams.from_json(build.params, build.weights_sha256)
            ctx.rejected[:] = list(stored.missing_inputs)
            return stored
        if params is None:
            raise UsageError("no unfinished build to resume")
        if not params.inputs and not params.tiles_csv:
            reasons = "; ".join(f"{spec}: {why}" for spec, why in ctx.rejected)
            raise UsageError(f"no input to index ({reasons or 'give --imagery or --tiles-csv'})")
        build = Build(
            status="building",
            is_active=False,
            weights_path=str(ctx.loaded.path.resolve()),
            weights_sha256=ctx.weights_sha256,
            model_arch=ctx.loaded.config.arch,
            embed_dim=ctx.loaded.config.descriptor_dim,
            params=params.to_json(),
            counts={},
            timings={},
            stats={},
            n_tiles=0,
        )
        session.add(build)
        session.flush()
        ctx.build_id = build.id
    return params


def _find_resumable(session: Any, opts: BuildOptions, params: BuildParams | None) -> Build | None:
    if opts.resume is False:
        return None
    if isinstance(opts.resume, int) and not isinstance(opts.resume, bool):
        build = catalog.get_build(session, opts.resume)
        if build is None or build.status != "building":
            state = "does not exist" if build is None else f"is {build.status!r}"
            raise UsageError(f"cannot resume build {opts.resume}: it {state}")
        return build
    unfinished = session.scalars(select(Build).where(Build.status == "building").order_by(Build.id.desc()))
    for build in unfinished:
        if params is None or params.same_inputs(build.params):
            return build
    return None


class WorkLock:
    """An exclusive lock on a build's work folder, so two processes never build the same build."""

    def __init__(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._fh = (work_dir / "lock").open("w")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise UsageError(
                f"{work_dir} is locked: another cvm-index process is running this build"
            ) from None

    def release(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def plan_stage(ctx: BuildContext, params: BuildParams, progress: bool = True) -> tuple[BuildParams, int]:
    """Stage 1: check inputs, lay out tiles, insert all rows in one transaction.

    Tiles stream from the planner into the catalogue a chunk at a time (no list of all tiles is
    ever held), under a progress bar on stderr that shows from the start: the rasters are
    inspected and their tiles counted first (cheap, no footprints), then laid out and inserted.
    Returns the parameters with the inspected rasters (`sources`) and the planned count; a
    build planned by an earlier run already stores both.
    """
    with session_scope(ctx.engine) as session:
        build = catalog.resolve_build(session, ctx.build_id)
        if "planned" in build.counts:
            ctx.rejected[:] = [tuple(r) for r in build.counts.get("rejected", [])]
            return params, int(build.counts["planned"])
        started = time.perf_counter()
        with planning_bar(progress) as bar:
            sources = inspect_inputs(params.input_paths, params.tile_size_m, ctx.rejected, bar)
            for info in sources.values():
                bar.set_postfix_str(f"counting {Path(info.path).name}", refresh=False)
                bar.total = (bar.total or 0) + count_raster(info, params.tile_size_m, params.stride_m)
                bar.refresh()
            bar.set_postfix_str("laying out and inserting", refresh=True)
            rows = _planned_rows(params, sources, ctx, bar)
            planned = catalog.insert_tile_stream(session, ({**row, "build_id": ctx.build_id} for row in rows))
        params = replace(params, sources=tuple(sources.values()))
        build.params = params.to_json()
        build.counts = {"planned": planned, "rejected": [list(r) for r in ctx.rejected]}
        build.timings = {**build.timings, "plan_s": round(time.perf_counter() - started, 3)}
        return params, planned


def planning_bar(progress: bool) -> tqdm:
    return tqdm(desc="planning", unit="tile", disable=not progress, mininterval=0.5, file=sys.stderr)


def inspect_inputs(
    paths: list[str], tile_size_m: float, rejected: list[tuple[str, str]], bar: tqdm | None = None
) -> dict[str, RasterInfo]:
    """The rasters that can be tiled, by path; each other one is appended to `rejected` with a
    message naming it: unreadable, not georeferenced, ... (`inspect_raster`) or pixels too
    coarse for the tile size (`check_resolution`)."""
    sources = {}
    for path in paths:
        if bar is not None:
            bar.set_postfix_str(f"inspecting {Path(path).name}", refresh=True)
        try:
            info = inspect_raster(path)
            check_resolution(info, tile_size_m)
        except InputRejected as exc:
            rejected.append((path, str(exc)))
            continue
        sources[path] = info
    return sources


def _planned_rows(
    params: BuildParams, sources: dict[str, RasterInfo], ctx: BuildContext, bar: tqdm
) -> Iterator[dict]:
    size, stride = params.tile_size_m, params.stride_m
    for path, info in sources.items():
        n = 0
        for row in plan_raster(info, size, stride):
            n += 1
            bar.update()
            yield row
        if n == 0:
            ctx.rejected.append(
                (path, f"{path}: raster is smaller than one tile ({size:g} m); nothing to index")
            )
    if params.tiles_csv:
        try:
            plan = plan_csv(params.tiles_csv.path)
        except InputRejected as exc:
            ctx.rejected.append((params.tiles_csv.path, str(exc)))
            return
        ctx.rejected.extend(plan.rejected)
        bar.total = (bar.total or 0) + len(plan.rows)
        for row in plan.rows:
            bar.update()
            yield row


def shard_tasks(ctx: BuildContext, shard_size: int) -> Iterator[list[TileTask]]:
    """The build's tiles in id order, cut into shards of `shard_size`; one short session per page."""
    shard: list[TileTask] = []
    last, limit = -1, max(shard_size, 1000)
    while True:
        with session_scope(ctx.engine) as session:
            page = catalog.window_page(session, ctx.build_id, after_id=last, limit=limit)
        for t in page:
            window = None if t.col_off is None else (t.col_off, t.row_off, t.width, t.height)
            shard.append(TileTask(t.id, t.source, window))
            if len(shard) == shard_size:
                yield shard
                shard = []
        if len(page) < limit:  # a short page is the last one
            break
        last = page[-1].id
    if shard:
        yield shard


def embed_stage(ctx: BuildContext, params: BuildParams, planned: int, opts: BuildOptions) -> None:
    """Stage 2: embed every shard whose file is missing, reading chips ahead on threads."""
    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    prep = ctx.loaded.config.preprocessing
    reader = ChipReader(params.raster_infos, prep.sat_size)
    embedder = Embedder(ctx.loaded.model, ctx.device, prep)
    batch, dim = params.batch_size, ctx.loaded.config.descriptor_dim
    failed = _failed_sources(shard_dir)
    bar = tqdm(total=planned, unit="tile", disable=not opts.progress, desc="embedding", mininterval=1.0)
    # The task generator queues each pending shard as it starts feeding its tiles to the readers,
    # so the loop below meets the shards in order while the readers run ahead across boundaries.
    queued: deque[list[TileTask]] = deque()

    def tasks() -> Iterator[TileTask]:
        for shard in shard_tasks(ctx, params.shard_size):
            if shard_path(shard_dir, shard[0].id).exists():
                bar.update(len(shard))
                continue
            queued.append(shard)
            yield from shard

    threads = opts.read_threads or default_read_threads()
    with ThreadPoolExecutor(threads, thread_name_prefix="tile-reader") as pool:
        runs = tile_runs(tasks(), max_tiles=batch)
        chips = chain.from_iterable(
            prefetch(lambda r: read_run(reader, prep, r, failed), runs, pool, depth=4)
        )
        for first in chips:
            shard = queued.popleft()
            arrays = embed_shard(_take(first, chips, len(shard), bar), embedder, batch, dim)
            failed.update(json.loads(arrays["errors"]))
            write_shard(shard_path(shard_dir, shard[0].id), arrays)
    bar.close()


def _take(first: Chip, chips: Iterator[Chip], n: int, bar: tqdm) -> Iterator[Chip]:
    """`first` then the next n - 1 chips, counting them on the progress bar."""
    yield first
    bar.update(1)
    for _ in range(n - 1):
        yield next(chips)
        bar.update(1)


def _failed_sources(shard_dir: Path) -> set[str]:
    """Sources whose reads failed in the shards already written (a resumed build skips them)."""
    failed: set[str] = set()
    for path in shard_files(shard_dir):
        failed.update(load_shard(path).errors)
    return failed
