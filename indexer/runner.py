"""Runs a whole `cvm-index build`: settings -> model -> stages -> summary."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import torch

from indexer import build as stages
from indexer.errors import IndexerError, UsageError
from indexer.params import BuildParams
from indexer.publish import merge_stage
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint
from model.runtime import claim_pool, frozen_heap
from storage import catalog
from storage.budget import BudgetError
from storage.db import make_engine, session_scope, upgrade
from storage.faiss_index import choose_spec
from storage.settings import Settings

if TYPE_CHECKING:
    from indexer.dryrun import DryRunReport
    from indexer.ray_engine import RayCluster, RaySetup

EXIT_OK, EXIT_FAILED, EXIT_NOTHING, EXIT_PARTIAL = 0, 1, 2, 3
ENGINES = ("local", "ray")


@dataclass
class BuildReport:
    """Outcome of a build, for the summary and the exit code."""

    build_id: int
    status: str
    resumed: bool
    counts: dict[str, Any]
    seconds: float
    index_type: str | None = None
    factory: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"complete": EXIT_OK, "partial": EXIT_PARTIAL}.get(self.status, EXIT_NOTHING)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(name)


def resolve_weights(weights: Path | None, settings: Settings, engine: Any, resume: bool | int | None) -> Path:
    """--weights, else CVM_WEIGHTS, else the weights of the build being resumed, else the shipped ones."""
    if weights is not None:
        return weights
    if settings.weights is not None:
        return settings.weights
    if isinstance(resume, int) and not isinstance(resume, bool):
        with session_scope(engine) as session:
            build = catalog.get_build(session, resume)
            if build is not None:
                return Path(build.weights_path)
    try:
        from model.weights import default_weights_path

        return default_weights_path()
    except (ImportError, FileNotFoundError) as exc:
        raise UsageError(f"no --weights given and no shipped weights: {exc}") from None


def run_build(
    opts: stages.BuildOptions, settings: Settings, weights: Path | None, device: str
) -> BuildReport:
    """Create or resume a build and run its stages to the end, embedding on `opts.engine`."""
    started = time.perf_counter()
    if opts.engine not in ENGINES:
        raise UsageError(f"--engine {opts.engine}: not one of {', '.join(ENGINES)}")
    if opts.engine != "ray" and (opts.ray_address or opts.ray_actors):
        raise UsageError("--ray-address and --ray-actors go with --engine ray")
    if opts.torch_threads < 0:
        raise UsageError(f"--torch-threads must be 0 (one per core) or more, got {opts.torch_threads}")
    # Ray is reached first, so that a missing extra or a wrong address writes nothing
    cluster = _ray_cluster(opts)
    engine = None
    try:
        setup = None
        if cluster is not None:
            from indexer.ray_engine import plan_resources

            setup = plan_resources(cluster.ray, device, opts.ray_actors, opts.torch_threads)
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        # the Ray engine's driver runs no forward pass: its device is that of the FAISS training
        dev = resolve_device(device) if cluster is None else _driver_device(device)
        path = resolve_weights(weights, settings, engine, opts.resume)
        try:
            loaded = load_checkpoint(path, device="cpu")
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        ctx = stages.BuildContext(engine, settings.index_root, loaded, file_sha256(path), dev)
        settings.index_root.mkdir(parents=True, exist_ok=True)
        params = stages.open_build(opts, ctx)
        lock = stages.WorkLock(ctx.work_dir)
        try:
            # The libraries and the model loaded so far live as long as the build (`frozen_heap`).
            with frozen_heap():
                return _stages(ctx, params, opts, started, cluster, setup)
        finally:
            lock.release()
    finally:
        if engine is not None:
            engine.dispose()
        if cluster is not None:
            cluster.close()


def _ray_cluster(opts: stages.BuildOptions) -> RayCluster | None:
    if opts.engine != "ray":
        return None
    from indexer.ray_engine import RayCluster

    return RayCluster(opts.ray_address)


def _driver_device(name: str) -> torch.device:
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def run_dry(opts: stages.BuildOptions, settings: Settings, weights: Path | None, device: str) -> DryRunReport:
    """`cvm-index build --dry-run`: count and estimate (indexer.dryrun); opens no database and
    writes no file or folder."""
    from indexer.dryrun import dry_run

    if opts.resume not in (None, False):
        raise UsageError("--dry-run estimates new inputs; it cannot be combined with --resume")
    dev = resolve_device(device)
    path = resolve_weights(weights, settings, None, None)
    try:
        loaded = load_checkpoint(path, device="cpu")
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    return dry_run(opts, loaded, dev)


def _stages(
    ctx: stages.BuildContext,
    params: BuildParams,
    opts: stages.BuildOptions,
    t0: float,
    cluster: RayCluster | None = None,
    setup: RaySetup | None = None,
) -> BuildReport:
    params, planned = stages.plan_stage(ctx, params, progress=opts.progress)
    if planned == 0:
        counts = {"planned": 0, "indexed": 0, "rejected": [list(r) for r in ctx.rejected]}
        _mark(ctx, status="failed", counts=counts)
        return BuildReport(ctx.build_id, "failed", ctx.resumed, counts, time.perf_counter() - t0)
    if params.memory_budget is not None:
        _check_budget(ctx, params, planned)
    t_embed = time.perf_counter()
    if cluster is not None and setup is not None:
        from indexer import ray_engine

        print(ray_engine.describe(setup), file=sys.stderr)
        ray_engine.embed_stage(ctx, params, planned, opts, cluster, setup)
    else:
        # the thread count the Ray engine's CPU actors use too: equal counts, equal vectors
        claim_pool(opts.torch_threads)
        stages.embed_stage(ctx, params, planned, opts)
    ctx.run_timings["embed_s"] = time.perf_counter() - t_embed
    use_gpu = ctx.device.type == "cuda" and faiss.get_num_gpus() > 0
    # merge_stage records embed_s and total_s in its publishing transaction (one commit less)
    result = merge_stage(ctx, params, planned, use_gpu, run_started=t0)
    total = time.perf_counter() - t0
    return BuildReport(
        ctx.build_id,
        result["status"],
        ctx.resumed,
        result["counts"],
        total,
        result.get("index_type"),
        result.get("factory"),
        result.get("stats", {}),
    )


def _check_budget(ctx: stages.BuildContext, params: BuildParams, planned: int) -> None:
    """Refuse a memory budget that no index of the planned tiles fits before the embedding, which
    may take hours (the merge checks again with the tiles actually kept)."""
    try:
        choose_spec(params.index_type, planned, ctx.loaded.config.descriptor_dim, params.memory_budget)
    except BudgetError as exc:
        counts = {"planned": planned, "indexed": 0, "rejected": [list(r) for r in ctx.rejected]}
        _mark(ctx, status="failed", counts=counts)
        raise IndexerError(f"--memory-budget: {exc}") from None


def _mark(ctx: stages.BuildContext, status: str, counts: dict) -> None:
    with session_scope(ctx.engine) as session:
        build = catalog.resolve_build(session, ctx.build_id)
        build.status = status
        build.counts = counts
