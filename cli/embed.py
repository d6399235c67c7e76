"""`cvm embed`: descriptors of images, as an (n, d) float32 .npy file.

    cvm embed --weights cvm-net-i.pt --branch satellite --out sat.npy tile1.jpg tile2.jpg

Row i is the descriptor of IMAGE i, prepared as the weights' preprocessing says (ground: the
whole panorama resized to its input size; satellite: the whole image resized to its square
input) and computed as the index and the service compute it (`describe_ground` /
`describe_satellite`: the weights' test-time views, centred when they say so). For weights
imported with `cvm import-tf` (one view, no centring) that is exactly the original graph's
`grd_global` / `sat_global`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write the descriptors of images (ground panoramas or satellite tiles) to a .npy file"


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", type=Path, metavar="FILE", help="checkpoint (default: the shipped weights)"
    )
    parser.add_argument("--branch", required=True, choices=("ground", "satellite"), help="which branch")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="FILE.npy", help="where to write the array"
    )
    parser.add_argument("--batch-size", type=_positive, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from model.checkpoint import CheckpointError, load_checkpoint
    from model.transforms import ImageLoadError, load_image_rgb, prepare_ground, prepare_satellite

    weights = args.weights
    if weights is None:
        from model.weights import default_weights_path

        weights = default_weights_path()
    try:
        loaded = load_checkpoint(weights, device=args.device)
    except CheckpointError as exc:
        print(f"cvm embed: error: {exc}", file=sys.stderr)
        return 2
    net, prep = loaded.model, loaded.config.preprocessing
    prepare = prepare_ground if args.branch == "ground" else prepare_satellite
    describe = net.describe_ground if args.branch == "ground" else net.describe_satellite
    rows: list[np.ndarray] = []
    try:
        for start in range(0, len(args.images), args.batch_size):
            batch = [prepare(load_image_rgb(p), prep) for p in args.images[start : start + args.batch_size]]
            with torch.inference_mode():
                rows.append(describe(torch.stack(batch).to(args.device)).float().cpu().numpy())
    except (ImageLoadError, ValueError) as exc:
        print(f"cvm embed: error: {exc}", file=sys.stderr)
        return 2
    out = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "wb") as f:
            np.save(f, out)
    except OSError as exc:
        print(f"cvm embed: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {out.shape[0]} x {out.shape[1]} float32 ({args.branch} descriptors of {weights})"
    )
    return 0
