"""FAISS indexes of tile descriptors: type choice, factory strings, train/add, recall, write/read.

Every index uses METRIC_INNER_PRODUCT over L2-normalised descriptors and carries the SQL tile ids
(`add_with_ids`). Flat and HNSW are wrapped in IDMap2 so that stored vectors can be
reconstructed by id (`cvm-index verify`); IVF-PQ takes ids natively. `index_meta.json` beside
`index.faiss` records factory, d, metric, ntotal, weights hash and build id and is checked at load.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.checkpoint import file_sha256
from storage.errors import IndexMismatch

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "index_meta.json"
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
# Below this many tiles an exact (flat) search is fast enough and needs no training.
FLAT_MAX_TILES = 50_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
RECALL_QUERIES, RECALL_K = 1000, 10


@dataclass(frozen=True)
class IndexSpec:
    """What to build: kind ("flat", "ivfpq", "hnsw"), its factory string and search parameters."""

    kind: str
    factory: str
    nprobe: int | None = None
    train_size: int = 0


def choose_spec(kind: str, n: int, d: int) -> IndexSpec:
    """The index for `n` vectors of `d` dims; kind "auto" is flat below FLAT_MAX_TILES, else IVF-PQ."""
    if kind == "auto":
        kind = "flat" if n < FLAT_MAX_TILES else "ivfpq"
    if kind == "flat":
        return IndexSpec("flat", "IDMap2,Flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", f"IDMap2,HNSW{HNSW_M}")
    if kind != "ivfpq":
        raise ValueError(f"unknown index type {kind!r}; expected auto or one of {', '.join(INDEX_TYPES)}")
    # ~4 sqrt(n) lists with >= 39 training points each (FAISS's k-means minimum per centroid)
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = _pq_subquantizers(d)
    # 8-bit codes want 256 x 39 training points; small collections get fewer bits per code
    nbits = max(4, min(8, int(math.log2(max(n, 16) / 39)) if n >= 16 * 39 else 4))
    nprobe = min(nlist, max(1, nlist // 8, 16))
    train = min(n, max(nlist, 2**nbits) * 256)
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}x{nbits}", nprobe=nprobe, train_size=train)


@dataclass(frozen=True)
class MemoryEstimate:
    """What an index of `spec` for n vectors of d dims takes: bytes per vector x n + fixed bytes
    (coarse centroids and PQ codebooks), the size `index_bytes` measures once it is built."""

    per_vector: float
    fixed: int
    n: int

    @property
    def total(self) -> int:
        return int(round(self.per_vector * self.n)) + self.fixed


def estimate_memory(spec: IndexSpec, n: int, d: int) -> MemoryEstimate:
    """The serialized (= loaded) size of the index `spec` would build, before building it.

    flat: d float32 + an int64 id per vector; HNSW: the same plus its links (2M neighbours of
    4 bytes on level 0, about M more on the upper levels, a level and an offset); IVF-PQ: m codes
    of nbits + an int64 id per vector, plus nlist centroids and 2^nbits x d codebook floats.
    """
    if spec.kind == "flat":
        return MemoryEstimate(4.0 * d + 8, 0, n)
    if spec.kind == "hnsw":
        m = HNSW_M
        links = 4.0 * (2 * m + m / (m - 1))  # level 0, and M per upper level (1/M of vectors each)
        return MemoryEstimate(4.0 * d + 8 + links + 4 + 8, 0, n)
    nlist, pq = spec.factory.removeprefix("IVF").split(",PQ")
    m, nbits = (int(v) for v in pq.split("x"))
    return MemoryEstimate(m * nbits / 8 + 8, 4 * d * (int(nlist) + 2**nbits), n)


def _pq_subquantizers(d: int) -> int:
    """Sub-quantizers for PQ: 4 dims each (d/4 bytes per vector at 8 bits) when that divides d."""
    for dims in (4, 8, 2, 1):
        if d % dims == 0:
            return d // dims
    return d


def new_index(spec: IndexSpec, d: int) -> Any:
    """An empty index for `spec` (METRIC_INNER_PRODUCT), with its search parameters set."""
    index = faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        wrapper: Any = faiss.downcast_index(index)
        hnsw: Any = faiss.downcast_index(wrapper.index)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
    if spec.nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    return index


def train(index: Any, spec: IndexSpec, sample: np.ndarray, use_gpu: bool = False) -> Any:
    """Train `index` on `sample` (n, d) float32 when it needs it; on the GPU for IVF when asked."""
    if index.is_trained:
        return index
    if use_gpu and spec.kind == "ivfpq" and faiss.get_num_gpus() > 0:
        try:
            gpu = faiss.index_cpu_to_all_gpus(index)
            gpu.train(sample)
            return faiss.index_gpu_to_cpu(gpu)
        except RuntimeError as exc:
            # configurations the GPU does not support train on the CPU instead
            log.warning("GPU training of the %s index failed (%s); training on the CPU", spec.kind, exc)
    index.train(sample)
    return index


def measure_recall(index: Any, queries: np.ndarray, db: Iterable[np.ndarray], ids: np.ndarray) -> float:
    """recall@10 of `index` against exact inner-product search over the same vectors.

    queries: (q, d) float32; db: the (n_i, d) float32 blocks of database vectors in the order
    their ids `ids` (n,) int64 were added. Exact search streams over the blocks.
    """
    from faiss.contrib.exhaustive_search import knn_ground_truth

    k = min(RECALL_K, len(ids))
    _, positions = knn_ground_truth(queries, db, k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    _, approx = index.search(queries, k)
    return recall_at_k(approx, ids[positions])


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; both (q, k) int64."""
    k = exact_ids.shape[1]
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) / k if hits else 1.0


