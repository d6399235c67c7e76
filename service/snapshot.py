"""An immutable view of one index build: its FAISS index and its tiles, loaded together.

A request takes the current snapshot once and uses only it, so a build activated meanwhile never
mixes ids of one build with tiles of another.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.runtime import omp_threads, search_threads
from service.catalog import BuildInfo, Catalog, TilePlace
from service.errors import BadPrior, IndexBuildError
from service.estimate import tile_grid
from service.flat_search import FlatView
from service.prior import Prior
from storage import regions as region_shards
from storage.errors import IndexMismatch
from storage.faiss_index import index_ids, read_index, read_meta, set_nprobe


@dataclass(frozen=True)
class TileCentres:
    """Every tile's centre as arrays (tile ids ascending), for selecting the tiles of a prior."""

    ids: np.ndarray  # (N,) int64
    lats: np.ndarray  # (N,) float64, degrees
    lons: np.ndarray  # (N,) float64, degrees

    @classmethod
    def of(cls, tiles: Mapping[int, TilePlace]) -> TileCentres:
        n = len(tiles)
        ids = np.fromiter(tiles.keys(), dtype=np.int64, count=n)
        lats = np.fromiter((t.lat for t in tiles.values()), dtype=np.float64, count=n)
        lons = np.fromiter((t.lon for t in tiles.values()), dtype=np.float64, count=n)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], lats[order], lons[order])

    @cached_property
    def _by_lat(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions ordered by latitude, the latitudes in that order)."""
        order = np.argsort(self.lats, kind="stable")
        return order, self.lats[order]

    def inside(self, prior: Prior) -> np.ndarray:
        """Ids (ascending) of the tiles whose centre lies inside the prior.

        Only the tiles in the prior's band of latitude (`Prior.lat_band`, found by bisection) are
        tested, so a small prior costs little in a large build; the band holds every tile inside.
        Of a circle's band, only the tiles in its window of longitude (`Prior.lon_window`, a
        comparison) get the great-circle test (trigonometry)."""
        order, lats = self._by_lat
        south, north = prior.lat_band()
        rows = order[np.searchsorted(lats, south, "left") : np.searchsorted(lats, north, "right")]
        window = prior.lon_window()
        if window is not None:
            centre, half = window
            rows = rows[np.abs((self.lons[rows] - centre + 180.0) % 360.0 - 180.0) <= half]
        rows = rows[prior.contains(self.lats[rows], self.lons[rows])]
        return np.sort(self.ids[rows])


@dataclass(frozen=True)
class IndexPart:
    """One searched index: a whole build's, or one region shard's (`storage.regions`).

    `index` is only read (FAISS search is safe from several threads); `flat` is its torch search
    (`service.flat_search`) when it is an exact flat index."""

    index: Any
    flat: FlatView | None = None
    name: str = ""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.flat is not None:
            return self.flat.search(queries, k)
        with omp_threads(search_threads()):
            scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    @cached_property
    def ids(self) -> np.ndarray:
        """The tile ids this index holds, ascending."""
        return index_ids(self.index)

    @cached_property
    def _exact(self) -> FlatView | None:
        """Exact search over the stored float32 vectors: the flat view, or one of HNSW's storage
        (one pass, with no int8 copy: an HNSW index chosen under a memory budget was sized
        without one, `storage.faiss_index.serving_bytes`)."""
        if self.flat is not None:
            return self.flat
        return FlatView.of(self.index, min_values_two_pass=2**62, hnsw=True)

    def search_within(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        exact = self._exact
        if exact is not None:
            return exact.search(queries, k, ids=allowed)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        # a few more than k, so that ties at the k-th score are ordered by id like the rest
        wanted = int(min(len(allowed), k + TIE_MARGIN))
        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            ivf = None
        with omp_threads(search_threads()):
            if ivf is not None:
                selector = faiss.IDSelectorBatch(allowed)
                params: Any = faiss.SearchParametersIVF()  # (its stubs lack the keyword form)
                params.sel, params.nprobe = selector, int(ivf.nlist)
                scores, ids = self.index.search(q, wanted, params=params)
            else:  # any other index: everything, filtered afterwards
                scores, ids = self.index.search(q, int(self.index.ntotal))
                keep = np.isin(ids, allowed)
                scores, ids = _compact(scores, ids, keep, wanted)
        return _by_score_then_id(scores, ids, k)


@dataclass(frozen=True)
class IndexSnapshot:
    """A loaded build: its index (`index`, `flat`) or its region shards (`regions`), and its
    tiles. Every index is only read, so a snapshot serves several threads at once."""

    build_id: int
    index: Any
    meta: Mapping[str, Any]
    tiles: Mapping[int, TilePlace]
    index_dir: Path
    loaded_at: float = field(default_factory=time.time)
    flat: FlatView | None = None
    # (tile side, stride) in metres, measured from the tiles at load (`service.estimate.tile_grid`);
    # None: taken from the candidates' bboxes (stride = half a tile, the indexer's default).
    grid_m: tuple[float, float] | None = None
    # a build split by region (`cvm-index build --region-km`): one part per region, `index` None
    regions: tuple[IndexPart, ...] = ()

    def __post_init__(self) -> None:
        # the tiles' centres as arrays, made once per snapshot (selecting a prior's tiles)
        self.centres._by_lat  # noqa: B018

    @cached_property
    def centres(self) -> TileCentres:
        """Every tile's centre, as arrays (`TileCentres`)."""
        return TileCentres.of(self.tiles)

    @cached_property
    def parts(self) -> tuple[IndexPart, ...]:
        """The indexes searched: the regions, or the one index."""
        return self.regions or (IndexPart(self.index, self.flat),)

    @cached_property
    def _part_of_tile(self) -> np.ndarray:
        """For each tile of `centres` (same order), the position of its part in `parts`."""
        labels = np.full(len(self.centres.ids), -1, dtype=np.int64)
        for at, part in enumerate(self.parts):
            labels[np.searchsorted(self.centres.ids, part.ids)] = at
        return labels

    def check_regions(self) -> None:
        """Check that the regions hold exactly the catalogue's tiles, and work out which region
        holds which tile (done once, at load: a search with a prior then only looks it up)."""
        held = np.sort(np.concatenate([part.ids for part in self.parts]))
        if not np.array_equal(held, self.centres.ids):
            raise IndexBuildError(
                f"build {self.build_id}: its regions hold other tile ids than its catalogue; "
                "rebuild it (cvm-index verify says more)"
            )
        self._part_of_tile  # noqa: B018

    @property
    def ntotal(self) -> int:
        """Number of descriptors in the index (all its regions)."""
        return sum(int(part.index.ntotal) for part in self.parts)

    def select(self, prior: Prior) -> np.ndarray:
        """Ids (ascending) of the tiles inside `prior`; BadPrior when there is none."""
        ids = self.centres.inside(prior)
        if not len(ids):
            raise BadPrior(f"no tile of build {self.build_id} lies within the prior ({prior.describe()})")
        return ids

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (n, d) float32 -> scores (n, k) float32 and ids (n, k) int64.

        Ids are tile ids; -1 marks an empty slot (k larger than the index). An exact flat index
        is searched by torch with the calling thread's pool; any other by FAISS with the
        runtime's search threads (`model.runtime.set_search_threads`) in the calling thread. A
        build split by region is searched region by region and the answers merged by score
        (ties by tile id).

        `allowed` (tile ids, ascending: `select`) restricts the search to those tiles, and only
        the regions that hold one of them are searched. The answer equals the index's exhaustive
        ranking with every other tile taken out: flat and HNSW indexes score the allowed tiles'
        stored vectors exactly (HNSW's graph is not used), as do IVF indexes that keep their
        exact vectors (`RerankView`); other IVF indexes scan all their lists with a FAISS
        IDSelector (`nprobe` = nlist). Ties are ordered by row (flat, HNSW) or by tile id (IVF).
        """
        if len(self.parts) == 1:
            part = self.parts[0]
            return part.search(queries, k) if allowed is None else part.search_within(queries, k, allowed)
        if allowed is None:
            answers = [part.search(queries, k) for part in self.parts]
        else:
            answers = [self.parts[at].search_within(queries, k, ids) for at, ids in self._split(allowed)]
        if not answers:  # no region holds an allowed tile: nothing to rank
            empty = np.full((len(queries), k), -1, dtype=np.int64)
            return np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32), empty
        scores = np.concatenate([s for s, _ in answers], axis=1)
        return _by_score_then_id(scores, np.concatenate([i for _, i in answers], axis=1), k)

    def searched_parts(self, allowed: np.ndarray | None = None) -> int:
        """How many of the indexes a search with `allowed` (None: no prior) reads."""
        return len(self.parts) if allowed is None or len(self.parts) == 1 else len(self._split(allowed))

    def _split(self, allowed: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(part position, its allowed ids) of each part holding one of `allowed`."""
        labels = self._part_of_tile[np.searchsorted(self.centres.ids, allowed)]
        return [(int(at), allowed[labels == at]) for at in np.unique(labels) if at >= 0]

    def lookup(self, ids: np.ndarray) -> list[TilePlace | None]:
        """The tile of each id (None for -1 or an id the catalogue lacks)."""
        return [self.tiles.get(int(i)) if i >= 0 else None for i in ids]


# Results beyond k fetched by a restricted IVF search, to order ties at the k-th score by id.
TIE_MARGIN = 32


def _compact(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k kept (scores, ids), padded with -FLT_MAX / -1."""
    out_s = np.full((len(ids), k), -np.finfo(np.float32).max, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for r in range(len(ids)):
        s, i = scores[r][keep[r]][:k], ids[r][keep[r]][:k]
        out_s[r, : len(s)], out_i[r, : len(i)] = s, i
    return out_s, out_i


def _by_score_then_id(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row ordered by score (best first) then tile id, empty slots last, cut to k."""
    out_s = np.full((len(ids), k), -np.finfo(np.float32).max, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for r in range(len(ids)):
        valid = ids[r] >= 0
        s, i = scores[r][valid], ids[r][valid]
        order = np.lexsort((i, -s))[:k]
        out_s[r, : len(order)], out_i[r, : len(order)] = s[order], i[order]
    return out_s, out_i


def resolve_index_dir(index_path: str, index_root: Path) -> Path:
    """A build's folder: `index_path` when it exists (absolute, or relative to the working
    directory), else the folder of that name under the index root (a moved or mounted index dir)."""
    path = Path(index_path).expanduser()
    return path if path.is_dir() else index_root / path.name


def check_meta(meta: Mapping[str, Any], index_dir: Path, weights_sha256: str, dim: int) -> None:
    """Refuse a build made with other weights or another descriptor size."""
    built_with = str(meta.get("weights_sha256", ""))
    if built_with != weights_sha256:
        raise IndexBuildError(
            f"{index_dir}: built with weights sha256 {built_with[:12] or '?'}..., "
            f"the service runs {weights_sha256[:12]}...; rebuild the index with these weights"
        )
    if int(meta.get("d", -1)) != dim:
        raise IndexBuildError(f"{index_dir}: descriptor size {meta.get('d')} != model output {dim}")


def read_checked_index(index_dir: Path, weights_sha256: str, dim: int) -> tuple[Any, dict[str, Any]]:
    """The build's FAISS index and metadata, checked against each other and the served model."""
    try:
        index, meta = read_index(index_dir)
    except IndexMismatch as exc:
        raise IndexBuildError(str(exc)) from exc
    check_meta(meta, index_dir, weights_sha256, dim)
    _set_nprobe(index, meta)
    return index, meta


def _set_nprobe(index: Any, meta: Mapping[str, Any]) -> None:
    if "nprobe" in meta:
        # IVF indexes search only `nprobe` lists; the build records the value it was tuned for.
        set_nprobe(index, int(meta["nprobe"]))


def read_checked_regions(
    index_dir: Path, weights_sha256: str, dim: int
) -> tuple[tuple[IndexPart, ...], dict[str, Any]] | None:
    """The region shards of a build split by region, each checked as a build's index is, and the
    build's metadata; None when the build is one index."""
    try:
        meta = read_meta(index_dir)
        if not region_shards.is_sharded(meta):
            return None
        parts = []
        for region, index, part_meta in region_shards.read_regions(index_dir):
            check_meta(part_meta, index_dir / region_shards.SHARDS_DIR / region.name, weights_sha256, dim)
            _set_nprobe(index, part_meta)
            parts.append(IndexPart(index, FlatView.of(index), region.name))
    except IndexMismatch as exc:
        raise IndexBuildError(str(exc)) from exc
    check_meta(meta, index_dir, weights_sha256, dim)
    return tuple(parts), meta


def load_snapshot(
    catalog: Catalog, build: BuildInfo, index_root: Path, weights_sha256: str, dim: int
) -> IndexSnapshot:
    """Load and check a build's index (or its region shards) and tiles. Blocking: call it from a
    worker thread."""
    if not build.index_path:
        raise IndexBuildError(f"build {build.id} has no index folder (status {build.status!r})")
    index_dir = resolve_index_dir(build.index_path, index_root)
    sharded = read_checked_regions(index_dir, weights_sha256, dim)
    index: Any = None
    flat: FlatView | None = None
    parts: tuple[IndexPart, ...] = ()
    if sharded is None:
        index, meta = read_checked_index(index_dir, weights_sha256, dim)
        flat = FlatView.of(index)
        ntotal = int(index.ntotal)
    else:
        parts, meta = sharded
        ntotal = sum(int(p.index.ntotal) for p in parts)
    tiles = catalog.places_of_build(build.id)
    if len(tiles) != ntotal:
        raise IndexBuildError(f"build {build.id}: {len(tiles)} tile rows for {ntotal} vectors")
    snapshot = IndexSnapshot(
        build_id=build.id,
        index=index,
        meta=meta,
        tiles=tiles,
        index_dir=index_dir,
        flat=flat,
        grid_m=grid_of(tiles.values()),
        regions=parts,
    )
    if parts:
        snapshot.check_regions()
    return snapshot


def grid_of(places: Iterable[TilePlace]) -> tuple[float, float] | None:
    """(tile side, stride) in metres of a build's tiles; None without tiles."""
    rows = np.array([(t.lat, t.lon, t.south, t.north) for t in places], dtype=float).reshape(-1, 4)
    if len(rows) == 0:
        return None
    return tile_grid(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
