"""`cvm-index verify`: does a build's index still agree with its catalogue, weights and imagery?

Checks: the index reads and matches index_meta.json; ntotal equals the tile rows and the index
holds exactly the catalogue's ids; the weights file hashes to the build's weights_sha256; and a
seeded sample of tiles, re-read and re-embedded, matches the stored vectors within `atol` (for
PQ indexes the re-embedded vector is encoded and decoded the same way first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select
from tqdm import tqdm

from indexer.embed import OK, Embedder, TileTask, read_chip
from indexer.params import BuildParams
from indexer.tiles import ChipReader
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint
from storage import catalog, faiss_index, regions
from storage.db import session_scope
from storage.errors import StorageError
from storage.models import Build, Tile


@dataclass
class VerifyReport:
    """Each check as (name, passed, detail); `ok` when every check passed."""

    build_id: int
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append((name, passed, detail))
        return passed


VERIFY_BATCH = 64


def read_parts(build_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The indexes of a build by region name ("" for a build of one index) and its metadata."""
    meta = faiss_index.read_meta(build_dir)
    if not regions.is_sharded(meta):
        index, meta = faiss_index.read_index(build_dir)
        return {"": index}, meta
    return {region.name: index for region, index, _ in regions.read_regions(build_dir)}, meta


def verify_build(
    engine: Engine, build_id: int | None, *, weights: Path | None = None, sample: int = 0, atol: float = 1e-3
) -> VerifyReport:
    """Run every check on a build (the active one when build_id is None).

    Every tile is re-embedded unless `sample` > 0 asks for that many, chosen at random.
    """
    with session_scope(engine) as session:
        build = catalog.resolve_build(session, build_id)
        tile_ids = np.asarray(
            sorted(session.scalars(select(Tile.id).where(Tile.build_id == build.id))), np.int64
        )
    report = VerifyReport(build.id)
    if not report.add("finished", bool(build.index_path), f"status {build.status!r}"):
        return report
    try:
        parts, meta = read_parts(Path(str(build.index_path)))
    except StorageError as exc:
        report.add("index readable", False, str(exc))
        return report
    ntotal = sum(int(index.ntotal) for index in parts.values())
    where = f" in {len(parts)} regions" if regions.is_sharded(meta) else ""
    report.add("index readable", True, f"{meta['factory']}, {ntotal} vectors of {meta['d']} dims{where}")
    report.add(
        "metadata", meta.get("build_id") == build.id, f"index_meta.json build_id {meta.get('build_id')}"
    )
    report.add("ntotal", ntotal == len(tile_ids), f"index {ntotal}, catalogue {len(tile_ids)} tiles")
    held = [faiss_index.index_ids(index) for index in parts.values()]
    same_ids = np.array_equal(np.sort(np.concatenate(held)), tile_ids)
    report.add("ids", same_ids, "index ids equal tile ids" if same_ids else "index ids differ from tile ids")
    weights_path = weights or Path(build.weights_path)
    sha = file_sha256(weights_path) if weights_path.is_file() else "missing"
    hash_ok = sha == build.weights_sha256 == meta.get("weights_sha256")
    report.add("weights", hash_ok, f"{weights_path}: sha256 {sha[:12]}, build {build.weights_sha256[:12]}")
    if hash_ok and len(tile_ids):
        owners = {name: ids for name, ids in zip(parts, held, strict=True)}
        _check_sample(report, engine, build, parts, owners, weights_path, tile_ids, sample, atol)
    return report


def _check_sample(
    report: VerifyReport,
    engine: Engine,
    build: Build,
    parts: dict[str, Any],
    owners: dict[str, np.ndarray],
    weights: Path,
    tile_ids: np.ndarray,
    sample: int,
    atol: float,
) -> None:
    ids = tile_ids
    if 0 < sample < len(tile_ids):
        ids = np.sort(np.random.default_rng(build.id).choice(tile_ids, size=sample, replace=False))
    try:
        loaded = load_checkpoint(weights)
    except CheckpointError as exc:
        report.add("re-embed", False, str(exc))
        return
    params = BuildParams.from_json(build.params, build.weights_sha256)
    reader = ChipReader(params.raster_infos, loaded.config.preprocessing.sat_size)
    embedder = Embedder(loaded.model, torch.device("cpu"), loaded.config.preprocessing)
    diff = 0.0
    # In batches: a whole build's chips at once would not fit in memory.
    for start in tqdm(range(0, len(ids), VERIFY_BATCH), desc="re-embedding", unit="batch", disable=None):
        batch = ids[start : start + VERIFY_BATCH]
        with session_scope(engine) as session:
            tiles = catalog.get_tiles(session, [int(i) for i in batch])
        chips = [read_chip(reader, loaded.config.preprocessing, _task(tiles[int(i)]), set()) for i in batch]
        unreadable = [c.task.id for c in chips if c.status != OK]
        if unreadable:
            report.add("re-embed", False, f"tiles {unreadable[:5]} no longer read as valid imagery")
            return
        fresh = embedder(np.stack([c.pixels for c in chips]))  # type: ignore[misc]
        for name, index in parts.items():  # each tile against the index (region) holding it
            mine = np.isin(batch, owners[name])
            if mine.any():
                stored = faiss_index.stored_vectors(index, batch[mine])
                coded = faiss_index.encode_decode(index, fresh[mine])
                diff = max(diff, float(np.abs(coded - stored).max()))
    what = f"all {len(ids)} tiles" if len(ids) == len(tile_ids) else f"{len(ids)} of {len(tile_ids)} tiles"
    report.add("re-embed", diff <= atol, f"{what}, max |difference| {diff:.2e} (tolerance {atol:g})")


def _task(tile: Tile) -> TileTask:
    window = None if tile.col_off is None else (tile.col_off, tile.row_off, tile.width, tile.height)
    return TileTask(tile.id, tile.source, window)  # type: ignore[arg-type]
