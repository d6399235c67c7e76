"""Search at a million tiles: the shipped model's descriptors, budgeted indexes, priors, regions.

    .venv/bin/python scripts/bench_million.py --data-dir var/corpus/data --builds 1,2 \
        --rotations 4 --queries var/corpus/queries.npy [--budgets 256MiB] \
        [--radii-m 2000,10000] [--region-km 10 [--region-budget 128MiB]] [--repeats 200] \
        [--prior-only]

The corpus is the descriptors stored by flat builds (`cvm-index build --index-type flat`, one
index or regions) of rendered imagery, with each tile's centre from the catalogue. With
--rotations R each tile also stands for R-1 copies of itself turned by quarter turns, placed in
a copy of its world moved by `COPY_SHIFT_DEG` degrees of latitude per turn: the descriptor of a
tile turned by r quarter turns is exactly the tile's descriptor rolled left by r view blocks
(the test-time views of `model.views` are those quarter turns; `tests/model/test_views.py`
checks it with the shipped weights). That multiplies the corpus at no forward pass, with
descriptors the model does compute for that imagery; turned copies are alike (cosine about
0.95), so the corpus holds more near-duplicates than a real one.

The queries are ground descriptors (`cvm embed --branch ground`), as the service computes them.
Printed, one Markdown table each:
1. exact search (the flat index a build of this size would need): bytes per tile, p50;
2. for each --budgets size, the index `--memory-budget` chooses (`storage.faiss_index`),
   trained, filled, written with its exact vectors and read back as a build is; searched as
   the service searches (`service.snapshot.IndexSnapshot.search`: candidates, then the exact
   re-rank), one query at a time on one thread: recall@10 against exact search, p50, bytes per
   tile in RAM and the ratio to flat;
3. priors: `near` a random tile's centre with each --radii-m radius, the service's select +
   search against the same query without a prior (p50 and the speed-up);
4. for an IVF index, the ground queries' recall@10 and p50 by nprobe, around the tuned value;
5. with --region-km, the same corpus split into regions, each indexed as `--index-type auto`
   does (flat below 50,000 tiles, IVF-PQ with its exact vectors above), or as a build with
   --memory-budget shares the --region-budget, searched over every region (merged) and with
   the priors;
6. with --prior-only, instead of all that: the priors' search of the exact vectors alone
   (`prior_table`), which is what a prior costs over a compressed index.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.publish import Vectors, build_index  # noqa: E402
from model.runtime import set_search_threads  # noqa: E402
from service.catalog import TilePlace  # noqa: E402
from service.flat_search import FlatView  # noqa: E402
from service.prior import Prior  # noqa: E402
from service.snapshot import IndexPart, IndexSnapshot, resolve_index_dir  # noqa: E402
from storage import faiss_index as fi  # noqa: E402
from storage import regions  # noqa: E402
from storage.budget import describe, parse_size  # noqa: E402

# Degrees of latitude between a world and its turned copy (several worlds' widths apart).
COPY_SHIFT_DEG = 0.5
K = 10


def load_builds(data_dir: Path, builds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, d) float32, lats, lons) of the tiles of flat builds, in tile-id order."""
    from sqlalchemy import select

    from storage.db import make_engine, session_scope
    from storage.models import Build, Tile
    from storage.settings import Settings

    settings = Settings(data_dir=data_dir)
    engine = make_engine(settings.database_url)
    xs, lats, lons = [], [], []
    for build_id in builds:
        with session_scope(engine) as session:
            build = session.get(Build, build_id)
            if build is None or not build.index_path:
                raise SystemExit(f"build {build_id} of {data_dir} has no index")
            folder = resolve_index_dir(build.index_path, settings.index_root)
            rows = session.execute(
                select(Tile.id, Tile.lat, Tile.lon).where(Tile.build_id == build_id).order_by(Tile.id)
            ).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        meta = fi.read_meta(folder)
        parts = (
            [index for _, index, _ in regions.read_regions(folder)]
            if regions.is_sharded(meta)
            else [fi.read_index(folder)[0]]
        )
        vec = {}
        for index in parts:
            held = fi.index_ids(index)
            matrix = fi._stored_matrix(index, held)
            vec.update(zip(held.tolist(), matrix, strict=True))
        xs.append(np.stack([vec[int(i)] for i in ids]).astype(np.float32))
        lats.append(np.array([r[1] for r in rows]))
        lons.append(np.array([r[2] for r in rows]))
    engine.dispose()
    return np.concatenate(xs), np.concatenate(lats), np.concatenate(lons)


