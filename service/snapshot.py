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
from storage.errors import IndexMismatch
from storage.faiss_index import read_index


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

    def inside(self, prior: Prior) -> np.ndarray:
        """Ids (ascending) of the tiles whose centre lies inside the prior."""
        return self.ids[prior.contains(self.lats, self.lons)]


@dataclass(frozen=True)
class IndexSnapshot:
    """A loaded build. `index` is only read (FAISS search is safe from several threads); `flat`
    is its torch search (`service.flat_search`) when it is an exact flat index."""

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

    def __post_init__(self) -> None:
        # the tiles' centres as arrays, made once per snapshot (selecting a prior's tiles)
        self.centres  # noqa: B018

    @cached_property
    def centres(self) -> TileCentres:
        """Every tile's centre, as arrays (`TileCentres`)."""
        return TileCentres.of(self.tiles)

    @property
    def ntotal(self) -> int:
        """Number of descriptors in the index."""
        return int(self.index.ntotal)

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
        runtime's search threads (`model.runtime.set_search_threads`) in the calling thread.

        `allowed` (tile ids, ascending: `select`) restricts the search to those tiles, and the
        answer equals the index's exhaustive ranking with every other tile taken out: flat and
        HNSW indexes score the allowed tiles' stored vectors exactly (HNSW's graph is not used),
        as do IVF indexes that keep their exact vectors (`RerankView`); other IVF indexes scan
        all their lists with a FAISS IDSelector (`nprobe` = nlist). Ties are ordered by row
        (flat, HNSW) or by tile id (IVF).
        """
        if allowed is not None:
            return self._search_within(queries, k, allowed)
        if self.flat is not None:
            return self.flat.search(queries, k)
        with omp_threads(search_threads()):
            scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    @cached_property
    def _exact(self) -> FlatView | None:
        """Exact search over the stored float32 vectors: the flat view, or one of HNSW's storage
        (one pass, with no int8 copy: an HNSW index chosen under a memory budget was sized
        without one, `storage.faiss_index.serving_bytes`)."""
        if self.flat is not None:
            return self.flat
        return FlatView.of(self.index, min_values_two_pass=2**62, hnsw=True)

    def _search_within(
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
    if "nprobe" in meta:
        # IVF indexes search only `nprobe` lists; the build records the value it was tuned for.
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(meta["nprobe"]))
    return index, meta


def load_snapshot(
    catalog: Catalog, build: BuildInfo, index_root: Path, weights_sha256: str, dim: int
) -> IndexSnapshot:
    """Load and check a build's index and tiles. Blocking: call it from a worker thread."""
    if not build.index_path:
        raise IndexBuildError(f"build {build.id} has no index folder (status {build.status!r})")
    index_dir = resolve_index_dir(build.index_path, index_root)
    index, meta = read_checked_index(index_dir, weights_sha256, dim)
    tiles = catalog.places_of_build(build.id)
    if len(tiles) != index.ntotal:
        raise IndexBuildError(f"build {build.id}: {len(tiles)} tile rows for {index.ntotal} vectors")
    return IndexSnapshot(
        build_id=build.id,
        index=index,
        meta=meta,
        tiles=tiles,
        index_dir=index_dir,
        flat=FlatView.of(index),
        grid_m=grid_of(tiles.values()),
    )


def grid_of(places: Iterable[TilePlace]) -> tuple[float, float] | None:
    """(tile side, stride) in metres of a build's tiles; None without tiles."""
    rows = np.array([(t.lat, t.lon, t.south, t.north) for t in places], dtype=float).reshape(-1, 4)
    if len(rows) == 0:
        return None
    return tile_grid(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
