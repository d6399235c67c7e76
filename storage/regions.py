"""Region shards: a build's index split into one FAISS index per square region of the Earth.

`cvm-index build --region-km KM` groups the tiles by the region their centre falls in and
writes one index per region under `shards/<name>/` of the build folder (each an ordinary index
folder: `storage.faiss_index.write_index`), with the list of regions in the build's
index_meta.json (`write_sharded`). The service searches every region and merges, or, with a
prior, only the regions that hold tiles inside it (`service.snapshot`): each region is a unit
that one machine can load, and that a query can skip.

Regions are cells of a latitude/longitude grid about KM km on a side: rows of KM km of latitude,
each row cut into cells of KM km of longitude at the row's middle latitude (so cells keep their
width away from the equator). The service skips a region when none of its tiles lies inside the
prior (it knows which region holds each tile), so the grid is only a way to group; the box of
each region's tile centres is recorded for people and for a router of regions across machines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.metrics import M_PER_DEG_LAT
from storage import budget as budgets
from storage import faiss_index
from storage.errors import IndexMismatch

SHARDS_DIR = "shards"
# Region sides the indexer accepts: a tile's side at the least, a quarter of the globe at most.
REGION_KM_MIN, REGION_KM_MAX = 0.1, 10_000.0


@dataclass(frozen=True)
class Region:
    """One region shard: its folder name, the box of its tiles' centres (west, south, east,
    north, degrees) and its number of tiles."""

    name: str
    bbox: tuple[float, float, float, float]
    ntotal: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bbox": list(self.bbox), "ntotal": self.ntotal}

    @classmethod
    def from_json(cls, value: Any) -> Region:
        w, s, e, n = (float(v) for v in value["bbox"])
        return cls(str(value["name"]), (w, s, e, n), int(value["ntotal"]))


def region_cells(lats: np.ndarray, lons: np.ndarray, km: float) -> np.ndarray:
    """The grid cell (row, col) of each point (degrees), for cells of `km`: (n, 2) int64."""
    lats, lons = np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64)
    dlat = km * 1000.0 / M_PER_DEG_LAT
    rows = np.floor((lats + 90.0) / dlat).astype(np.int64)
    middle = np.clip(-90.0 + (rows + 0.5) * dlat, -89.0, 89.0)
    dlon = dlat / np.cos(np.radians(middle))
    cols = np.floor((lons + 180.0) / dlon).astype(np.int64)
    return np.stack([rows, cols], axis=1).reshape(-1, 2)


def cell_name(row: int, col: int) -> str:
    """A region's folder name, `<row>_<col>`."""
    return f"{row:05d}_{col:05d}"


def group_by_region(
    ids: np.ndarray, lats: np.ndarray, lons: np.ndarray, km: float
) -> Iterator[tuple[Region, np.ndarray]]:
    """(region, its tile ids ascending) of every region holding one of the tiles, by cell (row,
    then column)."""
    ids = np.asarray(ids, dtype=np.int64)
    lats, lons = np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64)
    # integer cells, named once each (a name per tile would cost a string per tile)
    cells, which = np.unique(region_cells(lats, lons, km), axis=0, return_inverse=True)
    which = which.reshape(-1)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(cells) + 1))
    for at, (row, col) in enumerate(cells):
        rows = order[bounds[at] : bounds[at + 1]]
        la, lo = lats[rows], lons[rows]
        box = (float(lo.min()), float(la.min()), float(lo.max()), float(la.max()))
        yield Region(cell_name(int(row), int(col)), box, len(rows)), np.sort(ids[rows])


