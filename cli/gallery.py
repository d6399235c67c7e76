"""`cvm gallery`: a CVACT or VIGOR folder's aerial tiles as a tile list for `cvm-index build --tiles-csv`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "write a CVACT or VIGOR gallery (each aerial tile with its true centre and ground size) as the "
    "tile list of `cvm-index build --tiles-csv`"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="CVACT folder (ACT_data.mat) or VIGOR folder"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.csv", help="tile list to write")
    parser.add_argument(
        "--city",
        action="append",
        metavar="CITY",
        help="VIGOR: a city whose tiles to write (repeatable; default: every city of the folder)",
    )
    parser.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="CVACT: whose aerial tiles (val = CVACT_val, the default; test = CVACT_test)",
    )
    parser.add_argument(
        "--utm-epsg",
        type=int,
        default=None,
        metavar="CODE",
        help="CVACT: EPSG code of ACT_data.mat's UTM positions (default 32755, WGS 84 / UTM 55S)",
    )
    parser.add_argument(
        "--no-check-images",
        dest="check_images",
        action="store_false",
        help="do not open each tile's header (a missing or unreadable file is then only found by cvm-index)",
    )


def run(args: argparse.Namespace) -> int:
    from model.data import DatasetError
    from model.gallery import open_gallery, summarise

    try:
        gallery = open_gallery(
            args.data,
            cities=args.city,
            split=args.split,
            utm_epsg=args.utm_epsg,
            check_images=args.check_images,
        )
    except DatasetError as exc:
        print(f"cvm gallery: error: {exc}", file=sys.stderr)
        return 2
    for path, why in gallery.problems:
        print(f"left out: {path}: {why}", file=sys.stderr)
    if not gallery.tiles:
        print(f"cvm gallery: error: no tile to write ({summarise(gallery)})", file=sys.stderr)
        return 2
    try:
        gallery.write_csv(args.out)
    except OSError as exc:
        print(f"cvm gallery: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"{summarise(gallery)} to {args.out}")
    # 3, as cvm-index's partial build: the list is usable, but some tiles are not in it.
    return 3 if gallery.problems else 0
