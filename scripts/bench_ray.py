"""Ray engine benchmark: `cvm-index build --engine ray` with 1, 2, ... embedding actors against the
local engine on the same raster and weights. Prints figures; it is not a test.

    .venv/bin/python scripts/bench_ray.py [--size-px 2000] [--actors 1 2] [--batch-size 32]
        [--torch-threads 0] [--device cpu] [--weights CKPT] [--repeat 2]
    .venv/bin/python scripts/bench_ray.py --plan [--area-km2 8000000] [--stride-m 35]

--plan prints the figures of docs/scale.md's continental plan instead: the paper model's FLOPs
and CPU time per tile measured now, and the index bytes per tile (`estimate_memory`).

Without --weights it uses a random-weight model of the cpu preset, on the generated raster of
scripts/bench_indexer.py. Each Ray configuration runs on a local Ray instance started for it
with one CPU per actor plus one for the read tasks (Ray's accounting, not cores: on a machine
with fewer cores, actors and readers share them), started before the timed build, so that the
figures are those of a build on a running cluster. On the CPU every build's vectors are checked
equal to the local engine's.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from bench_indexer import bench_inputs  # scripts/ is sys.path[0] when run as a script

from indexer.build import BuildOptions
from indexer.runner import run_build
from model.config import preset_config
from model.cvm_net import build_model
from model.runtime import pool_size, reuse_freed_memory
from storage.catalog import get_build
from storage.db import make_engine, session_scope
from storage.faiss_index import read_index
from storage.settings import Settings


def one_build(raster: Path, weights: Path, args: argparse.Namespace, work: Path, **engine: object) -> dict:
    """Whole-build and embedding-stage tiles/s of one fresh build, and its vectors by tile id."""
    settings = Settings(data_dir=work, database_url=f"sqlite:///{work / 'bench.db'}", index_dir=work / "idx")
    opts = BuildOptions(
        imagery=(str(raster),),
        batch_size=args.batch_size,
        # resolved here, so that every engine and actor computes with the same count (equal vectors)
        torch_threads=pool_size(args.torch_threads),
        progress=False,
        resume=False,
        activate=False,
        **engine,  # type: ignore[arg-type]
    )
    report = run_build(opts, settings, weights, args.device)
    n = int(report.counts["indexed"])
    db = make_engine(settings.database_url)
    with session_scope(db) as s:
        build = get_build(s, report.build_id)
        assert build is not None
        embed_s, folder = float(build.timings["embed_s"]), Path(str(build.index_path))
    db.dispose()
    index, _ = read_index(folder)
    ids = faiss.vector_to_array(faiss.downcast_index(index).id_map)  # type: ignore[attr-defined]
    order = np.argsort(ids)
    vectors = np.stack([index.reconstruct(int(i)) for i in ids[order]])
    return {"whole": n / report.seconds, "embed": n / embed_s, "n": n, "vectors": vectors}


def plan(args: argparse.Namespace) -> None:
    """Figures of a continental build of the paper model, from measurements made now: FLOPs and
    CPU time per tile of its satellite branch, and index bytes per tile."""
    from torch.utils.flop_counter import FlopCounterMode

    from storage import faiss_index as fi

    torch.manual_seed(0)
    cfg = preset_config("cvm-net-i", "paper")
    model = build_model(cfg).eval()
    s, d = cfg.preprocessing.sat_size, cfg.descriptor_dim
    x = torch.randn(args.plan_batch, 3, s, s)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model.describe_satellite(x)
        flops = counter.get_total_flops() / args.plan_batch
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            model.describe_satellite(x)
            times.append((time.perf_counter() - t0) / args.plan_batch)
    cpu_s = min(times)
    tiles = args.area_km2 * 1e6 / args.stride_m**2
    print(f"area {args.area_km2:,.0f} km2, a tile every {args.stride_m:g} m: {tiles:.4g} tiles")
    print(f"paper model (cvm-net-i, {s} px tiles, {d}-d descriptor), satellite branch per tile:")
    print(f"  {flops / 1e9:.1f} GFLOP (torch FlopCounterMode, 2 per multiply-add)")
    print(
        f"  {cpu_s:.2f} s on this machine's CPU ({torch.get_num_threads()} threads, batch "
        f"{args.plan_batch}, best of 2): {tiles * cpu_s / 3600:.3g} machine-hours for the area"
    )
    gpu_h = tiles * flops / (args.gpu_tflops * 1e12) / 3600
    print(f"  at {args.gpu_tflops:g} TFLOP/s sustained: {gpu_h:.3g} GPU-hours (a lower bound: 100 % use)")
    for kind in ("flat", "ivfpq"):
        spec = fi.choose_spec(kind, int(tiles), d)
        mem = fi.estimate_memory(spec, int(tiles), d)
        machines = mem.total / (args.machine_gib * 2**30)
        print(
            f"  index {kind} ({spec.factory}): {mem.per_vector:,.0f} bytes/tile, {mem.total / 1e12:,.1f} TB"
            f" = {machines:,.1f} machines of {args.machine_gib} GiB"
        )
    print(f"  shard files (float32 vectors): {tiles * d * 4 / 1e12:,.1f} TB")
    # Under a memory budget: the index --memory-budget chooses on each machine when the tiles are
    # split into regions (--region-km) of one machine each, for 1, 2, 4, ... machines.
    budget = int(args.machine_gib * 2**30 * args.index_share)
    print(f"  --memory-budget {args.index_share:.0%} of {args.machine_gib} GiB, one region per machine:")
    for machines in (1, 2, 4, 8, 16, 32):
        per = int(tiles / machines)
        try:
            spec = fi.choose_spec("auto", per, d, budget)
        except ValueError:
            print(f"    {machines} machines of {per:.3g} tiles: no index fits")
            continue
        mem = fi.estimate_memory(spec, per, d)
        side_km = (per * args.stride_m**2) ** 0.5 / 1000
        print(
            f"    {machines} machines of {per:.3g} tiles (regions of about {side_km:,.0f} km): "
            f"{spec.factory}, {mem.per_vector:,.0f} bytes/tile, {mem.total / 2**30:,.0f} GiB; "
            f"exact vectors on disk {per * d * 4 / 1e12:,.1f} TB per machine"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-px", type=int, default=2000)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--torch-threads", type=int, default=0, help="as cvm-index build (0: one per core)")
    p.add_argument("--device", choices=("cpu", "auto", "cuda"), default="cpu", help="as cvm-index build")
    p.add_argument("--weights", type=Path)
    p.add_argument("--repeat", type=int, default=2, help="runs of each configuration; the best is kept")
    p.add_argument("--plan", action="store_true", help="print the continental plan's figures instead")
    p.add_argument("--area-km2", type=float, default=8e6, help="--plan: area (contiguous US: about 8e6)")
    p.add_argument("--stride-m", type=float, default=35.0, help="--plan: distance between tile centres")
    p.add_argument("--plan-batch", type=int, default=4, help="--plan: tiles per timed forward pass")
    p.add_argument("--gpu-tflops", type=float, default=67.0, help="--plan: GPU FP32 peak (H100 SXM: 67)")
    p.add_argument("--machine-gib", type=int, default=512, help="--plan: memory of an index machine")
    p.add_argument(
        "--index-share", type=float, default=0.75, help="--plan: part of a machine's memory for its index"
    )
    args = p.parse_args()
    if args.plan:
        plan(args)
        return
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would send usage statistics over the network
    reuse_freed_memory()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raster, weights = bench_inputs(work, args.weights, args.size_px)
        # the configurations alternate within each round, so that a change of load on a shared
        # machine reaches them all; the best run of each is kept
        runs: dict[str, list[dict]] = {}
        starts: dict[str, float] = {}
        for _ in range(args.repeat):
            runs.setdefault("local", []).append(one_build(raster, weights, args, work))
            for actors in args.actors:
                name = f"ray, {actors} actor(s)"
                t0 = time.perf_counter()
                ray.init(
                    address="local", num_cpus=actors + 1, include_dashboard=False, logging_level=logging.ERROR
                )
                starts[name] = time.perf_counter() - t0
                try:
                    run = one_build(raster, weights, args, work, engine="ray", ray_actors=actors)
                finally:
                    ray.shutdown()
                runs.setdefault(name, []).append(run)
        best = {name: max(rs, key=lambda r: r["whole"]) for name, rs in runs.items()}
        best_local = best["local"]
        for rs in runs.values():
            for r in rs:
                if args.device == "cpu":  # bit-identical on the CPU; a GPU's results may vary
                    assert np.array_equal(r["vectors"], best_local["vectors"]), "vectors differ from local"
    print(
        f"tiles: {best_local['n']} ({args.size_px} px raster), batch {args.batch_size}, "
        f"device {args.device}, "
        f"torch threads {pool_size(args.torch_threads)} per engine/actor, cores {os.cpu_count()}, "
        f"best of {args.repeat}; load average (1 min) before the run: {load_before:.2f}"
    )
    if args.device == "cpu":
        print("vectors: every Ray build equal to the local build (np.array_equal)")
    print(f"{'engine':22} {'whole build':>12} {'ratio':>6} {'embed stage':>12} {'ratio':>6}  cluster start")
    for name, r in best.items():
        start = f"{starts[name]:.1f} s" if name in starts else "-"
        print(
            f"{name:22} {r['whole']:8.1f} t/s {r['whole'] / best_local['whole']:6.2f} "
            f"{r['embed']:8.1f} t/s {r['embed'] / best_local['embed']:6.2f}  {start}"
        )


if __name__ == "__main__":
    main()