def budget_shares(sizes: list[int], d: int, budget: int | None) -> list[int | None]:
    """Each region's part of a memory budget (bytes), for regions of `sizes` tiles of d dims.

    A region too small to train a compressed index on (`budget.QUANTIZE_MIN_TILES`) gets what
    its flat index takes; the rest of the budget is shared by the other regions in proportion to
    their tiles. A budget smaller than the small regions' flat indexes gives them their
    proportional share too (and the index choice then says what does not fit)."""
    if budget is None:
        return [None] * len(sizes)
    flat = faiss_index.IndexSpec("flat", "IDMap2,Flat")
    small = [n < budgets.QUANTIZE_MIN_TILES for n in sizes]
    kept = sum(faiss_index.serving_bytes(flat, n, d) for n, s in zip(sizes, small, strict=True) if s)
    rest, big = budget - kept, sum(n for n, s in zip(sizes, small, strict=True) if not s)
    if rest < 0:
        total = max(sum(sizes), 1)
        return [budget * n // total for n in sizes]
    return [
        faiss_index.serving_bytes(flat, n, d) if s else rest * n // max(big, 1)
        for n, s in zip(sizes, small, strict=True)
    ]


REGION_VECTORS, REGION_IDS = "{}.vectors.npy", "{}.ids.npy"
# Rows of a region's vector file read at a time.
READ_ROWS = 65_536


def split_vectors(
    folder: Path,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    groups: list[tuple[Region, np.ndarray]],
    d: int,
) -> list[Path]:
    """Copy the (ids, vectors) blocks, given in increasing id order, into one file per region
    (`<folder>/<name>.vectors.npy` and `.ids.npy`, rows in id order), in one pass over them;
    returns each region's vector file, in the order of `groups`."""
    folder.mkdir(parents=True, exist_ok=True)
    all_ids = np.concatenate([members for _, members in groups]) if groups else np.zeros(0, np.int64)
    label = (
        np.concatenate([np.full(len(m), at, np.int64) for at, (_, m) in enumerate(groups)])
        if groups
        else all_ids
    )
    order = np.argsort(all_ids)
    sorted_ids, sorted_label = all_ids[order], label[order]
    paths = [folder / REGION_VECTORS.format(r.name) for r, _ in groups]
    outs = [
        np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(r.ntotal, d))
        for p, (r, _) in zip(paths, groups, strict=True)
    ]
    filled = np.zeros(len(groups), np.int64)
    for block_ids, block in blocks:
        at = np.searchsorted(sorted_ids, block_ids)
        found = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == block_ids)
        for g in np.unique(sorted_label[at[found]]):
            rows = found.copy()
            rows[found] = sorted_label[at[found]] == g
            count = int(rows.sum())
            outs[g][filled[g] : filled[g] + count] = block[rows]
            filled[g] += count
    for (region, members), path, out, got in zip(groups, paths, outs, filled, strict=True):
        if got != region.ntotal:
            raise ValueError(f"{path}: {got} vectors of the {region.ntotal} of region {region.name}")
        out.flush()
        np.save(folder / REGION_IDS.format(region.name), members)
    return paths


