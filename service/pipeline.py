"""Localisation from upload to ranked tiles: what `/localize` and `cvm localize` call.

Stages (timed, in ms): decode, preprocess, queue (waiting for a batch to form / the previous batch),
forward, search, database (tile lookup in the snapshot), total.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from model.runtime import claim_pool, compute_single_threaded
from service.batcher import MicroBatcher
from service.catalog import TilePlace
from service.familiarity import embed_recording
from service.localizer import Localizer
from service.locate import LocationEstimate, estimate_params, locate
from service.prior import Prior
from service.snapshot import IndexSnapshot
from service.store import SnapshotStore

# Decoding takes about a third of a forward pass's time per image, so a quarter of the cores keep
# the forward fed; on 2 cores one thread served as many requests/s as two, with less preemption.
DECODE_THREADS = max(1, (os.cpu_count() or 1) // 4)
STAGES = ("decode", "preprocess", "queue", "forward", "search", "database", "total")


@dataclass(frozen=True)
class Query:
    """One prepared image waiting for a forward pass: (m, 3, H, W) input (m > 1: a photo tried
    at m headings), its build, its k, and whether it is an ordinary photo (`kind`)."""

    x: torch.Tensor
    snapshot: IndexSnapshot
    k: int
    photo: bool = False
    # tile ids (ascending) the search is restricted to (a prior: `IndexSnapshot.select`); None: all
    allowed: np.ndarray | None = None


@dataclass(frozen=True)
class Match:
    """Search result of one query: tile ids (k,) int64, scores (k,) float32, stage seconds."""

    ids: np.ndarray
    scores: np.ndarray
    forward_s: float
    search_s: float
    # The query's familiarity features, one row per input (`service.familiarity`); None: not taken.
    features: np.ndarray | None = None


@dataclass(frozen=True)
class Candidate:
    """A ranked tile (rank 1 = best); score is the descriptor inner product (cosine)."""

    rank: int
    score: float
    tile: TilePlace


@dataclass(frozen=True)
class LocalizeResult:
    """Everything `/localize` answers."""

    candidates: list[Candidate]
    build_id: int
    kind: str
    timings_ms: dict[str, float]
    batch_size: int
    # Where the query most likely is, from the consensus of the best tiles (`service.locate`).
    estimate: LocationEstimate | None = None
    # The top `heat` tiles of the same search as (lon, lat, score), best first (`heat_points`).
    heat: list[tuple[float, float, float]] = field(default_factory=list)
    # The query's familiarity features (m, dim) (`service.familiarity`), for `cvm calibrate`.
    query_features: np.ndarray | None = None


def run_batch(localizer: Localizer, queries: Sequence[Query]) -> list[Match]:
    """One forward pass for all queries, then one search per snapshot among them. Blocking."""
    t0 = time.perf_counter()
    # A lone query needs no concatenated copy of its input.
    x = queries[0].x if len(queries) == 1 else torch.cat([q.x for q in queries])
    kinds = [q.photo for q in queries for _ in range(len(q.x))]
    # A mask only when the batch mixes kinds: one flag keeps describe_ground on its single mean.
    photo: bool | torch.Tensor = kinds[0] if len(set(kinds)) == 1 else torch.tensor(kinds)
    emb, feats = embed_recording(localizer, x, photo)
    forward_s = time.perf_counter() - t0
    ends = np.cumsum([len(q.x) for q in queries])  # query i owns rows ends[i] - m .. ends[i]
    by_snapshot: dict[tuple[int, int], list[int]] = {}
    for i, q in enumerate(queries):
        # one search per snapshot and prior (queries with other priors search other tiles)
        by_snapshot.setdefault((id(q.snapshot), id(q.allowed)), []).append(i)
    matches: list[Match | None] = [None] * len(queries)
    t1 = time.perf_counter()
    for members in by_snapshot.values():
        snap, k_max = queries[members[0]].snapshot, max(queries[i].k for i in members)
        rows = np.concatenate([np.arange(ends[i] - len(queries[i].x), ends[i]) for i in members])
        allowed = queries[members[0]].allowed
        if allowed is None:
            scores, ids = snap.search(emb[rows], k_max)
        else:
            scores, ids = snap.search(emb[rows], k_max, allowed)
        start = 0
        for i in members:
            m, k = len(queries[i].x), queries[i].k
            best_ids, best_scores = best_per_tile(ids[start : start + m], scores[start : start + m], k)
            own = None if feats is None else feats[ends[i] - m : ends[i]]
            matches[i] = Match(best_ids, best_scores, forward_s, 0.0, own)
            start += m
    search_s = time.perf_counter() - t1
    return [Match(m.ids, m.scores, m.forward_s, search_s, m.features) for m in matches if m is not None]


def best_per_tile(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best tiles of a query searched as m inputs (m headings of one photo): ids and scores
    (m, k') each, k' >= k, best first per row -> ids (<= k,), scores, each tile at its best score.

    Exact: a tile among the k best by best score is among the k best of its best row (any tile
    ranked above it there has a best score at least as high).
    """
    if len(ids) == 1:
        return ids[0, :k], scores[0, :k]
    flat_ids, flat_scores = ids.ravel(), scores.ravel()
    order = np.argsort(-flat_scores, kind="stable")
    seen: set[int] = set()
    keep: list[int] = []
    for j in order:
        tile = int(flat_ids[j])
        if tile >= 0 and tile not in seen:
            seen.add(tile)
            keep.append(j)
            if len(keep) == k:
                break
    return flat_ids[keep], flat_scores[keep]


def search_k(localizer: Localizer, k: int) -> int:
    """How many tiles to search for: the user's k, and at least the estimate's pool."""
    return max(k, estimate_params(localizer.calibration).pool)


