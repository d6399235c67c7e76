"""`cvm-index build --dry-run`: what a build would index and cost, without writing anything.

The inputs are resolved and inspected and their tiles counted exactly as the plan stage would
(the same grid, `indexer.tiles.count_raster`, without computing footprints); no database is
opened, no build row is made and no folder is created. The embedding time is an estimate: one
forward pass of the weights on a small batch of model-size chips, timed right here and
extrapolated to the tile count (reading the imagery and tiles skipped for nodata are not
counted). The index memory is that of the index type the build would choose for that many
tiles (`storage.faiss_index.estimate_memory`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from indexer.build import BuildOptions, inspect_inputs, planning_bar, tile_size_of
from indexer.embed import Embedder
from indexer.errors import InputRejected, UsageError
from indexer.sources import resolve_inputs
from indexer.tiles import count_raster, plan_csv
from model.checkpoint import LoadedModel
from storage.budget import BudgetError
from storage.faiss_index import IndexSpec, MemoryEstimate, choose_spec, estimate_memory

# Tiles in the timed forward pass (at most --batch-size), and passes timed after one warm-up.
PROBE_TILES = 4
PROBE_PASSES = 2


@dataclass
class DryRunReport:
    """Tile counts per input, rejected inputs, and the estimates."""

    tile_size_m: float
    stride_m: float
    counts: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    seconds_per_tile: float = 0.0
    probe_tiles: int = 0
    views: int = 1
    device: str = "cpu"
    spec: IndexSpec | None = None
    memory: MemoryEstimate | None = None

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts)

    @property
    def embed_seconds(self) -> float:
        return self.seconds_per_tile * self.total

    @property
    def exit_code(self) -> int:
        """What the build would exit with: 2 nothing to index, 3 some inputs rejected, else 0."""
        if self.total == 0:
            return 2
        return 3 if self.rejected else 0


def dry_run(opts: BuildOptions, loaded: LoadedModel, device: torch.device) -> DryRunReport:
    """Count the tiles of `opts`' inputs and estimate the build's embedding time and index memory."""
    tile = tile_size_of(opts, loaded)
    report = DryRunReport(tile_size_m=tile, stride_m=float(opts.stride_m or tile / 2))
    paths, missing = resolve_inputs(list(opts.imagery))
    report.rejected.extend(missing)
    if not paths and not opts.tiles_csv:
        reasons = "; ".join(f"{spec}: {why}" for spec, why in missing)
        raise UsageError(f"no input to index ({reasons or 'give --imagery or --tiles-csv'})")
    with planning_bar(opts.progress) as bar:
        sources = inspect_inputs(paths, tile, report.rejected, bar)
        for path, info in sources.items():
            n = count_raster(info, tile, report.stride_m, on_row=bar.update)
            if n == 0:
                report.rejected.append((path, f"{path}: raster is smaller than one tile ({tile:g} m)"))
            else:
                report.counts.append((path, n))
        if opts.tiles_csv:
            _count_csv(opts.tiles_csv, report, bar)
    if report.total:
        _estimate(report, opts, loaded, device)
    return report


def _count_csv(csv_path: str, report: DryRunReport, bar: tqdm) -> None:
    try:
        plan = plan_csv(csv_path)
    except InputRejected as exc:
        report.rejected.append((csv_path, str(exc)))
        return
    report.rejected.extend(plan.rejected)
    if plan.rows:
        report.counts.append((csv_path, len(plan.rows)))
        bar.update(len(plan.rows))


def _estimate(report: DryRunReport, opts: BuildOptions, loaded: LoadedModel, device: torch.device) -> None:
    config = loaded.config
    embedder = Embedder(loaded.model, device, config.preprocessing)
    b = max(1, min(PROBE_TILES, opts.batch_size))
    size = config.preprocessing.sat_size
    chips = np.random.default_rng(0).integers(0, 256, size=(b, size, size, 3), dtype=np.uint8)
    embedder(chips)  # warm-up: first-call allocations and kernel selection
    best = float("inf")
    for _ in range(PROBE_PASSES):
        t0 = time.perf_counter()
        embedder(chips)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    report.seconds_per_tile = best / b
    report.probe_tiles, report.views, report.device = b, config.preprocessing.views, str(device)
    d = config.descriptor_dim
    try:
        report.spec = choose_spec(opts.index_type, report.total, d, opts.memory_budget)
    except BudgetError as exc:  # the build would fail at its merge stage: say so before embedding
        raise UsageError(f"--memory-budget: {exc}") from exc
    report.memory = estimate_memory(report.spec, report.total, d)