def read_blocks(vectors_path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of a region's file (`split_vectors`), READ_ROWS rows at a time."""
    vectors = np.load(vectors_path, mmap_mode="r")
    ids = np.load(vectors_path.with_name(vectors_path.name.replace(".vectors.npy", ".ids.npy")))
    for at in range(0, len(ids), READ_ROWS):
        yield ids[at : at + READ_ROWS], np.ascontiguousarray(vectors[at : at + READ_ROWS])


def write_sharded(
    folder: Path, parts: Iterable[tuple[Region, Any, dict[str, Any]]], meta: dict[str, Any]
) -> None:
    """Write each region's index into `folder/shards/<name>/` (`write_index`, with its own
    metadata), then the build's index_meta.json listing the regions. `folder` is a not yet
    published temporary folder, as for `write_index`."""
    regions, factories, kinds, d, n = [], set(), set(), None, 0
    for region, index, part_meta in parts:
        faiss_index.write_index(index, folder / SHARDS_DIR / region.name, part_meta)
        faiss_index.fsync_path(folder / SHARDS_DIR / region.name)
        regions.append(region.to_json() | {"factory": part_meta["factory"]})
        factories.add(str(part_meta["factory"]))
        kinds.add(str(part_meta.get("index_type")))
        d, n = int(index.d), n + int(index.ntotal)
        del index  # written: free it before the next region's is made
    full = {"metric": "inner_product", "d": d, "ntotal": n, **meta, "regions": regions}
    full["factory"] = factories.pop() if len(factories) == 1 else "mixed"
    full["index_type"] = kinds.pop() if len(kinds) == 1 else "mixed"
    (folder / faiss_index.META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
    faiss_index.fsync_path(folder / faiss_index.META_FILE)
    faiss_index.fsync_path(folder / SHARDS_DIR)


def build_figures(build_dir: Path, queries: int) -> dict[str, Any]:
    """`cvm-index info`'s figures of a build's index (`faiss_index.index_figures`), or of its
    regions when it is split by region (`region_figures`)."""
    if is_sharded(faiss_index.read_meta(build_dir)):
        return region_figures(build_dir, queries)
    return faiss_index.index_figures(build_dir, queries)


def region_figures(build_dir: Path, queries: int) -> dict[str, Any]:
    """`cvm-index info`'s figures of a build split by region (`faiss_index.index_figures` of each
    region): bytes per tile over all regions, recall@10 within each region (`queries` shared
    by the regions in proportion to their tiles, one at least) averaged over its queries."""
    build_dir = Path(build_dir)
    meta = faiss_index.read_meta(build_dir)
    regions = regions_of(meta, build_dir)
    n = sum(r.ntotal for r in regions)
    per = [
        faiss_index.index_figures(build_dir / SHARDS_DIR / r.name, max(1, queries * r.ntotal // max(n, 1)))
        if queries > 0
        else faiss_index.index_figures(build_dir / SHARDS_DIR / r.name, 0)
        for r in regions
    ]
    figures: dict[str, Any] = {
        "index_type": meta.get("index_type"),
        "factory": meta.get("factory"),
        "ntotal": n,
        "memory_budget": meta.get("memory_budget"),
        "ram_bytes_per_tile": sum(f["ram_bytes_per_tile"] * f["ntotal"] for f in per) / max(n, 1),
        "disk_bytes_per_tile": sum(f["disk_bytes_per_tile"] * f["ntotal"] for f in per) / max(n, 1),
        "exact_vectors": any(f["exact_vectors"] for f in per),
        "recall_queries": sum(f["recall_queries"] for f in per),
        "recall_at_10": None,
        "recall_at_10_rerank": None,
        "regions": [r.to_json() for r in regions],
        "region_km": meta.get("region_km"),
    }
    for key in ("recall_at_10", "recall_at_10_rerank"):
        measured = [(f["recall_queries"], f[key]) for f in per if f[key] is not None and f["recall_queries"]]
        if measured:
            figures[key] = sum(q * r for q, r in measured) / sum(q for q, _ in measured)
    return figures


def is_sharded(meta: dict[str, Any]) -> bool:
    """Whether a build's index_meta.json describes region shards."""
    return "regions" in meta


def regions_of(meta: dict[str, Any], build_dir: Path) -> list[Region]:
    """The regions a sharded build's metadata lists; IndexMismatch when malformed."""
    try:
        regions = [Region.from_json(r) for r in meta["regions"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexMismatch(f"{build_dir / faiss_index.META_FILE}: malformed region list ({exc})") from None
    if not regions or len({r.name for r in regions}) != len(regions):
        raise IndexMismatch(f"{build_dir / faiss_index.META_FILE}: no regions, or a region listed twice")
    return regions


def read_regions(build_dir: Path) -> Iterator[tuple[Region, Any, dict[str, Any]]]:
    """(region, index, metadata) of each region shard of a sharded build, each read and checked
    as a build's index is (`read_index`), and checked against the build's region list."""
    build_dir = Path(build_dir)
    meta = faiss_index.read_meta(build_dir)
    for region in regions_of(meta, build_dir):
        index, part_meta = faiss_index.read_index(build_dir / SHARDS_DIR / region.name)
        if index.ntotal != region.ntotal or index.d != int(meta.get("d", -1)):
            raise IndexMismatch(
                f"{build_dir / SHARDS_DIR / region.name}: {index.ntotal} vectors of {index.d} dims, "
                f"the build's {faiss_index.META_FILE} says {region.ntotal} of {meta.get('d')}"
            )
        yield region, index, part_meta
