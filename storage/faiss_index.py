"""FAISS indexes of tile descriptors: type choice, factory strings, train/add, recall, write/read.

Every index uses METRIC_INNER_PRODUCT over L2-normalised descriptors and carries the SQL tile ids
(`add_with_ids`). Flat and HNSW are wrapped in IDMap2 so that stored vectors can be
reconstructed by id (`cvm-index verify`); IVF-PQ takes ids natively. `index_meta.json` beside
`index.faiss` records factory, d, metric, ntotal, weights hash and build id and is checked at load.

A compressed (IVF-PQ) index keeps the exact float32 vectors beside it on disk (`ExactVectors`:
vectors.npy and vector_ids.npy, memory-mapped at load and checksummed in index_meta.json), so
that its approximate candidates can be re-ranked exactly; `exact_vectors_of(index)` gives them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.checkpoint import file_sha256
from storage import budget as budgets
from storage.errors import ExactVectorsError, IndexMismatch

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "index_meta.json"
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
# Below this many tiles an exact (flat) search is fast enough and needs no training.
FLAT_MAX_TILES = 50_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
RECALL_QUERIES, RECALL_K = 1000, 10
# An IVF index probes the fewest lists that reach this recall@10 on the build's own sample
# (`tune_nprobe`), as autofaiss tunes its indexes to a target.
RECALL_TARGET = 0.95
# ... unless recall stops rising first: a doubling of nprobe that gains less than this is a
# plateau, where the codes or the re-rank depth limit recall, not the lists probed, and more
# lists only cost time (measured at a million tiles: 0.912 at 32 lists, 0.907 at 2,048).
PLATEAU_GAIN = 0.005
VECTORS_FILE, VECTOR_IDS_FILE = "vectors.npy", "vector_ids.npy"
# Candidates re-ranked exactly per query: max(RERANK_FACTOR * k, RERANK_MIN).
RERANK_FACTOR, RERANK_MIN = 4, 100
# OPQ's rotation is trained in fewer rounds than FAISS's 50 (and its first codebooks in fewer
# k-means iterations than 40): the exact re-rank makes up for a less polished rotation, and each
# round trains every codebook again.
OPQ_NITER = 10
# Training points per inverted list of a budgeted index (FAISS warns below 39).
TRAIN_PER_LIST = 50


@dataclass(frozen=True)
class IndexSpec:
    """What to build: kind ("flat", "ivfpq", "hnsw"), its factory string and search parameters."""

    kind: str
    factory: str
    nprobe: int | None = None
    train_size: int = 0

    @property
    def rerank(self) -> bool:
        """Whether the index compresses its vectors, so that exact ones are kept for re-ranking."""
        return self.kind == "ivfpq"


def choose_spec(kind: str, n: int, d: int, budget: int | None = None) -> IndexSpec:
    """The index for `n` vectors of `d` dims; kind "auto" is flat below FLAT_MAX_TILES, else IVF-PQ.

    With a memory `budget` (bytes; kind must be "auto") the index is the best that fits it
    (`choose_within`)."""
    if budget is not None:
        if kind != "auto":
            raise budgets.BudgetError(f"a memory budget chooses the index type itself; it cannot be {kind!r}")
        return choose_within(n, d, budget)
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


def choose_within(n: int, d: int, budget: int) -> IndexSpec:
    """The index for n vectors of d dims whose size in RAM (`serving_bytes`) fits `budget`
    bytes, by the rules of `storage.budget`; BudgetError when none does."""
    tried: list[tuple[str, int]] = []  # (factory, bytes) of each index considered

    def fits(spec: IndexSpec) -> bool:
        tried.append((spec.factory, serving_bytes(spec, n, d)))
        return tried[-1][1] <= budget

    flat = IndexSpec("flat", "IDMap2,Flat")
    if n < FLAT_MAX_TILES and fits(flat):
        return flat
    for m in range(budgets.HNSW_M_MAX, budgets.HNSW_M_MIN - 1, -1):
        hnsw = IndexSpec("hnsw", f"IDMap2,HNSW{m}")
        if fits(hnsw):
            return hnsw
    if n < budgets.QUANTIZE_MIN_TILES:
        raise budgets.BudgetError(
            f"memory budget {budgets.describe(budget)} is too small for {n:,} tiles: the smallest "
            f"exact index ({tried[-1][0]}) needs {budgets.describe(tried[-1][1])}, and quantised "
            f"indexes need at least {budgets.QUANTIZE_MIN_TILES:,} tiles to train"
        )
    for m in budgets.PQ_CHOICES:
        if m < d:
            spec = quantised_spec(n, d, m)
            if fits(spec):
                return spec
    raise budgets.BudgetError(
        f"memory budget {budgets.describe(budget)} is too small for {n:,} tiles of {d} dims: "
        f"the smallest index tried ({tried[-1][0]}) needs {budgets.describe(tried[-1][1])}"
    )


def quantised_spec(n: int, d: int, m: int) -> IndexSpec:
    """OPQ + IVF (+ HNSW coarse quantizer) + PQ with m 8-bit codes, for n vectors (storage.budget)."""
    nlist = budgets.nlist_for(n)
    # a list needs points to train on: no more lists than n / 39 (a power of two, as autofaiss's)
    nlist = min(nlist, 2 ** int(math.log2(max(1, n // 39))))
    factory = budgets.opq_factory(nlist, d, m)
    nprobe = min(nlist, max(1, nlist // 8, 16))
    train = min(n, max(TRAIN_PER_LIST * nlist, 256 * 39))
    return IndexSpec("ivfpq", factory, nprobe=nprobe, train_size=train)


def serving_bytes(spec: IndexSpec, n: int, d: int) -> int:
    """What serving an index of `spec` takes in RAM: the index as loaded, and for a flat index the
    int8 copy of its vectors the service's two-pass search keeps (d bytes per vector)."""
    extra = n * d if spec.kind == "flat" else 0
    return estimate_memory(spec, n, d).total + extra


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
    of nbits + an int64 id per vector, plus nlist centroids and 2^nbits x d codebook floats;
    with OPQ the vectors are rotated to d' dims first (a d' x d matrix), and an HNSW coarse
    quantizer adds its links per list.
    """
    if spec.kind == "flat":
        return MemoryEstimate(4.0 * d + 8, 0, n)
    if spec.kind == "hnsw":
        m = int(re.findall(r"HNSW(\d+)", spec.factory)[0])
        return MemoryEstimate(4.0 * d + 8 + _hnsw_links(m), 0, n)
    opq = re.match(r"OPQ(\d+)_(\d+),", spec.factory)
    dims = int(opq.group(2)) if opq else d
    rotation = 4 * (dims * d + dims) if opq else 0  # the matrix and its bias
    nlist = int(re.findall(r"IVF(\d+)", spec.factory)[0])
    m, nbits = (int(v) for v in re.findall(r"PQ(\d+)x(\d+)", spec.factory)[0])
    coarse = 4 * dims * nlist
    hnsw = re.findall(r"IVF\d+_HNSW(\d+)", spec.factory)
    if hnsw:
        coarse += int(nlist * (_hnsw_links(int(hnsw[0])) + 8))  # its ids... a level, an offset
    return MemoryEstimate(m * nbits / 8 + 8, rotation + coarse + 4 * dims * 2**nbits, n)


def _hnsw_links(m: int) -> float:
    """Bytes per vector of an HNSW graph: 2M links of level 0, about M more on the upper levels
    (1/M of vectors each), a level and an offset."""
    return 4.0 * (2 * m + m / (m - 1)) + 4 + 8


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
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        # the factory turns on polysemous training, for Hamming-filtered search that is not
        # used here; it multiplies the training time several times over
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
        set_nprobe(index, spec.nprobe)
    outer: Any = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        chain: Any = outer.chain  # (its stubs type it as a list)
        opq: Any = faiss.downcast_VectorTransform(chain.at(0))
        if isinstance(opq, faiss.OPQMatrix):
            opq.niter = opq.niter_pq_0 = OPQ_NITER
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    """Probe `nprobe` lists of an IVF index, and let its HNSW coarse quantizer (if any) explore
    twice as many candidates (autofaiss's pairing; at least HNSW_EF_SEARCH)."""
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.nprobe = int(nprobe)
    quantizer: Any = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(2 * int(nprobe), HNSW_EF_SEARCH)


def tune_nprobe(
    index: Any, queries: np.ndarray, truth: np.ndarray, most: int
) -> tuple[int, float, list[tuple[int, float]]]:
    """The smallest nprobe (1, 2, 4, ... up to `most`) whose recall@10 against exact search, as
    the service searches (with the exact re-rank when the index keeps its vectors), reaches
    RECALL_TARGET; short of that, the last before recall stops rising (a doubling that gains less
    than PLATEAU_GAIN), or `most`. Leaves the index probing that many lists. `truth`: the
    queries' exact top ids (`exact_top`).
    Returns (nprobe, its recall, every (nprobe, recall) tried)."""
    k = truth.shape[1]
    tried: list[tuple[int, float]] = []
    nprobe = 1
    while True:
        nprobe = min(nprobe, most)
        set_nprobe(index, nprobe)
        tried.append((nprobe, recall_at_k(search(index, queries, k)[1], truth)))
        if tried[-1][1] >= RECALL_TARGET or nprobe >= most:
            return nprobe, tried[-1][1], tried
        if len(tried) > 1 and tried[-1][1] - tried[-2][1] < PLATEAU_GAIN:
            set_nprobe(index, tried[-2][0])
            return tried[-2][0], tried[-2][1], tried
        nprobe *= 2


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


def measure_recall(
    index: Any, queries: np.ndarray, db: Iterable[np.ndarray], ids: np.ndarray, rerank: bool | None = None
) -> float:
    """recall@10 of `index` against exact inner-product search over the same vectors.

    queries: (q, d) float32; db: the (n_i, d) float32 blocks of database vectors in the order
    their ids `ids` (n,) int64 were added. Exact search streams over the blocks.
    rerank: whether to re-rank candidates with the index's exact vectors (`exact_vectors_of`) as
    the service does; None: when the index has them.
    """
    return measure_recalls(index, queries, exact_top(queries, db, ids), (rerank,))[0]


def measure_recalls(
    index: Any, queries: np.ndarray, truth: np.ndarray, reranks: tuple[bool | None, ...] = (False, True)
) -> list[float]:
    """recall@10 of `index` (`measure_recall`) for each re-rank setting, against the queries'
    exact top ids `truth` (`exact_top`: one exact search for them all)."""
    k = truth.shape[1]
    return [recall_at_k(search(index, queries, k, rerank)[1], truth) for rerank in reranks]


def exact_top(queries: np.ndarray, db: Iterable[np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Ids of each query's exact top min(RECALL_K, n) over the blocks `db` of the vectors of `ids`."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    k = min(RECALL_K, len(ids))
    _, positions = knn_ground_truth(queries, db, k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    return np.asarray(ids[positions])


def search(
    index: Any, queries: np.ndarray, k: int, rerank: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """index.search, with the exact re-rank of the candidates when the index keeps its exact
    vectors (rerank None or True): max(4k, 100) candidates, ranked by their exact scores."""
    exact = exact_vectors_of(index)
    if exact is None or rerank is False:
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids
    wanted = min(int(index.ntotal), rerank_candidates(k))
    _, candidates = index.search(np.ascontiguousarray(queries, dtype=np.float32), wanted)
    return exact.rerank(queries, candidates, k)


def rerank_candidates(k: int) -> int:
    """How many candidates of a compressed index are re-ranked exactly for k results."""
    return max(RERANK_FACTOR * k, RERANK_MIN)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; both (q, k) int64."""
    k = exact_ids.shape[1]
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) / k if hits else 1.0


def write_index(index: Any, folder: Path, meta: dict[str, Any]) -> None:
    """Write index.faiss and index_meta.json into `folder` (a not-yet-published temporary folder),
    and move the index's exact vectors (`exact_vectors_of`), if any, beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    full = {
        "metric": "inner_product",
        "d": int(index.d),
        "ntotal": int(index.ntotal),
        **meta,
        "index_sha256": file_sha256(folder / INDEX_FILE),
    }
    names = [INDEX_FILE, META_FILE]
    exact = exact_vectors_of(index)
    if exact is not None:
        for name in (VECTORS_FILE, VECTOR_IDS_FILE):
            if exact.folder.resolve() != folder.resolve():
                # a rename within the index folder's file system (the maps stay valid)
                shutil.move(str(exact.folder / name), str(folder / name))
        names += [VECTORS_FILE, VECTOR_IDS_FILE]
        full |= {"vectors_sha256": exact.vectors_sha256, "vector_ids_sha256": exact.ids_sha256}
        full |= {"rerank": {"factor": RERANK_FACTOR, "min": RERANK_MIN}}
    (folder / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
    for name in names:
        fsync_path(folder / name)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries, after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(build_dir: Path) -> dict[str, Any]:
    """A build's index_meta.json; IndexMismatch when it cannot be read."""
    path = Path(build_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexMismatch(f"{path}: cannot read index metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise IndexMismatch(f"{path}: index metadata is not an object")
    return meta


def read_index(build_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The index of a build folder and its metadata; IndexMismatch when they disagree or are unreadable."""
    build_dir = Path(build_dir)
    meta_path, index_path = build_dir / META_FILE, build_dir / INDEX_FILE
    meta = read_meta(build_dir)
    if not {"d", "ntotal", "factory", "metric"} <= set(meta):
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
    if "vectors_sha256" in meta:
        attach_exact(index, open_exact_vectors(build_dir, meta))
    return index, meta


# ------------------------------------------------------------------------------- exact vectors


@dataclass(frozen=True)
class ExactVectors:
    """The float32 vectors of a compressed index, on disk in tile-id order (memory-mapped).

    ids: (n,) int64, strictly increasing; vectors: (n, d) float32, row i that of ids[i].
    """

    folder: Path
    ids: np.ndarray
    vectors: np.ndarray
    vectors_sha256: str
    ids_sha256: str

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The rows of tile ids `ids` (-1 where an id is not stored)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[at] == ids, at, -1).astype(np.int64)

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each query's candidate ids (q, c) by exact score, ties by id; slots past
        the candidates hold id -1 and score -FLT_MAX, as FAISS's."""
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for r, (q, cand) in enumerate(zip(queries, candidates, strict=True)):
            cand = np.unique(cand[cand >= 0])
            rows = self.rows_of(cand)
            cand, rows = cand[rows >= 0], rows[rows >= 0]
            exact = (self.vectors[rows] @ np.asarray(q, dtype=np.float32)).astype(np.float32)
            order = np.lexsort((cand, -exact))[:k]
            scores[r, : len(order)], out[r, : len(order)] = exact[order], cand[order]
        return scores, out


_EXACT: weakref.WeakKeyDictionary[Any, ExactVectors] = weakref.WeakKeyDictionary()


def attach_exact(index: Any, exact: ExactVectors) -> None:
    """Keep `exact` with `index` (FAISS objects take no new attributes) for as long as it lives."""
    _EXACT[index] = exact


def exact_vectors_of(index: Any) -> ExactVectors | None:
    """The exact vectors kept with `index` (by read_index or attach_exact), or None."""
    try:
        return _EXACT.get(index)
    except TypeError:  # not weak-referenceable: nothing was attached
        return None


def write_exact_vectors(
    folder: Path, blocks: Iterable[tuple[np.ndarray, np.ndarray]], n: int, d: int
) -> ExactVectors:
    """Write vectors.npy and vector_ids.npy into `folder` from (ids, vectors) blocks given in
    increasing id order, n vectors of d dims in all; returns them memory-mapped."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(folder / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(n, d))
    ids = np.lib.format.open_memmap(folder / VECTOR_IDS_FILE, mode="w+", dtype=np.int64, shape=(n,))
    at = 0
    for block_ids, block in blocks:
        if at + len(block_ids) > n:
            raise ValueError(f"{folder}: more than the {n} vectors announced")
        vectors[at : at + len(block_ids)] = block
        ids[at : at + len(block_ids)] = block_ids
        at += len(block_ids)
    if at != n or (n > 1 and np.any(np.diff(ids) <= 0)):
        raise ValueError(f"{folder}: {at} vectors written of {n}, or ids not increasing")
    vectors.flush()
    ids.flush()
    del vectors, ids
    return _map_exact(folder, file_sha256(folder / VECTORS_FILE), file_sha256(folder / VECTOR_IDS_FILE))


def _map_exact(folder: Path, vectors_sha256: str, ids_sha256: str) -> ExactVectors:
    ids = np.load(folder / VECTOR_IDS_FILE, mmap_mode="r")
    vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    return ExactVectors(folder, ids, vectors, vectors_sha256, ids_sha256)


def open_exact_vectors(build_dir: Path, meta: dict[str, Any]) -> ExactVectors:
    """The exact vectors of a build, checked against index_meta.json: present, unchanged
    (sha256), of the index's shape, ids increasing; ExactVectorsError naming the file if not."""
    n, d = int(meta["ntotal"]), int(meta["d"])
    for name, key in ((VECTORS_FILE, "vectors_sha256"), (VECTOR_IDS_FILE, "vector_ids_sha256")):
        path = build_dir / name
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise ExactVectorsError(
                f"{path}: cannot read the exact vectors the index is re-ranked with "
                f"({exc.strerror or exc}); rebuild the index"
            ) from None
        if actual != meta.get(key):
            raise ExactVectorsError(
                f"{path}: checksum mismatch, the file changed after its build wrote it "
                f"(sha256 {actual[:12]}..., {META_FILE} says {str(meta.get(key))[:12]}...)"
            )
    try:
        exact = _map_exact(build_dir, str(meta["vectors_sha256"]), str(meta["vector_ids_sha256"]))
    except (OSError, ValueError) as exc:
        raise ExactVectorsError(f"{build_dir / VECTORS_FILE}: unreadable exact vectors ({exc})") from None
    if exact.vectors.shape != (n, d) or exact.vectors.dtype != np.float32 or exact.ids.shape != (n,):
        raise ExactVectorsError(
            f"{build_dir / VECTORS_FILE}: holds {exact.vectors.shape} {exact.vectors.dtype} vectors "
            f"and {exact.ids.shape} ids, the index {n} vectors of {d} dims"
        )
    if n > 1 and np.any(np.diff(exact.ids) <= 0):
        raise ExactVectorsError(f"{build_dir / VECTOR_IDS_FILE}: tile ids are not increasing")
    return exact


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


def index_ids(index: Any) -> np.ndarray:
    """(ntotal,) int64 ids held by an IDMap or IVF index, sorted."""
    idmap = getattr(faiss.downcast_index(index), "id_map", None)
    if idmap is not None:
        return np.sort(faiss.vector_to_array(idmap).astype(np.int64))
    invlists: Any = faiss.extract_index_ivf(index).invlists
    parts = []
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


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


def index_figures(build_dir: Path, queries: int = 100) -> dict[str, Any]:
    """What `cvm-index info` reports of a build's index: type and factory, bytes per tile in RAM
    (the loaded index) and on disk (its files), and recall@10 against exact search of `queries`
    stored vectors (spread evenly over the index) used as queries, with and without the exact
    re-rank (None where the index has none; no recall for an IVF-PQ index without its exact
    vectors, from before they were kept). Reads and checks the index (`read_index`). A build
    split by region: `storage.regions.build_figures`."""
    index, meta = read_index(build_dir)
    n = int(index.ntotal)
    exact = exact_vectors_of(index)
    files = [INDEX_FILE] + ([VECTORS_FILE, VECTOR_IDS_FILE] if exact is not None else [])
    disk = sum((build_dir / name).stat().st_size for name in files)
    figures: dict[str, Any] = {
        "index_type": meta.get("index_type"),
        "factory": meta["factory"],
        "ntotal": n,
        "memory_budget": meta.get("memory_budget"),
        "ram_bytes_per_tile": index_bytes(index) / max(n, 1),
        "disk_bytes_per_tile": disk / max(n, 1),
        "exact_vectors": exact is not None,
        "recall_queries": 0,
        "recall_at_10": None,
        "recall_at_10_rerank": None,
    }
    if not n or queries <= 0 or (exact is None and _ivf_or_none(index) is not None):
        # an IVF-PQ index built before exact vectors were kept stores only its codes: nothing
        # exact to measure against here (its build measured recall@10, in Build.stats)
        return figures
    if exact is not None:
        ids, blocks = np.asarray(exact.ids), _row_blocks(exact.vectors)
    else:
        outer: Any = faiss.downcast_index(index)
        ids = (
            faiss.vector_to_array(outer.id_map).astype(np.int64) if hasattr(outer, "id_map") else np.arange(n)
        )
        blocks = _row_blocks(_stored_matrix(index, ids))
    rows = np.unique(np.linspace(0, n - 1, min(queries, n)).astype(np.int64))
    sample = exact.vectors[rows] if exact is not None else _stored_matrix(index, ids[rows])
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    reranks: tuple[bool | None, ...] = (False, True) if exact is not None else (False,)
    recalls = measure_recalls(index, sample, exact_top(sample, blocks, ids), reranks)
    figures |= {"recall_queries": len(rows), "recall_at_10": recalls[0]}
    if exact is not None:
        figures["recall_at_10_rerank"] = recalls[1]
    return figures


def _row_blocks(matrix: np.ndarray, rows: int = 65536) -> Iterator[np.ndarray]:
    for at in range(0, len(matrix), rows):
        yield np.ascontiguousarray(matrix[at : at + rows], dtype=np.float32)


def _stored_matrix(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored float32 vectors of a flat or HNSW index for ids (a view of flat storage when
    all are asked in stored order, else reconstructed)."""
    outer: Any = faiss.downcast_index(index)
    inner: Any = faiss.downcast_index(outer.index) if hasattr(outer, "id_map") else outer
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexFlat) and len(ids) == inner.ntotal:
        return _flat_vectors(inner).reshape(len(ids), int(inner.d))
    return stored_vectors(index, ids)
