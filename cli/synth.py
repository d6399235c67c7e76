"""`cvm synth`: generate a synthetic geo-tagged cross-view world (see docs/synthetic-world.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from synth.geo import DEFAULT_ORIGIN, parse_origin

HELP = "generate a synthetic cross-view world: orthophoto GeoTIFF, panoramas, photos, CVUSA layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, required=True, help="world seed (same seed, same bytes)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created; must be empty)")
    parser.add_argument("--extent-m", type=float, default=2000.0, help="side of the square world in metres")
    parser.add_argument("--gsd-m", type=float, default=0.5, help="orthophoto ground sampling distance, m/px")
    parser.add_argument(
        "--origin",
        default=f"{DEFAULT_ORIGIN[0]},{DEFAULT_ORIGIN[1]}",
        help="LAT,LON of the centre of the world (default: %(default)s, Zurich)",
    )
    parser.add_argument("--pairs", type=int, default=1000, help="number of ground positions")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of pairs in the eastern validation strip"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="render processes")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )


def run(args: argparse.Namespace) -> int:
    from synth.writer import SynthOptions, print_progress, synthesize

    try:
        opts = SynthOptions(
            seed=args.seed,
            out=args.out,
            extent_m=args.extent_m,
            gsd_m=args.gsd_m,
            origin=parse_origin(args.origin),
            pairs=args.pairs,
            val_fraction=args.val_fraction,
            workers=args.workers,
            overwrite=args.overwrite,
        )
        result = synthesize(opts, progress=print_progress)
    except (ValueError, OSError) as exc:
        print(f"cvm synth: error: {exc}", file=sys.stderr)
        return 2
    t = result.timings
    print(
        f"wrote {len(result.pairs)} pairs ({result.n_train} train, {result.n_val} val) to {result.out} "
        f"in {t['total_s']:.1f} s (world {t['world_s']:.1f} s, pairs {t['pairs_s']:.1f} s)"
    )
    return 0
