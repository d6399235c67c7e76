"""Ground-to-satellite retrieval metrics computed from descriptor matrices.

Conventions (see docs/training.md and the model spec, section 6):

* query i is ground descriptor ``g[i]``; its true match is satellite descriptor ``s[i]``;
* distance ``d(i, j) = 2 - 2 <g_i, s_j>`` for any descriptors (for unit vectors this is the
  squared Euclidean distance; CVM-Net-II's unnormalised output is ranked the same way);
* ``rank_i`` = number of satellites strictly closer to query i than its true match, so ties
  count in the query's favour and rank 0 means "found first";
* recall@K = fraction of queries with ``rank < K``.

Two top-1% conventions exist: CVM-Net's own code uses ``K = int(0.01 N) + 1`` (89 for
N = 8,884); later papers use ``K = N // 100`` (88), at least 1. Both are reported.

Similarities are computed in float64, a block of query rows at a time, so N = 10,000 never
needs an N x N matrix in memory.

A query tried at several headings (a photo of unknown heading placed at h positions on the
panorama canvas) has h descriptors, ``grd`` of shape (h, n, d); its similarity to a satellite is
the largest of its h similarities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

EARTH_RADIUS_M = 6371008.8  # mean Earth radius (IUGG), metres
# Metres of great circle per degree of latitude on that sphere.
M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0

# Rows of the similarity matrix computed at once: about 64 MiB of float64 per block.
_BLOCK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval quality of N ground queries against N satellite references.

    Recalls are percentages (0-100). ``median_rank`` is the median number of satellites ranked
    above the true one (0 = always first). Distances are great-circle metres from the query's
    true location to the centre of the top-1 satellite; None when locations are unknown.
    """

    n: int
    r1: float
    r5: float
    r10: float
    r1pct: float
    r1pct_cvm: float
    k1pct: int
    k1pct_cvm: int
    median_rank: float
    median_error_m: float | None = None
    p90_error_m: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output and checkpoints."""
        return asdict(self)


def top1pct_k(n: int) -> tuple[int, int]:
    """The two top-1% cut-offs for N references: ``(N // 100 at least 1, int(0.01 N) + 1)``."""
    return max(1, n // 100), int(0.01 * n) + 1


def _check_descriptors(grd: np.ndarray, sat: np.ndarray) -> None:
    if grd.ndim not in (2, 3) or sat.ndim != 2:
        raise ValueError(f"descriptors must be (n, d) or ground (h, n, d); got {grd.shape} and {sat.shape}")
    if grd.shape[-2:] != sat.shape:
        raise ValueError(f"ground and satellite descriptors differ in shape: {grd.shape} vs {sat.shape}")
    if grd.shape[0] == 0:
        raise ValueError("no descriptors to evaluate (n = 0)")


def rank_queries(
    grd: np.ndarray, sat: np.ndarray, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rank every query against all satellites.

    grd, sat: (n, d) descriptors, row i of each forming the true pair; grd may be (h, n, d), the
    query at h headings (similarity: the largest over the headings).
    Returns ``(ranks, top1)``, both (n,) int64: ranks as defined in the module docstring, and the
    index of the satellite ranked first (the true one whenever its rank is 0, so that a tie with
    the true match is resolved in the query's favour here too).
    """
    _check_descriptors(grd, sat)
    g = grd if grd.ndim == 3 else grd[None]
    n = g.shape[1]
    s64 = np.ascontiguousarray(sat, dtype=np.float64)
    rows = block_rows or max(1, _BLOCK_ELEMENTS // n)
    ranks = np.empty(n, dtype=np.int64)
    top1 = np.empty(n, dtype=np.int64)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # Larger similarity = smaller distance 2 - 2 g.s; comparing similarities avoids the
        # rounding of the subtraction and gives exactly the same order.
        sim = np.max([np.asarray(h[start:stop], dtype=np.float64) @ s64.T for h in g], axis=0)
        idx = np.arange(start, stop)
        positive = sim[idx - start, idx]
        ranks[start:stop] = (sim > positive[:, None]).sum(axis=1)
        best = sim.argmax(axis=1)
        top1[start:stop] = np.where(ranks[start:stop] == 0, idx, best)
    return ranks, top1


def haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def metrics_from_ranks(
    ranks: np.ndarray,
    top1: np.ndarray | None = None,
    query_latlon: np.ndarray | None = None,
    ref_latlon: np.ndarray | None = None,
    gallery_size: int | None = None,
) -> RetrievalMetrics:
    """Summarise per-query ranks (n,) into `RetrievalMetrics`.

    query_latlon: (n, 2) true (lat, lon) of each query in degrees; ref_latlon: (n, 2) centre of
    each satellite reference. Both, plus `top1`, are needed for the distance errors.
    gallery_size: the number of references when it differs from the number of queries (a
    gallery of tiles, `rank_gallery`); the 1% cut-offs are taken of it.
    """
    ranks = np.asarray(ranks)
    n = int(ranks.shape[0])
    if n == 0:
        raise ValueError("no queries to evaluate (n = 0)")
    k1pct, k1pct_cvm = top1pct_k(n if gallery_size is None else gallery_size)

    def recall(k: int) -> float:
        return float(100.0 * np.mean(ranks < k))

    median_err = p90_err = None
    if top1 is not None and query_latlon is not None and ref_latlon is not None:
        q, r = np.asarray(query_latlon, dtype=np.float64), np.asarray(ref_latlon, dtype=np.float64)
        if q.shape != (n, 2) or r.shape != (n, 2):
            raise ValueError(f"locations must be ({n}, 2) (lat, lon); got {q.shape} and {r.shape}")
        best = r[np.asarray(top1)]
        err = haversine_m(q[:, 0], q[:, 1], best[:, 0], best[:, 1])
        median_err = float(np.median(err))
        p90_err = float(np.percentile(err, 90))
    return RetrievalMetrics(
        n=n,
        r1=recall(1),
        r5=recall(5),
        r10=recall(10),
        r1pct=recall(k1pct),
        r1pct_cvm=recall(k1pct_cvm),
        k1pct=k1pct,
        k1pct_cvm=k1pct_cvm,
        median_rank=float(np.median(ranks)),
        median_error_m=median_err,
        p90_error_m=p90_err,
    )


def retrieval_metrics(
    grd: np.ndarray,
    sat: np.ndarray,
    query_latlon: np.ndarray | None = None,
    ref_latlon: np.ndarray | None = None,
    block_rows: int | None = None,
) -> RetrievalMetrics:
    """Ground->satellite metrics of paired descriptors grd (n, d) (or (h, n, d)) and sat (n, d).

    query_latlon / ref_latlon: optional (n, 2) degrees; see `metrics_from_ranks`.
    """
    ranks, top1 = rank_queries(grd, sat, block_rows)
    return metrics_from_ranks(ranks, top1, query_latlon, ref_latlon)


def format_table(rows: dict[str, RetrievalMetrics]) -> str:
    """A plain-text table with one line per named result (e.g. model and baselines)."""
    header = f"{'':<12}{'N':>7}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'R@1%':>8}{'R@1%cvm':>9}{'med.rank':>10}"
    header += f"{'med.err m':>11}{'p90 err m':>11}"
    lines = [header]
    for name, m in rows.items():
        med = "-" if m.median_error_m is None else f"{m.median_error_m:.1f}"
        p90 = "-" if m.p90_error_m is None else f"{m.p90_error_m:.1f}"
        lines.append(
            f"{name:<12}{m.n:>7}{m.r1:>8.2f}{m.r5:>8.2f}{m.r10:>8.2f}{m.r1pct:>8.2f}"
            f"{m.r1pct_cvm:>9.2f}{m.median_rank:>10.1f}{med:>11}{p90:>11}"
        )
    lines.append(
        f"R@1% uses K = N//100 (= {_ks(rows)[0]}); R@1%cvm uses K = int(0.01 N)+1 (= {_ks(rows)[1]})."
    )
    return "\n".join(lines)


def _ks(rows: dict[str, RetrievalMetrics]) -> tuple[str, str]:
    ks = sorted({m.k1pct for m in rows.values()})
    kc = sorted({m.k1pct_cvm for m in rows.values()})
    return ",".join(map(str, ks)), ",".join(map(str, kc))


# --- Galleries of references (VIGOR), accepted sets (semi-positives), metre-level error ----------

# Thresholds (metres) of the metre-level localisation figures.
METRE_THRESHOLDS_M = (1.0, 5.0, 10.0, 25.0, 50.0)


@dataclass(frozen=True)
class GalleryRanks:
    """Per-query results of `rank_gallery` (all (n,) arrays).

    ranks: references strictly more similar than the query's positive; top1: the reference
    ranked first (the positive when its rank is 0); accepted_ranks: references strictly more
    similar than the best of the positive and the query's accepted references (0: the top-1 is
    one of them, VIGOR's "hit"; None when no accepted sets were given).
    """

    ranks: np.ndarray
    top1: np.ndarray
    accepted_ranks: np.ndarray | None


def rank_gallery(
    grd: np.ndarray,
    sat: np.ndarray,
    positive: np.ndarray,
    accepted: np.ndarray | None = None,
    block_rows: int | None = None,
) -> GalleryRanks:
    """Rank n queries against a gallery of m references that need not pair with them.

    grd: (n, d) query descriptors; sat: (m, d) reference descriptors; positive: (n,) index of
    each query's true reference. accepted: optional (n, k) indices of further references that
    also count as correct (VIGOR's semi-positives, CVACT's tiles within 5 m; -1 pads). Ranks
    follow the module's conventions (ties in the query's favour), also for `accepted_ranks`.
    """
    if grd.ndim != 2 or sat.ndim != 2 or grd.shape[1] != sat.shape[1]:
        raise ValueError(f"descriptors must be (n, d) and (m, d); got {grd.shape} and {sat.shape}")
    n, m = grd.shape[0], sat.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"nothing to rank: {n} queries, {m} references")
    positive = np.asarray(positive, dtype=np.int64)
    if positive.shape != (n,) or positive.min() < 0 or positive.max() >= m:
        raise ValueError(f"positive must be ({n},) indices into {m} references")
    acc = None
    if accepted is not None:
        acc = np.asarray(accepted, dtype=np.int64).reshape(n, -1)
        if acc.size and acc.max() >= m:
            raise ValueError(f"accepted indices must be below {m}")
    s64 = np.ascontiguousarray(sat, dtype=np.float64)
    rows = block_rows or max(1, _BLOCK_ELEMENTS // m)
    ranks = np.empty(n, dtype=np.int64)
    top1 = np.empty(n, dtype=np.int64)
    acc_ranks = np.empty(n, dtype=np.int64) if acc is not None else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = np.asarray(grd[start:stop], dtype=np.float64) @ s64.T
        local = np.arange(stop - start)
        pos = sim[local, positive[start:stop]]
        ranks[start:stop] = (sim > pos[:, None]).sum(axis=1)
        top1[start:stop] = np.where(ranks[start:stop] == 0, positive[start:stop], sim.argmax(axis=1))
        if acc is not None and acc_ranks is not None:
            block = acc[start:stop]
            acc_sim = np.where(block >= 0, sim[local[:, None], np.maximum(block, 0)], -np.inf)
            ok = np.maximum(pos, acc_sim.max(axis=1, initial=-np.inf))
            acc_ranks[start:stop] = (sim > ok[:, None]).sum(axis=1)
    return GalleryRanks(ranks, top1, acc_ranks)


@dataclass(frozen=True)
class MetreErrors:
    """Metre-level localisation of n queries located at their top-1 reference's centre.

    within_*: percentage of queries whose error is at most that many metres; median_m: the
    median error in metres.
    """

    n: int
    within_1m: float
    within_5m: float
    within_10m: float
    within_25m: float
    within_50m: float
    median_m: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metre_errors(err_m: np.ndarray) -> MetreErrors:
    """Summarise per-query localisation errors (metres) at `METRE_THRESHOLDS_M`."""
    err = np.asarray(err_m, dtype=np.float64).reshape(-1)
    if err.size == 0:
        raise ValueError("no errors to summarise (n = 0)")
    if not np.all(np.isfinite(err)) or err.min() < 0:
        raise ValueError("errors must be finite and non-negative metres")
    pct = [float(100.0 * np.mean(err <= t)) for t in METRE_THRESHOLDS_M]
    return MetreErrors(int(err.size), pct[0], pct[1], pct[2], pct[3], pct[4], float(np.median(err)))


def planar_errors_m(query_xy: np.ndarray, ref_xy: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Euclidean distance (metres) from each query's true position (n, 2) to the position of its
    top-1 reference, `ref_xy[top1]`, for coordinates already in metres (CVACT's UTM)."""
    q = np.asarray(query_xy, dtype=np.float64)
    r = np.asarray(ref_xy, dtype=np.float64)[np.asarray(top1)]
    return np.hypot(q[:, 0] - r[:, 0], q[:, 1] - r[:, 1])
