"""A build's parameters: fixed when the build is opened, stored as `Build.params` (JSON).

`BuildParams` is frozen; a stage that learns something new about the build (planning inspects
the rasters) derives a new object with `dataclasses.replace`. Its JSON form is the one stored
since the first version of the catalogue, key for key, so an interrupted build written by an
earlier version still resumes and `cvm-index info` shows the same thing.

`fingerprint()` is the identity of a build's inputs: the input files (with size and mtime), the
tile list, the tile size and stride, the index type, the memory budget (when one is given) and
the weights' hash. An unfinished build with the same fingerprint is resumed instead of starting
a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

from indexer.errors import IndexerError
from indexer.sources import RasterInfo


class FileIdent(NamedTuple):
    """A file as a build saw it; a changed size or mtime makes it another input.
    Stored (and hashed) as the JSON array [path, size, mtime_ns]."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdent:
        st = os.stat(path)
        return cls(path, st.st_size, st.st_mtime_ns)

    @classmethod
    def from_json(cls, value: Any) -> FileIdent:
        path, size, mtime_ns = value
        return cls(str(path), int(size), int(mtime_ns))


# The stored keys that identify a build's inputs (with the weights' hash, kept in its own column).
FINGERPRINT_KEYS = ("inputs", "tiles_csv", "tile_size_m", "stride_m", "index_type")
# Keys that join the identity only when set: builds written before they existed (without them)
# keep their fingerprint, so they still resume and load.
OPTIONAL_FINGERPRINT_KEYS = ("memory_budget", "region_km")


@dataclass(frozen=True)
class BuildParams:
    """What a build indexes and how; the same for every run of the build.

    inputs: the raster files; tiles_csv: the pre-cut tile list, if any; tile_size_m / stride_m:
    the tile grid in ground metres; index_type: as asked (auto, flat, ivfpq, hnsw); batch_size:
    tiles per forward pass; shard_size: tiles per resumable shard; activate: make the build the
    served one when it is published; missing_inputs: (spec, reason) of inputs that matched no
    file; weights_sha256: the weights' hash (stored in `Build.weights_sha256`, not in the
    JSON); sources: how each raster is read, once planning has inspected them (None before);
    memory_budget: bytes the index may take in RAM (`--memory-budget`; None: no budget, the
    index type decides); region_km: side of the region shards the index is split into
    (`--region-km`, `storage.regions`; None: one index).
    """

    inputs: tuple[FileIdent, ...]
    tiles_csv: FileIdent | None
    tile_size_m: float
    stride_m: float
    index_type: str
    batch_size: int
    shard_size: int
    activate: bool
    missing_inputs: tuple[tuple[str, str], ...]
    weights_sha256: str
    sources: tuple[RasterInfo, ...] | None = None
    memory_budget: int | None = None
    region_km: float | None = None

    def fingerprint(self) -> str:
        """Identity of the build's inputs: same fingerprint = the same index (resumable).

        The hash of the stored JSON values of FINGERPRINT_KEYS and the weights' hash, so that
        it equals the fingerprint stored with a build by any version.
        """
        stored = self._json_fields()
        ident = {k: stored[k] for k in FINGERPRINT_KEYS} | {"weights_sha256": self.weights_sha256}
        ident |= {k: stored[k] for k in OPTIONAL_FINGERPRINT_KEYS if stored.get(k) is not None}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def same_inputs(self, stored: dict[str, Any]) -> bool:
        """Whether a stored build (its `Build.params`) was made from these inputs."""
        return bool(stored.get("fingerprint") == self.fingerprint())

    @property
    def input_paths(self) -> list[str]:
        return [f.path for f in self.inputs]

    @property
    def raster_infos(self) -> dict[str, RasterInfo]:
        """The inspected rasters by path (empty before planning)."""
        return {info.path: info for info in self.sources or ()}

    def to_json(self) -> dict[str, Any]:
        """The `Build.params` column: JSON types only, keys in their stored order."""
        d = self._json_fields() | {"fingerprint": self.fingerprint()}
        if self.sources is not None:
            d["sources"] = {info.path: _json_types(info.to_dict()) for info in self.sources}
        return d

    def _json_fields(self) -> dict[str, Any]:
        # the budget and the regions only when given, after the keys of earlier versions
        budget: dict[str, Any] = {} if self.memory_budget is None else {"memory_budget": self.memory_budget}
        if self.region_km is not None:
            budget["region_km"] = self.region_km
        return {
            "inputs": [list(f) for f in self.inputs],
            "tiles_csv": None if self.tiles_csv is None else list(self.tiles_csv),
            "tile_size_m": self.tile_size_m,
            "stride_m": self.stride_m,
            "index_type": self.index_type,
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "activate": self.activate,
            "missing_inputs": [list(m) for m in self.missing_inputs],
        } | budget

    @classmethod
    def from_json(cls, stored: dict[str, Any], weights_sha256: str) -> BuildParams:
        """The parameters of a stored build (`Build.params` and `Build.weights_sha256`)."""
        try:
            csv = stored["tiles_csv"]
            sources = stored.get("sources")
            return cls(
                inputs=tuple(FileIdent.from_json(f) for f in stored["inputs"]),
                tiles_csv=None if csv is None else FileIdent.from_json(csv),
                tile_size_m=float(stored["tile_size_m"]),
                stride_m=float(stored["stride_m"]),
                index_type=str(stored["index_type"]),
                batch_size=int(stored["batch_size"]),
                shard_size=int(stored["shard_size"]),
                activate=bool(stored.get("activate", True)),
                missing_inputs=tuple((str(s), str(r)) for s, r in stored.get("missing_inputs", [])),
                weights_sha256=weights_sha256,
                sources=None if sources is None else tuple(RasterInfo.from_dict(d) for d in sources.values()),
                memory_budget=None if stored.get("memory_budget") is None else int(stored["memory_budget"]),
                region_km=None if stored.get("region_km") is None else float(stored["region_km"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexerError(
                f"stored build parameters are not readable ({type(exc).__name__}: {exc})"
            ) from None


def _json_types(value: Any) -> Any:
    """Tuples as lists, recursively: what the value reads back as from the JSON column."""
    if isinstance(value, tuple | list):
        return [_json_types(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_types(v) for k, v in value.items()}
    return value
