"""Process-level settings against the forward pass: glibc's allocator thresholds
(`model.runtime.reuse_freed_memory`), which threads hold torch's OpenMP pool (`model.runtime`) and the
weights' memory layout (`model.checkpoint.inference_layout`).

    .venv/bin/python scripts/bench_runtime.py [--weights W] [--threads 2] [--runs 60]

Each case runs in a fresh process: the shipped weights' ground branch (with their test-time views)
on one prepared 616x112 query, batch 1, median of --runs forward passes after 10 warm-up passes,
and the minor page faults per pass.
  allocator default / reuse_freed_memory: forward passes in the main thread only;
  NCHW weights: reuse_freed_memory, the weights turned back from channels-last to the default
      layout (as loaded before `inference_layout`);
  second thread with a pool: a live helper thread has run one matrix product with --threads
      threads before the main thread's passes (what loading the weights in a helper thread did);
  second thread single-threaded: the same helper, after `compute_single_threaded()`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
import cv2, numpy as np, torch
from model.runtime import claim_pool, compute_single_threaded, reuse_freed_memory
from service.localizer import Localizer
case, weights, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if case != "allocator default":
    reuse_freed_memory()
claim_pool(threads)
loc = Localizer.from_checkpoint(weights)
if case == "NCHW weights":
    loc.model.to(memory_format=torch.contiguous_format)
img = np.random.default_rng(0).integers(0, 256, (112, 616, 3), dtype=np.uint8)
x, *_ = loc.prepare(cv2.imencode(".jpg", img)[1].tobytes(), None)
helper = ThreadPoolExecutor(1)
def helper_op(single):
    if single:
        compute_single_threaded()
    a = torch.randn(512, 512)
    return float((a @ a).sum())
if case.startswith("second thread"):
    helper.submit(helper_op, case.endswith("single-threaded")).result()
for _ in range(10):
    loc.embed(x)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(runs):
    t = time.perf_counter(); loc.embed(x); times.append(time.perf_counter() - t)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / runs
print(json.dumps({"ms": statistics.median(times) * 1000, "faults": faults, "views": loc.preprocessing.views}))
"""

CASES = (
    "allocator default",
    "reuse_freed_memory",
    "NCHW weights",
    "second thread with a pool",
    "second thread single-threaded",
)


def main() -> int:
    from model.weights import default_weights_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the shipped weights)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the forward passes")
    p.add_argument("--runs", type=int, default=60, help="timed forward passes per case")
    args = p.parse_args()
    weights = args.weights or default_weights_path()
    print(f"weights {weights}, {args.threads} threads, batch 1, median of {args.runs} passes")
    base = None
    for case in CASES:
        cmd = [sys.executable, "-c", CHILD, case, str(weights), str(args.threads), str(args.runs)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"{case}: failed\n{done.stderr}", file=sys.stderr)
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        base = base or r["ms"]
        print(f"  {case:<32}{r['ms']:8.2f} ms  {r['ms'] / base:5.2f}x  {r['faults']:7.0f} page faults/pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