def turned(x: np.ndarray, lats: np.ndarray, lons: np.ndarray, copies: int, views: int) -> tuple:
    """The corpus and its copies turned by 1..copies-1 quarter turns (module doc)."""
    block = x.shape[1] // views
    xs = [x] + [np.roll(x, -r * block, axis=1) for r in range(1, copies)]
    return (
        np.ascontiguousarray(np.concatenate(xs)),
        np.concatenate([lats + r * COPY_SHIFT_DEG for r in range(copies)]),
        np.tile(lons, copies),
    )


def places(lats: np.ndarray, lons: np.ndarray) -> dict[int, TilePlace]:
    return {
        i + 1: TilePlace(i + 1, float(a), float(o), float(o), float(a), float(o), float(a))
        for i, (a, o) in enumerate(zip(lats, lons, strict=True))
    }


def build_part(
    x: np.ndarray, ids: np.ndarray, budget: int | None, work: Path, name: str = ""
) -> tuple[Any, dict, float]:
    """An index of `budget` over x (of region `name`), made by the build's own
    `indexer.publish.build_index` (`--index-type auto`), written and read back as a build's is;
    (index, meta, seconds)."""
    n, d = x.shape
    source = Vectors(ids, lambda: ((ids[a : a + 100_000], x[a : a + 100_000]) for a in range(0, n, 100_000)))
    t0 = time.perf_counter()
    print(f"  building {fi.choose_spec('auto', n, d, budget).factory} over {n:,} vectors", file=sys.stderr)
    index, spec, stats = build_index(source, d, work, "auto", False, budget, name)
    if "nprobe_recalls" in stats:  # tuned on the stored vectors as the build tunes it
        tried = stats["nprobe_recalls"]
        print(f"  nprobe {spec.nprobe} (recall@10 of stored vectors by nprobe: {tried})", file=sys.stderr)
    meta: dict[str, Any] = {"factory": spec.factory, "index_type": spec.kind}
    meta |= {"nprobe": spec.nprobe} if spec.nprobe is not None else {}
    fi.write_index(index, work / "index", meta)
    seconds = time.perf_counter() - t0
    del index
    loaded, meta = fi.read_index(work / "index")
    if "nprobe" in meta:
        fi.set_nprobe(loaded, int(meta["nprobe"]))
    return loaded, meta, seconds


def p50_ms(fn: Any, queries: np.ndarray, repeats: int) -> float:
    times = []
    for r in range(repeats):
        q = queries[r % len(queries)][None]
        t0 = time.perf_counter()
        fn(q, r)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def recall(snap: IndexSnapshot, q: np.ndarray, truth: np.ndarray) -> float:
    got = np.concatenate([snap.search(row[None], K)[1] for row in q])
    return fi.recall_at_k(got, truth)


def prior_rows(
    snap: IndexSnapshot, q: np.ndarray, radii: list[float], repeats: int, seed: int
) -> list[tuple]:
    """(radius, mean tiles inside, p50 with the prior, regions read) for each radius."""
    rng = np.random.default_rng(seed)
    tiles = snap.centres
    rows = []
    for radius in radii:
        centres = rng.integers(0, len(tiles.ids), repeats)
        inside, reached = [], []

        def search(
            query: np.ndarray,
            r: int,
            radius: float = radius,
            centres: np.ndarray = centres,
            inside: list = inside,
            reached: list = reached,
        ) -> None:
            at = centres[r]
            allowed = snap.select(Prior(near=(float(tiles.lats[at]), float(tiles.lons[at])), radius_m=radius))
            snap.search(query, K, allowed)
            inside.append(len(allowed))
            reached.append(snap.searched_parts(allowed))

        ms = p50_ms(search, q, repeats)
        rows.append((radius, float(np.mean(inside)), ms, float(np.mean(reached))))
    return rows


