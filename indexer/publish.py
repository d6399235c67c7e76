"""Stage 3 of a build: merge the shards into a FAISS index and publish it atomically.

Order (each step idempotent, so a build killed anywhere here resumes by redoing stage 3):
  1. drop tiles: nodata-skipped ones and every tile of a file whose read failed anywhere (a
     corrupt raster found mid-embedding leaves none of its tiles), in one transaction;
  2. train/add the index from the shards (within --memory-budget when given); a compressed index
     keeps the exact vectors for re-ranking; measure recall@10 for approximate types;
  3. write index.faiss + index_meta.json into `.build-<id>.tmp` (with --region-km, one index per
     region under shards/, `storage.regions`), fsync, rename to `build-<id>`; then the overview
     of the imagery into that folder (indexer.overview; optional);
  4. one transaction: status, counts, stats, index_path, and (unless --no-activate) activation.
The served build changes only in step 4.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from indexer.build import BuildContext
from indexer.embed import NODATA, OK, Shard, load_shard, shard_files
from indexer.errors import IndexerError
from indexer.overview import write_build_overview
from indexer.params import BuildParams
from storage import catalog, faiss_index, regions
from storage.budget import QUANTIZE_MIN_TILES
from storage.db import session_scope
from storage.models import Tile


@dataclass(frozen=True)
class MergePlan:
    """Which shard rows go into the index: `keep` ids, and why the others were dropped."""

    keep: np.ndarray  # (n,) int64, increasing
    drop: np.ndarray  # the other planned ids (nodata, or of a failed file)
    bad: np.ndarray  # (m,) int64 ids of tiles of files whose reads failed
    nodata: int
    failed_tiles: int
    failed_sources: dict[str, str]


def _shards(shard_dir: Path) -> Iterator[Shard]:
    for path in shard_files(shard_dir):
        yield load_shard(path)


def plan_merge(ctx: BuildContext, planned: int) -> MergePlan:
    """Check the shards cover every planned tile exactly once; decide which tiles stay."""
    shard_dir = ctx.work_dir / "shards"
    failed: dict[str, str] = {}
    ids, status = [], []
    for shard in _shards(shard_dir):
        ids.append(shard.ids)
        status.append(shard.status)
        for src, err in shard.errors.items():
            failed.setdefault(src, err)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    all_status = np.concatenate(status) if status else np.zeros(0, np.uint8)
    if len(all_ids) != planned or (len(all_ids) > 1 and np.any(np.diff(all_ids) <= 0)):
        raise IndexerError(f"{shard_dir}: shards hold {len(all_ids)} tiles, {planned} were planned")
    bad = _ids_of_sources(ctx, sorted(failed))
    is_bad = np.isin(all_ids, bad)
    ok = (all_status == OK) & ~is_bad
    nodata = int(((all_status == NODATA) & ~is_bad).sum())
    return MergePlan(all_ids[ok], all_ids[~ok], bad, nodata, int(is_bad.sum()), failed)


def _ids_of_sources(ctx: BuildContext, sources: list[str]) -> np.ndarray:
    if not sources:
        return np.zeros(0, np.int64)
    with session_scope(ctx.engine) as session:
        stmt = select(Tile.id).where(Tile.build_id == ctx.build_id, Tile.source.in_(sources))
        return np.asarray(sorted(session.scalars(stmt)), dtype=np.int64)


def drop_tiles(ctx: BuildContext, plan: MergePlan) -> None:
    """Delete the rows of tiles that will not be in the index (one transaction, none if none).

    The shards cover every planned row (checked by plan_merge), so the rows to drop are known
    without reading the catalogue; deleting rows a killed earlier merge already deleted is a no-op.
    """
    if len(plan.drop) == 0:
        return
    with session_scope(ctx.engine) as session:
        catalog.delete_tiles(session, [int(i) for i in plan.drop])


def _kept_blocks(ctx: BuildContext, bad: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of the kept tiles (OK and not of a failed file), shard by shard, in id order."""
    for shard in _shards(ctx.work_dir / "shards"):
        mask = (shard.status == OK) & ~np.isin(shard.ids, bad)
        if mask.any():
            yield shard.ids[mask], np.ascontiguousarray(shard.vectors[mask])


