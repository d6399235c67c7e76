"""Micro-benchmark of two parts of a /localize request, in one process, alternatives side by side:

* decoding the benchmark's 616x112 noise JPEG (scripts/bench_service.py's query): the service's
  `decode_upload` (upload checks + the decoder), the decoder `load_image_rgb` alone,
  `cv2.imdecode` for reference, and
  Pillow's header parsing and decode alone; then preparing it for the shipped weights
  (`prepare_ground`, and its resize alone);
* one exact search over 10,000 random unit vectors of 256 dims (`IDMap2,Flat`, inner product):
  FAISS with 1 and 2 OpenMP threads, a numpy matrix-vector product, and the service's torch
  search over the index's own vectors (`service.flat_search.FlatView`, torch's default threads);
* with `--after-forward`: the service's search as a request meets it, right after a forward pass
  of the shipped weights (4 views) in the same thread, which has pushed the index out of the
  caches: FAISS with the service's search threads (`model.runtime`, what the index would get
  without the torch search), one float32 pass and the two passes (int8, then float32 for the
  candidates), over 10,000 to 100,000 random unit vectors of the weights' descriptor size; and
  what the int8 copies cost when a build is loaded.

    .venv/bin/python scripts/bench_request_parts.py [--runs 2000] [--after-forward]

Prints the median time of each in ms.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import faiss
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import query_image  # noqa: E402

from model.config import Preprocessing  # noqa: E402
from model.runtime import omp_threads, search_threads  # noqa: E402
from model.transforms import MAX_PIXELS, load_image_rgb, prepare_ground  # noqa: E402
from service.flat_search import FlatView  # noqa: E402
from service.imaging import decode_upload  # noqa: E402


def median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(min(50, runs)):
        fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def decode_parts(runs: int) -> None:
    data = query_image(616, 112)
    raw = np.frombuffer(data, dtype=np.uint8)
    print(f"decode of a 616x112 noise JPEG ({len(data) / 1000:.1f} KB), median of {runs}:")
    for name, fn in (
        ("service decode_upload", lambda: decode_upload(data, MAX_PIXELS)),
        ("decoder load_image_rgb", lambda: load_image_rgb(data)),
        ("cv2.imdecode (reference)", lambda: cv2.imdecode(raw, cv2.IMREAD_COLOR)),
        ("of which: header (Image.open)", lambda: Image.open(io.BytesIO(data))),
        ("of which: header + decode", lambda: Image.open(io.BytesIO(data)).load()),
    ):
        print(f"  {name:34s} {median_ms(fn, runs):7.3f} ms")
    prep = preprocessing_of_shipped_weights()
    rgb = decode_upload(data, MAX_PIXELS)
    height, width = prep.grd_size
    print(f"preparing it for the shipped weights ({width}x{height} input), median of {runs}:")
    for name, fn in (
        ("prepare_ground", lambda: prepare_ground(rgb, prep)),
        (
            "of which: cv2.resize INTER_AREA",
            lambda: cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA),
        ),
    ):
        print(f"  {name:34s} {median_ms(fn, runs):7.3f} ms")


def preprocessing_of_shipped_weights() -> Preprocessing:
    from model.checkpoint import load_checkpoint
    from model.weights import default_weights_path

    return load_checkpoint(default_weights_path()).config.preprocessing


def search_parts(runs: int, n: int = 10_000, d: int = 256) -> None:
    torch_threads = torch.get_num_threads()  # FAISS's settings below share its OpenMP runtime
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = faiss.index_factory(d, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(xb, np.arange(n, dtype=np.int64))
    q = xb[:1].copy()
    print(f"search, {n} x {d} flat inner product, one query, k=5, median of {runs}:")
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        ms = median_ms(lambda: index.search(q, 5), runs)
        print(f"  FAISS, {threads} OpenMP thread(s)      {ms:7.3f} ms")
    faiss.omp_set_num_threads(1)

    def matvec() -> object:
        scores = xb @ q[0]
        top = np.argpartition(-scores, 5)[:5]
        return top[np.argsort(-scores[top])]

    print(f"  numpy xb @ q + top-5            {median_ms(matvec, runs):7.3f} ms")
    view = FlatView.of(index)
    assert view is not None
    torch.set_num_threads(torch_threads)
    ms = median_ms(lambda: view.search(q, 5), runs)
    print(f"  torch FlatView, {torch.get_num_threads()} threads (served) {ms:7.3f} ms")


def search_after_forward(runs: int, sizes: tuple[int, ...] = (10_000, 25_000, 49_000, 100_000)) -> None:
    from bench_service import Forward

    from model.weights import default_weights_path

    forward = Forward(default_weights_path(), query_image(616, 112), 0)  # the server's threads
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, forward.dim)).astype(np.float32)
    q /= np.linalg.norm(q)
    print(f"search right after a forward pass (shipped weights), d={forward.dim}, k=5, median of {runs}:")
    for n in sizes:
        xb = rng.standard_normal((n, forward.dim)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        index = faiss.index_factory(forward.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        index.add_with_ids(xb, np.arange(n, dtype=np.int64))
        t0 = time.perf_counter()
        two = FlatView.of(index, min_values_two_pass=0)
        load_s = time.perf_counter() - t0
        one = FlatView.of(index, min_values_two_pass=2**62)
        assert one is not None and two is not None and two.int8 is not None
        assert (one.search(q, 5)[1] == two.search(q, 5)[1]).all()
        extra = two.int8.codes.numel() / 2**20
        print(f"  {n:,} x {forward.dim}: int8 copies {extra:.0f} MiB (+25 %), made in {load_s * 1000:.0f} ms")
        times = []
        for _ in range(runs):
            forward.once_ms()
            times.append(forward.run(_timed_faiss, index, q))
        name = f"FAISS, {search_threads()} thread(s)"
        print(f"    {name:28s} {statistics.median(times) * 1000:7.3f} ms")
        for name, view in (("one float32 pass", one), ("int8 + float32 candidates", two)):
            times = []
            for _ in range(runs):
                forward.once_ms()
                times.append(forward.run(_timed_search, view, q))
            print(f"    {name:28s} {statistics.median(times) * 1000:7.3f} ms")


def _timed_faiss(index: faiss.Index, q: np.ndarray) -> float:
    """One search as `service.snapshot.IndexSnapshot.search` runs a FAISS index."""
    t0 = time.perf_counter()
    with omp_threads(search_threads()):
        index.search(q, 5)
    return time.perf_counter() - t0


def _timed_search(view: FlatView, q: np.ndarray) -> float:
    t0 = time.perf_counter()
    view.search(q, 5)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--after-forward", action="store_true", help="only the search after a forward pass")
    args = p.parse_args()
    print(f"load average (1 min) before the run: {os.getloadavg()[0]:.2f}")
    if args.after_forward:
        search_after_forward(args.runs)
        return
    decode_parts(args.runs)
    search_parts(args.runs)


if __name__ == "__main__":
    main()