def row(*cells: object) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: tuple[str, ...], align: str) -> None:
    print("\n" + row(*header) + "\n" + row(*align.split()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--builds", required=True, help="flat build ids, comma-separated")
    p.add_argument("--rotations", type=int, default=1, choices=(1, 2, 3, 4))
    p.add_argument("--views", type=int, default=4, help="test-time views of the weights (4 shipped)")
    p.add_argument("--queries", type=Path, required=True, help="ground descriptors (.npy, cvm embed)")
    p.add_argument("--budgets", default="256MiB")
    p.add_argument("--radii-m", default="2000,10000")
    p.add_argument("--region-km", type=float)
    p.add_argument("--region-budget", help="with --region-km: the memory budget the regions share")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument(
        "--prior-only", action="store_true", help="only the priors' search of the exact vectors (6.)"
    )
    args = p.parse_args()
    set_search_threads(1)  # one query at a time, as a request
    faiss.omp_set_num_threads(2)  # training and adding may use both cores
    x, lats, lons = load_builds(args.data_dir, [int(b) for b in args.builds.split(",")])
    x, lats, lons = turned(x, lats, lons, args.rotations, args.views)
    q = np.ascontiguousarray(np.load(args.queries), dtype=np.float32)
    n, d = x.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    truth = fi.exact_top(q, (x[a : a + 200_000] for a in range(0, n, 200_000)), ids)
    corpus = Corpus(x, ids, lats, lons, places(lats, lons), q, truth)
    print(
        f"{n:,} descriptors of {d} dims ({n // args.rotations:,} tiles x {args.rotations}); {len(q)} queries"
    )
    radii = [float(r) for r in args.radii_m.split(",")]
    if args.prior_only:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            prior_table(corpus, Path(tmp), radii, args.repeats)
        return
    flat_bytes = fi.estimate_memory(fi.IndexSpec("flat", "IDMap2,Flat"), n, d).total
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    faiss.omp_set_num_threads(1)
    flat_ms = p50_ms(lambda query, r: flat.search(query, K), q, min(args.repeats, 20))
    faiss.omp_set_num_threads(2)
    flat = None  # its 4 GB freed before the budgeted indexes are built
    table(("exact search (flat)", "bytes/tile", "p50"), "--- ---: ---:")
    print(row(f"{n:,}", f"{flat_bytes / n:,.0f}", f"{flat_ms:.1f} ms"))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if args.region_km:
            shared = parse_size(args.region_budget) if args.region_budget else None
            region_table(corpus, shared, args, Path(tmp) / "regions", radii)
        for text in filter(None, args.budgets.split(",")):  # --budgets "": none
            budget = parse_size(text)
            index, meta, build_s = build_part(x, ids, budget, Path(tmp) / f"b{budget}")
            snap = IndexSnapshot(1, index, meta, corpus.tiles, Path(tmp), flat=FlatView.of(index))
            faiss.omp_set_num_threads(1)
            ram = fi.index_bytes(index)
            r10 = recall(snap, q, corpus.truth)
            ms = p50_ms(lambda query, r, snap=snap: snap.search(query, K), q, args.repeats)
            header = ("budget", "index", "nprobe", "bytes/tile RAM", "of flat", "recall@10", "p50", "build")
            table(header, "--- --- ---: ---: ---: ---: ---: ---:")
            print(
                row(
                    f"{text} ({describe(budget)})",
                    f"`{meta['factory']}`",
                    meta.get("nprobe", "-"),
                    f"{ram / n:,.1f}",
                    f"1/{flat_bytes / ram:.1f}",
                    f"{r10:.3f}",
                    f"{ms:.2f} ms",
                    f"{build_s:.0f} s",
                )
            )
            table(("prior", "tiles inside (mean)", "p50", "speed-up"), "--- ---: ---: ---:")
            print(row("none", f"{n:,}", f"{ms:.2f} ms", 1))
            for radius, inside, pms, _ in prior_rows(snap, q, radii, args.repeats, 0):
                print(row(f"near, {radius:,.0f} m", f"{inside:,.0f}", f"{pms:.2f} ms", f"{ms / pms:.1f}x"))
            if "nprobe" in meta:
                nprobe_table(snap, index, int(meta["nprobe"]), corpus, args.repeats)
            faiss.omp_set_num_threads(2)


def nprobe_table(snap: IndexSnapshot, index: Any, tuned: int, c: Corpus, repeats: int) -> None:
    """Ground queries' recall@10 and p50 as served, by lists probed (1, 2, 4, ... 4x the tuned
    value): the trade the build's tuning (on stored vectors) chose from."""
    nlist = int(faiss.extract_index_ivf(index).nlist)
    table(("nprobe", "recall@10 (ground queries)", "p50"), "---: ---: ---:")
    probes = 1
    while probes <= min(nlist, 4 * tuned):
        fi.set_nprobe(index, probes)
        r10 = recall(snap, c.queries, c.truth)
        ms = p50_ms(lambda query, r: snap.search(query, K), c.queries, repeats)
        print(row(f"**{probes}** (tuned)" if probes == tuned else probes, f"{r10:.3f}", f"{ms:.2f} ms"))
        probes *= 2
    fi.set_nprobe(index, tuned)


def prior_table(c: Corpus, work: Path, radii: list[float], repeats: int) -> None:
    """A prior's search of a compressed index: the service's select, then the exact scores of
    the tiles inside (`service.flat_search.RerankView`), which do not involve the codes; so the
    exact vectors are written as a build writes them, beside a small IVF-PQ index."""
    n, d = c.x.shape
    factory = "IVF256,PQ16" if n >= 20_000 else "IDMap2,Flat"  # (too few to train on)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(c.x[:: max(1, n // 20_000)]))
    for at in range(0, n, 100_000):
        index.add_with_ids(c.x[at : at + 100_000], c.ids[at : at + 100_000])
    blocks = ((c.ids[a : a + 100_000], c.x[a : a + 100_000]) for a in range(0, n, 100_000))
    fi.attach_exact(index, fi.write_exact_vectors(work / "exact", blocks, n, d))
    faiss.omp_set_num_threads(1)
    snap = IndexSnapshot(1, index, {"factory": factory}, c.tiles, work, flat=FlatView.of(index))
    table(("prior (exact vectors of the tiles inside)", "tiles inside (mean)", "p50"), "--- ---: ---:")
    for radius, inside, ms, _ in prior_rows(snap, c.queries, radii, repeats, 0):
        print(row(f"near, {radius:,.0f} m", f"{inside:,.0f}", f"{ms:.2f} ms"))
    faiss.omp_set_num_threads(2)


@dataclass(frozen=True)
class Corpus:
    x: np.ndarray
    ids: np.ndarray
    lats: np.ndarray
    lons: np.ndarray
    tiles: dict[int, TilePlace]
    queries: np.ndarray
    truth: np.ndarray  # ids of each query's exact top K


def region_table(
    c: Corpus, budget: int | None, args: argparse.Namespace, work: Path, radii: list[float]
) -> None:
    """The corpus split into regions of --region-km, one budgeted index each (the budget shared
    as a build shares it, `storage.regions.budget_shares`): recall, p50 over every region, and
    with priors."""
    n = len(c.ids)
    parts, build_s, ram = [], 0.0, 0
    groups = list(regions.group_by_region(c.ids, c.lats, c.lons, args.region_km))
    shares = regions.budget_shares([len(m) for _, m in groups], c.x.shape[1], budget)
    for (region, members), share in zip(groups, shares, strict=True):
        index, meta, s = build_part(c.x[members - 1], members, share, work / region.name, region.name)
        parts.append(IndexPart(index, FlatView.of(index), region.name))
        build_s += s
        ram += fi.index_bytes(index)
    snap = IndexSnapshot(1, None, {}, c.tiles, work, regions=tuple(parts))
    faiss.omp_set_num_threads(1)
    r10 = recall(snap, c.queries, c.truth)
    ms = p50_ms(lambda query, r: snap.search(query, K), c.queries, args.repeats)
    sizes = [len(m) for _, m in groups]
    kind = "--index-type auto" if budget is None else describe(budget)
    header = (f"regions of {args.region_km:g} km ({kind})", "tiles per region", "bytes/tile RAM", "recall@10")
    table((*header, "p50, all regions", "build"), "---: ---: ---: ---: ---: ---:")
    span = f"{min(sizes):,}-{max(sizes):,}"
    print(row(len(parts), span, f"{ram / n:,.1f}", f"{r10:.3f}", f"{ms:.2f} ms", f"{build_s:.0f} s"))
    table(
        ("prior", "tiles inside (mean)", "regions read (mean)", "p50", "speed-up"), "--- ---: ---: ---: ---:"
    )
    for radius, inside, pms, reached in prior_rows(snap, c.queries, radii, args.repeats, 0):
        cells = (f"{inside:,.0f}", f"{reached:.1f} of {len(parts)}", f"{pms:.2f} ms", f"{ms / pms:.1f}x")
        print(row(f"near, {radius:,.0f} m", *cells))
    faiss.omp_set_num_threads(2)


if __name__ == "__main__":
    main()
