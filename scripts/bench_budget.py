"""Memory-budget benchmark: for each budget, the index `cvm-index build --memory-budget` chooses,
its bytes per tile in RAM and on disk, recall@10 against exact search with and without the exact
re-rank, and the served search's median time per query. Prints a table; it is not a test.

    .venv/bin/python scripts/bench_budget.py [--vectors 100000] [--dim 1024]
        [--budgets 1GiB,64MiB,16MiB,8MiB] [--queries 200] [--from-index BUILD_DIR]

The vectors are synthetic clustered unit vectors (a low-dimensional manifold plus noise, as image
descriptors are) unless --from-index names a flat build folder whose stored descriptors are used.
Each index is built, written and read back as a build's is (`storage.faiss_index`), its figures
are those of `cvm-index info` (`index_figures`: stored vectors as queries), and the search time is
that of the service's search path (`service.flat_search`) one query at a time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.runtime import set_search_threads  # noqa: E402
from service.flat_search import FlatView  # noqa: E402
from storage import faiss_index as fi  # noqa: E402
from storage.budget import describe, parse_size  # noqa: E402


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n unit vectors of d dims on a 16-dimensional manifold with noise, in blocks (memory)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((16, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for at in range(0, n, 10_000):
        m = min(10_000, n - at)
        z = rng.standard_normal((m, 16)).astype(np.float32)
        x = np.tanh(z @ mix) + 0.1 * rng.standard_normal((m, d)).astype(np.float32)
        out[at : at + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def stored(build_dir: Path) -> np.ndarray:
    index, _ = fi.read_index(build_dir)
    ids = np.arange(index.ntotal)
    return np.ascontiguousarray(fi._stored_matrix(index, ids), dtype=np.float32)


def bench(x: np.ndarray, budget: int, queries: int, work: Path) -> dict:
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64)
    spec = fi.choose_spec("auto", n, d, budget)
    started = time.perf_counter()
    index = fi.train(
        fi.new_index(spec, d), spec, x[:: max(1, n // max(spec.train_size, 1))][: spec.train_size]
    )
    index.add_with_ids(x, ids)
    folder = work / f"b{budget}"
    if spec.rerank:
        blocks = ((ids[i : i + 10_000], x[i : i + 10_000]) for i in range(0, n, 10_000))
        fi.attach_exact(index, fi.write_exact_vectors(work / "exact", blocks, n, d))
    meta = {"factory": spec.factory, "index_type": spec.kind, "memory_budget": budget}
    fi.write_index(index, folder, meta | ({"nprobe": spec.nprobe} if spec.nprobe else {}))
    build_s = time.perf_counter() - started
    del index
    figures = fi.index_figures(folder, queries)
    loaded, meta = fi.read_index(folder)
    if "nprobe" in meta:
        import faiss

        faiss.ParameterSpace().set_index_parameter(loaded, "nprobe", int(meta["nprobe"]))
    view = FlatView.of(loaded)
    rng = np.random.default_rng(1)
    q = x[rng.choice(n, queries, replace=False)]
    times = []
    for row in q:
        t0 = time.perf_counter()
        if view is not None:
            view.search(row[None], 10)
        else:
            loaded.search(row[None], 10)
        times.append(time.perf_counter() - t0)
    return figures | {"p50_ms": 1000 * float(np.median(times)), "build_s": build_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--budgets", default="1GiB,64MiB,16MiB,8MiB")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--from-index", type=Path, help="a flat build folder whose descriptors are used")
    args = p.parse_args()
    set_search_threads(1)  # one query at a time, as a request
    if args.from_index:
        x, source = stored(args.from_index), f"descriptors of {args.from_index}"
    else:
        x, source = clustered(args.vectors, args.dim), "synthetic clustered unit vectors"
    n, d = x.shape
    print(f"{n:,} vectors of {d} dims ({source}); {args.queries} stored vectors as queries")
    columns = ("budget", "index (factory)", "bytes/tile RAM", "bytes/tile disk", "recall@10", "with re-rank")
    print("| " + " | ".join((*columns, "p50/query", "build")) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.budgets.split(","):
            budget = parse_size(text)
            f = bench(x, budget, args.queries, Path(tmp))
            rerank = f"{f['recall_at_10_rerank']:.3f}" if f["recall_at_10_rerank"] is not None else "-"
            print(
                f"| {text} ({describe(budget)}) | {f['index_type']} ({f['factory']}) | "
                f"{f['ram_bytes_per_tile']:,.0f} | {f['disk_bytes_per_tile']:,.0f} | "
                f"{f['recall_at_10']:.3f} | "
                f"{rerank} | {f['p50_ms']:.2f} ms | {f['build_s']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