def write_index(index: Any, folder: Path, meta: dict[str, Any]) -> None:
    """Write index.faiss and index_meta.json into `folder` (a not-yet-published temporary folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    full = {
        "metric": "inner_product",
        "d": int(index.d),
        "ntotal": int(index.ntotal),
        **meta,
        "index_sha256": file_sha256(folder / INDEX_FILE),
    }
    (folder / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
    for name in (INDEX_FILE, META_FILE):
        fsync_path(folder / name)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries, after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(build_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The index of a build folder and its metadata; IndexMismatch when they disagree or are unreadable."""
    build_dir = Path(build_dir)
    meta_path, index_path = build_dir / META_FILE, build_dir / INDEX_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexMismatch(f"{meta_path}: cannot read index metadata ({exc})") from None
    if not isinstance(meta, dict) or not {"d", "ntotal", "factory", "metric"} <= set(meta):
        raise IndexMismatch(f"{meta_path}: index metadata lacks factory/d/metric/ntotal")
    # The checksum comes first: a damaged file can announce sizes that FAISS would try to
    # allocate before noticing anything wrong. Builds written before checksums were recorded
    # are read without one.
    expected = meta.get("index_sha256")
    if expected is not None:
        try:
            actual = file_sha256(index_path)
        except OSError as exc:
            raise IndexMismatch(f"{index_path}: cannot read the index ({exc.strerror or exc})") from None
        if actual != expected:
            raise IndexMismatch(
                f"{index_path}: checksum mismatch, the file changed after its build wrote it "
                f"(sha256 {actual[:12]}..., {META_FILE} says {str(expected)[:12]}...)"
            )
    try:
        index = faiss.read_index(str(index_path))
    except (RuntimeError, MemoryError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        raise IndexMismatch(f"{index_path}: unreadable FAISS index ({reason})") from None
    if index.d != int(meta["d"]) or index.ntotal != int(meta["ntotal"]):
        raise IndexMismatch(
            f"{build_dir}: index holds {index.ntotal} vectors of {index.d} dims, "
            f"{META_FILE} says {meta['ntotal']} of {meta['d']}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or meta["metric"] != "inner_product":
        raise IndexMismatch(f"{build_dir}: index metric is not inner product")
    bad = first_non_finite(index)
    if bad is not None:
        raise IndexMismatch(f"{index_path}: {bad} holds a value that is not finite (NaN or infinity)")
    return index, meta


def first_non_finite(index: Any) -> str | None:
    """The name of the first float array of `index` holding NaN or infinity, or None.

    Checked: the stored vectors of flat and HNSW indexes, and the coarse centroids and PQ
    codebooks of IVF-PQ indexes (whose codes are integers). One NaN there would turn every
    search's scores into NaN.
    """
    for name, array in _float_arrays(index):
        for start in range(0, array.size, 1 << 22):
            if not np.isfinite(array[start : start + (1 << 22)]).all():
                return name
    return None


def _float_arrays(index: Any) -> Iterator[tuple[str, np.ndarray]]:
    inner: Any = faiss.downcast_index(index)
    if hasattr(inner, "id_map"):  # IDMap / IDMap2 wrap the real index
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexFlat):
        yield "the stored vectors", _flat_vectors(inner)
        return
    ivf = _ivf_or_none(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexFlat):
            yield "the coarse centroids", _flat_vectors(quantizer)
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None:
            yield "the PQ codebooks", faiss.vector_to_array(pq.centroids)


def _flat_vectors(flat: Any) -> np.ndarray:
    """The (ntotal * d,) float32 storage of a flat index, as a view (no copy)."""
    n = int(flat.ntotal) * int(flat.d)
    if n == 0:
        return np.zeros(0, np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n)


def stored_vectors(index: Any, ids: np.ndarray) -> np.ndarray:
    """(n, d) vectors stored for `ids` (decoded approximations for PQ indexes)."""
    ivf = _ivf_or_none(index)
    direct_map: Any = getattr(faiss, "DirectMap")  # noqa: B009 (absent from faiss's type stubs)
    if ivf is not None and ivf.direct_map.type == direct_map.NoMap:
        ivf.set_direct_map_type(direct_map.Hashtable)
    return np.stack([index.reconstruct(int(i)) for i in ids]).astype(np.float32)


def encode_decode(index: Any, x: np.ndarray) -> np.ndarray:
    """What `index` would store for vectors x (n, d): x itself for exact storage, else decoded codes."""
    if _ivf_or_none(index) is None:
        return x
    return index.sa_decode(index.sa_encode(x))


def _ivf_or_none(index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def index_bytes(index: Any) -> int:
    """Serialized size of `index` in bytes (what it takes on disk and, loaded, in memory)."""
    return int(faiss.serialize_index(index).nbytes)
