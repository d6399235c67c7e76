"""Choosing an index that fits a memory budget (`cvm-index build --memory-budget`).

The rules follow autofaiss's choice of the "best" index for a RAM limit (criteo/autofaiss,
`get_optimal_index_keys_v2`, `get_optimal_nb_clusters`, `get_optimal_quantization`), with the
index's size measured the way `storage.faiss_index.estimate_memory` does (within 2 % of the
built index), not autofaiss's rougher estimate:

1. flat, when the collection is small enough to be searched exhaustively (below
   `FLAT_MAX_TILES`) and its vectors, ids and the int8 copy of the service's two-pass search
   fit;
2. HNSW with the largest M from 8 to 32 whose graph and vectors fit (autofaiss: "if we can
   build an HNSW with the given memory constraints, it's the best");
3. otherwise OPQ + IVF + PQ with 8-bit codes: the most sub-quantizers m (256, 128, 64, 48, 32, 24,
   16, 8, 4, fewer than the dimensions) whose codes, ids and fixed tables fit; OPQ rotates to
   d' = (min(d // m, 6) + 1) * m dims (a multiple of m, at most 7 m: 448 for d 1,024 and
   m 64, as autofaiss reduces); nlist is
   autofaiss's first choice for n (4 sqrt(n) rounded to a power of two below 1M vectors,
   16,384 below 10M, 65,536 above), with an HNSW32 coarse quantizer from 1,000 lists on.
   Such an index keeps the exact vectors on disk for re-ranking (`faiss_index.ExactVectors`).

Quantisation needs at least `QUANTIZE_MIN_TILES` vectors to train 8-bit codebooks (256 x 39
points); below that a budget that fits no exact index is refused.
"""

from __future__ import annotations

import math
import re

HNSW_M_MIN, HNSW_M_MAX = 8, 32
PQ_CHOICES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
QUANTIZE_MIN_TILES = 10_000
# A coarse quantizer this large is searched with HNSW instead of exhaustively.
HNSW_COARSE_MIN_LISTS = 1000
COARSE_HNSW_M = 32

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """A memory budget that is not a size, or that no index of the collection fits."""


def parse_size(text: str) -> int:
    """Bytes of a size such as 512MB (10^6), 2GiB (2^30), 1.5G (binary, like `ls -h`) or 1000000."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BudgetError(
            f"{text!r} is not a size: give a number with an optional unit B, KB, MB, GB, TB "
            "(powers of 1000), KiB, MiB, GiB, TiB or K, M, G, T (powers of 1024), e.g. 512MB or 2GiB"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise BudgetError(f"{text!r}: a memory budget must be more than 0 bytes")
    return size


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: autofaiss's first choice (FAISS's guidelines)."""
    if n < 1_000_000:
        return max(1, 2 ** round(math.log2(max(4 * math.sqrt(n), 1))))
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 2**17


def opq_dims(d: int, m: int) -> int:
    """autofaiss's OPQ output dims for m sub-quantizers: a multiple of m, at most 7 m."""
    return (min(d // m, 6) + 1) * m


def opq_factory(nlist: int, d: int, m: int) -> str:
    """OPQ{m}_{d'},IVF{nlist}[_HNSW32],PQ{m}x8 for vectors of d dims."""
    coarse = f"IVF{nlist}_HNSW{COARSE_HNSW_M}" if nlist >= HNSW_COARSE_MIN_LISTS else f"IVF{nlist}"
    return f"OPQ{m}_{opq_dims(d, m)},{coarse},PQ{m}x8"


def describe(size: float) -> str:
    """A byte count as people read it (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
