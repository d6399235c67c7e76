"""Inference throughput of each CVM-Net branch (images/s) on this machine's CPU.

    .venv/bin/python scripts/bench_model.py [--arch cvm-net-i] [--preset cpu] [--batch 32]
                                            [--threads 2] [--repeats 5] [--train-batch 24]

Randomly initialised weights (throughput does not depend on their values), eval mode, no_grad;
one warm-up batch per branch, then the median of `repeats` timed batches; each branch with the
weights channels-last, as `load_checkpoint` keeps them for inference on the CPU, and in the
default NCHW layout, in which training runs (its step is timed in that layout).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.checkpoint import inference_layout
from model.config import ARCHS, PRESETS, preset_config
from model.cvm_net import build_model
from model.losses import weighted_soft_margin_loss
from model.runtime import reuse_freed_memory


def time_branch(fn, x: torch.Tensor, repeats: int) -> float:
    """Median images/s of `fn(x)` over `repeats` runs after one warm-up."""
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def train_pairs_per_s(net: torch.nn.Module, grd: torch.Tensor, sat: torch.Tensor, repeats: int) -> float:
    """Median pairs/s of one full training step (forward both branches, loss, backward, Adam)."""
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        g, s = net(grd, sat)
        loss = weighted_soft_margin_loss(g, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    net.eval()
    return grd.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="cvm-net-i")
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--train-batch", type=int, default=24, help="also time a training step at this batch (0: skip)"
    )
    args = parser.parse_args()
    reuse_freed_memory()  # as the service, `cvm` and `cvm-index` do at start
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset_config(args.arch, args.preset)
    net = build_model(cfg).eval()
    prep = cfg.preprocessing
    grd = torch.randn(args.batch, 3, *prep.grd_size) * 50
    sat = torch.randn(args.batch, 3, prep.sat_size, prep.sat_size) * 50
    print(f"{args.arch} {args.preset} preset, batch {args.batch}, {torch.get_num_threads()} threads")
    for layout in ("channels-last (inference_layout)", "NCHW (as built and trained)"):
        if layout.startswith("channels-last"):
            inference_layout(net)
        else:
            net.to(memory_format=torch.contiguous_format)
        print(f"weights {layout}:")
        g = time_branch(net.embed_ground, grd, args.repeats)
        print(f"  ground    {prep.grd_size[0]}x{prep.grd_size[1]}: {g:8.1f} images/s ({1 / g:.3f} s/image)")
        s = time_branch(net.embed_satellite, sat, args.repeats)
        print(f"  satellite {prep.sat_size}x{prep.sat_size}: {s:8.1f} images/s ({1 / s:.3f} s/image)")
    if args.train_batch:
        t = train_pairs_per_s(net, grd[: args.train_batch], sat[: args.train_batch], args.repeats)
        print(f"training step (NCHW), batch {args.train_batch}: {t:8.1f} pairs/s")
    total = sum(p.numel() for p in net.parameters())
    print(f"parameters: {total:,}")


if __name__ == "__main__":
    main()