def answer(
    localizer: Localizer, snapshot: IndexSnapshot, match: Match, k: int, kind: str
) -> tuple[list[Candidate], LocationEstimate | None]:
    """The user's k candidates and the location estimate from all the searched ones."""
    ranked = rank(snapshot, match)
    est = locate(
        [c.tile for c in ranked],
        [c.score for c in ranked],
        kind,
        snapshot.grid_m,
        localizer.calibration,
        match.features,
    )
    return ranked[:k], est


def heat_points(snapshot: IndexSnapshot, match: Match, n: int) -> list[tuple[float, float, float]]:
    """(lon, lat, score) of the n best tiles of a search (for the page's heat map), best first;
    lon/lat rounded to 1e-7 degrees (1 cm), scores to 1e-6."""
    if n <= 0:
        return []
    tiles = snapshot.lookup(match.ids[:n])
    return [
        (round(t.lon, 7), round(t.lat, 7), round(float(s), 6))
        for s, t in zip(match.scores[:n], tiles, strict=True)
        if t is not None
    ]


def rank(snapshot: IndexSnapshot, match: Match) -> list[Candidate]:
    """Candidates in score order, skipping empty slots and ids the catalogue lacks."""
    tiles = snapshot.lookup(match.ids)
    found = [(float(s), t) for s, t in zip(match.scores, tiles, strict=True) if t is not None]
    return [Candidate(rank=r, score=s, tile=t) for r, (s, t) in enumerate(found, start=1)]


class LocalizationService:
    """Localizer + current snapshot + micro-batcher. `start()` before `localize()`."""

    def __init__(
        self,
        localizer: Localizer,
        store: SnapshotStore,
        window_s: float,
        max_batch: int,
        torch_threads: int = 0,
    ) -> None:
        self.localizer = localizer
        self.store = store
        self.torch_threads = torch_threads  # of the batch thread; 0: one per core
        self.batcher: MicroBatcher[Query, Match] = MicroBatcher(
            lambda qs: run_batch(localizer, qs), window_s=window_s, max_batch=max_batch
        )
        # Not the event loop's default pool (up to cores + 4 threads): more decoding threads only
        # preempt the forward pass's OpenMP threads, which then wait for each other at barriers.
        self._decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="cvm-decode")

    async def start(self) -> None:
        await self.batcher.start()
        # The batch thread runs every forward pass and search: it alone gets torch's thread pool
        # (`model.runtime`); threads started later compute with one.
        await self.batcher.solo(lambda: claim_pool(self.torch_threads))
        compute_single_threaded()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._decoders.shutdown(wait=True)

    async def localize(
        self, data: bytes, k: int, kind: str | None, heat: int = 0, prior: Prior | None = None
    ) -> LocalizeResult:
        """Top-k tiles for an uploaded image (and the top `heat` as heat points). Image errors
        propagate (4xx); NotReady without index."""
        t0 = time.perf_counter()
        snapshot = self.store.require()  # this request uses this build to the end, even across a swap
        allowed = None if prior is None else snapshot.select(prior)  # BadPrior: no tile inside
        if self.batcher.idle():
            # Alone: decode, forward and search in the batch thread in one go, no queue.
            result = await self.batcher.solo(
                lambda: localize_once(self.localizer, snapshot, data, k, kind, heat, allowed=allowed)
            )
            result.timings_ms["total"] = _ms(time.perf_counter() - t0)
            return result
        with self.batcher.incoming():
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self._decoders, self.localizer.prepare, data, kind)
        x, used, decode_s, prep_s = prepared
        query = Query(
            x, snapshot, max(search_k(self.localizer, k), heat), photo=used == "photo", allowed=allowed
        )
        match, stats = await self.batcher.submit(query)
        t1 = time.perf_counter()
        candidates, est = answer(self.localizer, snapshot, match, k, used)
        points = heat_points(snapshot, match, heat)
        t2 = time.perf_counter()
        stages = (decode_s, prep_s, stats.queued_s, match.forward_s, match.search_s, t2 - t1, t2 - t0)
        return LocalizeResult(
            candidates,
            snapshot.build_id,
            used,
            _timings(stages),
            stats.batch_size,
            est,
            heat=points,
            query_features=match.features,
        )


def localize_once(
    localizer: Localizer,
    snapshot: IndexSnapshot,
    data: bytes,
    k: int,
    kind: str | None,
    heat: int = 0,
    allowed: np.ndarray | None = None,
) -> LocalizeResult:
    """The same pipeline without batching or an event loop, in the calling thread. Blocking.

    For `cvm localize`, and for a request that finds the service idle. `allowed`: the tile ids a
    prior leaves (`IndexSnapshot.select`), None for all.
    """
    t0 = time.perf_counter()
    x, used, decode_s, prep_s = localizer.prepare(data, kind)
    query = Query(x, snapshot, max(search_k(localizer, k), heat), photo=used == "photo", allowed=allowed)
    (match,) = run_batch(localizer, [query])
    t1 = time.perf_counter()
    candidates, est = answer(localizer, snapshot, match, k, used)
    points = heat_points(snapshot, match, heat)
    t2 = time.perf_counter()
    stages = (decode_s, prep_s, 0.0, match.forward_s, match.search_s, t2 - t1, t2 - t0)
    return LocalizeResult(
        candidates,
        snapshot.build_id,
        used,
        _timings(stages),
        1,
        est,
        heat=points,
        query_features=match.features,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _timings(stages: Sequence[float]) -> dict[str, float]:
    return {name: _ms(s) for name, s in zip(STAGES, stages, strict=True)}