@dataclass(frozen=True)
class Vectors:
    """The vectors an index is made of: `ids` (ascending) and a way to read them in id order,
    block by block, as often as needed (the whole build's shards, or one region's file)."""

    ids: np.ndarray
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]

    def every(self, count: int) -> np.ndarray:
        """About `count` vectors spread evenly over the ids (training sample, recall queries)."""
        step = max(1, len(self.ids) // max(count, 1))
        wanted = self.ids[::step][:count]
        parts = [v[np.isin(i, wanted)] for i, v in self.blocks()]
        return np.concatenate(parts).astype(np.float32)


def kept_vectors(ctx: BuildContext, plan: MergePlan) -> Vectors:
    """Every kept tile's vector, read from the embedding shards."""
    return Vectors(plan.keep, lambda: _kept_blocks(ctx, plan.bad))


def build_index(
    source: Vectors,
    d: int,
    work_dir: Path,
    kind: str,
    use_gpu: bool,
    budget: int | None = None,
    name: str = "",
) -> tuple[Any, Any, dict]:
    """Train and fill the index over `source` (the build's vectors of d dims, or those of region
    `name`); returns (index, spec, stats).

    With a memory `budget` (bytes) the index is the best that fits it. A compressed index keeps
    the exact vectors (written to `work_dir` here, moved beside the index by write_index) and
    its recall@10 is measured with and without their re-rank."""
    ids = source.ids
    spec = _spec(kind, len(ids), d, budget, name)
    index = faiss_index.new_index(spec, d)
    if not index.is_trained:
        index = faiss_index.train(index, spec, source.every(spec.train_size), use_gpu)
    if spec.nprobe is not None:
        # assigning a vector to its list needs no wider search of an HNSW coarse quantizer than
        # its default breadth; the search breadth is set by the tuning below
        faiss_index.set_nprobe(index, 1)
    for block_ids, vectors in source.blocks():
        index.add_with_ids(vectors, block_ids)
    stats: dict[str, Any] = {"index_bytes": faiss_index.index_bytes(index)}
    if budget is not None:
        stats["memory_budget"] = budget
    if spec.rerank:
        folder = work_dir / (f"exact-{name}" if name else "exact")
        exact = faiss_index.write_exact_vectors(folder, source.blocks(), len(ids), d)
        faiss_index.attach_exact(index, exact)
    if spec.kind != "flat":
        queries = source.every(faiss_index.RECALL_QUERIES)
        # one exact search of the sample, for the tuning and the recall alike
        truth = faiss_index.exact_top(queries, (v for _, v in source.blocks()), ids)
        if spec.nprobe is not None:
            # probe the fewest lists that reach the recall target as served (with the re-rank)
            nprobe, _, tried = faiss_index.tune_nprobe(index, queries, truth, spec.nprobe)
            spec = dataclasses.replace(spec, nprobe=nprobe)
            stats["nprobe_recalls"] = [[p, round(r, 4)] for p, r in tried]
        plain, served = faiss_index.measure_recalls(index, queries, truth, (False, None))
        stats["recall_at_10"] = round(served, 4)
        if spec.rerank:
            stats["recall_at_10_no_rerank"] = round(plain, 4)
        stats["recall_queries"] = len(queries)
    return index, spec, stats


# A region this small gets a flat index whatever --index-type asks: IVF-PQ cannot train on it
# (the budget rules' quantisation minimum), and an exact search of it is fast anyway.
REGION_FLAT_BELOW = QUANTIZE_MIN_TILES


def _spec(kind: str, n: int, d: int, budget: int | None, name: str = "") -> Any:
    """The index for n vectors (`choose_spec`); a region (`name`) of few tiles gets a flat one
    unless a budget decides; a budget that nothing fits is an IndexerError naming the region."""
    if name and budget is None and kind != "hnsw" and n < REGION_FLAT_BELOW:
        kind = "flat"
    try:
        return faiss_index.choose_spec(kind, n, d, budget)
    except ValueError as exc:
        where = f"region {name}: " if name else ""
        raise IndexerError(f"--memory-budget: {where}{exc}") from None


def region_vectors(
    ctx: BuildContext, plan: MergePlan, params: BuildParams
) -> list[tuple[regions.Region, Vectors, int | None]]:
    """Each region's tiles (`--region-km`) with its share of the memory budget
    (`storage.regions.budget_shares`), its vectors copied once from the embedding shards into a
    file of its own in the work folder (each region's index then reads only its own). Every
    region's index type is chosen first, so a budget that a region cannot meet stops the build
    before any training."""
    assert params.region_km is not None
    ids, lats, lons = _centres(ctx, plan.keep)
    d = ctx.loaded.config.descriptor_dim
    groups = list(regions.group_by_region(ids, lats, lons, params.region_km))
    shares = regions.budget_shares([r.ntotal for r, _ in groups], d, params.memory_budget)
    for (region, _), share in zip(groups, shares, strict=True):
        _spec(params.index_type, region.ntotal, d, share, region.name)
    folder = ctx.work_dir / "regions"
    files = regions.split_vectors(folder, kept_vectors(ctx, plan).blocks(), groups, d)
    return [
        (region, _region_file(members, path), share)
        for (region, members), path, share in zip(groups, files, shares, strict=True)
    ]


def _region_file(ids: np.ndarray, path: Path) -> Vectors:
    return Vectors(ids, lambda: regions.read_blocks(path))


def _centres(ctx: BuildContext, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, lats, lons) of the kept tiles, ids ascending."""
    with session_scope(ctx.engine) as session:
        stmt = select(Tile.id, Tile.lat, Tile.lon).where(Tile.build_id == ctx.build_id).order_by(Tile.id)
        rows = np.array(session.execute(stmt).all(), dtype=np.float64).reshape(-1, 3)
    ids = rows[:, 0].astype(np.int64)
    mask = np.isin(ids, keep)
    return ids[mask], rows[mask, 1], rows[mask, 2]


def write_and_rename(ctx: BuildContext, write: Callable[[Path], None]) -> Path:
    """Write the index under a temporary folder name (`write(folder)`), then rename it to the
    build's folder."""
    tmp = ctx.index_root / f".build-{ctx.build_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    final = ctx.final_dir
    # A folder left by a run killed between this rename and the final transaction is not
    # referenced by any build row yet, so replacing it is safe.
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    faiss_index.fsync_path(ctx.index_root)
    return final


def _index_meta(ctx: BuildContext, params: BuildParams, spec: Any = None) -> dict[str, Any]:
    """index_meta.json's build fields (and an index's own, given its spec)."""
    meta: dict[str, Any] = {"weights_sha256": ctx.weights_sha256, "build_id": ctx.build_id}
    if spec is not None:
        meta |= {"factory": spec.factory, "index_type": spec.kind}
        meta |= {"nprobe": spec.nprobe} if spec.nprobe else {}
    if params.memory_budget is not None:
        meta["memory_budget"] = params.memory_budget
    return meta


def write_single(
    ctx: BuildContext, plan: MergePlan, params: BuildParams, use_gpu: bool
) -> tuple[Path, Any, dict[str, Any]]:
    """One index over every kept tile, published; returns (folder, spec, stats)."""
    source = kept_vectors(ctx, plan)
    d = ctx.loaded.config.descriptor_dim
    index, spec, stats = build_index(
        source, d, ctx.work_dir, params.index_type, use_gpu, params.memory_budget
    )
    meta = _index_meta(ctx, params, spec)
    folder = write_and_rename(ctx, lambda tmp: faiss_index.write_index(index, tmp, meta))
    return folder, spec, stats


def write_regions(
    ctx: BuildContext, plan: MergePlan, params: BuildParams, use_gpu: bool
) -> tuple[Path, Any, dict[str, Any]]:
    """One index per region (`--region-km`), made and written one at a time, published together;
    returns (folder, a spec standing for them all, stats: the regions' summed bytes, their
    tile-weighted recall)."""
    specs: list[Any] = []
    done: list[tuple[int, dict]] = []
    todo = region_vectors(ctx, plan, params)
    d = ctx.loaded.config.descriptor_dim

    def parts() -> Iterator[tuple[regions.Region, Any, dict[str, Any]]]:
        for region, source, budget in todo:
            index, spec, stats = build_index(
                source, d, ctx.work_dir, params.index_type, use_gpu, budget, region.name
            )
            specs.append(spec)
            done.append((region.ntotal, stats))
            yield region, index, _index_meta(ctx, params, spec) | {"region": region.name}
            del index  # written: the next region's index replaces it in memory, not beside it

    top = _index_meta(ctx, params) | {"region_km": params.region_km}

    def write(tmp: Path) -> None:
        regions.write_sharded(tmp, parts(), top)

    folder = write_and_rename(ctx, write)
    kinds, factories = {s.kind for s in specs}, {s.factory for s in specs}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    factory = f"{len(specs)} regions: " + (factories.pop() if len(factories) == 1 else "mixed")
    stats: dict[str, Any] = {"index_bytes": sum(st["index_bytes"] for _, st in done), "regions": len(specs)}
    if params.memory_budget is not None:
        stats["memory_budget"] = params.memory_budget
    for key in ("recall_at_10", "recall_at_10_no_rerank"):
        weighted = [(n, st[key]) for n, st in done if key in st]
        if weighted:
            stats[key] = round(sum(n * r for n, r in weighted) / sum(n for n, _ in weighted), 4)
    return folder, faiss_index.IndexSpec(kind, factory[:128]), stats


def merge_stage(
    ctx: BuildContext, params: BuildParams, planned: int, use_gpu: bool, run_started: float
) -> dict[str, Any]:
    """Stage 3: drop, index, write, publish. Returns the final counts/stats of the build.

    The index is of `params.index_type`; the build is activated when `params.activate`.

    The publishing transaction also records this run's timings (ctx.run_timings, and total_s
    since `run_started`, a perf_counter value).
    """
    started = time.perf_counter()
    plan = plan_merge(ctx, planned)
    drop_tiles(ctx, plan)
    rejected = list(ctx.rejected) + [
        (s, f"{s}: {e}; none of its tiles indexed") for s, e in plan.failed_sources.items()
    ]
    counts = {
        "planned": planned,
        "indexed": int(len(plan.keep)),
        "skipped_nodata": plan.nodata,
        "dropped_unreadable": plan.failed_tiles,
        "rejected": [list(r) for r in rejected],
    }
    if len(plan.keep) == 0:
        _finish(ctx, "failed", counts, {}, None, None, activate=False, run_started=run_started)
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        return {"status": "failed", "counts": counts}
    write = write_single if params.region_km is None else write_regions
    folder, spec, stats = write(ctx, plan, params, use_gpu)
    write_build_overview(folder, params, exclude=plan.failed_sources)  # the map page's basemap
    stats["index_s"] = round(time.perf_counter() - started, 3)
    status = "partial" if rejected else "complete"
    _finish(ctx, status, counts, stats, folder, spec, activate=params.activate, run_started=run_started)
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return {
        "status": status,
        "counts": counts,
        "stats": stats,
        "index_type": spec.kind,
        "factory": spec.factory,
    }


def add_timings(stored: dict[str, Any], run: dict[str, float]) -> dict[str, Any]:
    """A resumed build adds the time of this run to that of the interrupted ones."""
    merged = dict(stored)
    for key, value in run.items():
        merged[key] = round(float(merged.get(key) or 0.0) + value, 3)
    return merged


def _finish(
    ctx: BuildContext,
    status: str,
    counts: dict,
    stats: dict,
    folder: Path | None,
    spec: Any,
    *,
    activate: bool,
    run_started: float,
) -> None:
    """The publishing transaction: the build's final state and, when asked, its activation."""
    with session_scope(ctx.engine) as session:
        build = catalog.resolve_build(session, ctx.build_id)
        build.status = status
        build.counts = counts
        stats = dict(stats)
        run = {**ctx.run_timings, "total_s": time.perf_counter() - run_started}
        build.timings = {**add_timings(build.timings, run), "index_s": stats.pop("index_s", None)}
        build.stats = {**build.stats, **stats}
        build.n_tiles = counts["indexed"]
        build.finished_at = datetime.now(UTC)
        if folder is not None and spec is not None:
            build.index_path = str(folder)
            build.index_type, build.index_factory = spec.kind, spec.factory
        if activate and status in ("complete", "partial"):
            session.flush()
            catalog.activate(session, ctx.build_id)
