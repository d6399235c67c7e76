"""`cvm export-weights`: export a training checkpoint as shippable weights: same model, config
and preprocessing, without the optimiser/RNG state, with the training lineage and held-out metrics recorded.

    .venv/bin/cvm export-weights RUN/last.pt model/weights/cvm-net-i-cpu.pt \
        [--metrics metrics.json] [--lineage "A: ...; B: ..."] [--photo-headings N] [--views V] \
        [--pano-elevation TOP,BOTTOM]

--views, --photo-headings and --pano-elevation record in the weights' preprocessing how many
test-time views every descriptor averages, how many headings an ordinary photo is tried at and
the panoramas' elevation span that photos are reprojected into (docs/model.md); the weights
themselves are unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from model.config import VIEW_COUNTS
from model.views import set_inference_options


def _elevation_span(text: str) -> tuple[float, float]:
    try:
        top, bottom = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TOP,BOTTOM in degrees, e.g. 35,-45; got {text!r}"
        ) from None
    return top, bottom


HELP = "export a training checkpoint as shippable weights (test-time options, lineage, metrics)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="checkpoint written by `cvm train`")
    p.add_argument("dst", type=Path, help="where to write the exported weights")
    p.add_argument("--metrics", type=Path, help="JSON file of evaluation metrics to store with them")
    p.add_argument("--lineage", default="", help="how the weights were trained (free text)")
    p.add_argument("--photo-headings", type=int, help="headings to try a photo query at (default: keep)")
    p.add_argument("--views", type=int, choices=VIEW_COUNTS, help="test-time views (default: keep)")
    p.add_argument(
        "--pano-elevation",
        type=_elevation_span,
        metavar="TOP,BOTTOM",
        help="elevation (degrees) of the training panoramas' first and last rows, for reprojecting "
        "ordinary photos (default: keep)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_checkpoint(args.src)
    except CheckpointError as exc:
        print(f"cvm export-weights: {exc}", file=sys.stderr)
        return 1
    try:
        set_inference_options(
            loaded.model,
            views=args.views,
            photo_headings=args.photo_headings,
            pano_elevation_deg=args.pano_elevation,
        )
    except ValueError as exc:
        print(f"cvm export-weights: {exc}", file=sys.stderr)
        return 2
    train_config = dict(loaded.meta.get("train_config") or {})
    if args.lineage:
        train_config["lineage"] = args.lineage
    try:
        metrics = json.loads(args.metrics.read_text()) if args.metrics else loaded.meta.get("metrics")
    except (OSError, ValueError) as exc:
        print(f"cvm export-weights: {args.metrics}: cannot read the metrics ({exc})", file=sys.stderr)
        return 2
    save_checkpoint(args.dst, loaded.model, train_config=train_config, metrics=metrics)
    size_mb = args.dst.stat().st_size / 1e6
    print(f"wrote {args.dst} ({size_mb:.1f} MB, sha256 {file_sha256(args.dst)})")
    return 0
