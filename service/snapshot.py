"""An immutable view of one index build: its FAISS index and its tiles, loaded together.

A request takes the current snapshot once and uses only it, so a build activated meanwhile never
mixes ids of one build with tiles of another.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.runtime import omp_threads, search_threads
from service.catalog import BuildInfo, Catalog, TilePlace
from service.errors import IndexBuildError
from service.flat_search import FlatView
from storage.errors import IndexMismatch
from storage.faiss_index import read_index


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

    @property
    def ntotal(self) -> int:
        """Number of descriptors in the index."""
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (n, d) float32 -> scores (n, k) float32 and ids (n, k) int64.

        Ids are tile ids; -1 marks an empty slot (k larger than the index). An exact flat index
        is searched by torch with the calling thread's pool; any other by FAISS with the
        runtime's search threads (`model.runtime.set_search_threads`) in the calling thread.
        """
        if self.flat is not None:
            return self.flat.search(queries, k)
        with omp_threads(search_threads()):
            scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def lookup(self, ids: np.ndarray) -> list[TilePlace | None]:
        """The tile of each id (None for -1 or an id the catalogue lacks)."""
        return [self.tiles.get(int(i)) if i >= 0 else None for i in ids]


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
        build_id=build.id, index=index, meta=meta, tiles=tiles, index_dir=index_dir, flat=FlatView.of(index)
    )
