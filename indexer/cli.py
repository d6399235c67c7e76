"""`cvm-index`: satellite imagery -> tiles -> embeddings -> FAISS index + tile catalogue.

Sub-commands: build, list, info, verify, activate, tiles. The catalogue URL and the index folder
come from CVM_DATABASE_URL / CVM_INDEX_DIR (or --database-url / --index-dir); the schema is
brought up to date with Alembic before any command touches it.

Exit codes: 0 success; 1 verification mismatch or failure; 2 usage error or nothing indexed;
3 partial build (some inputs rejected, the rest indexed); 130 interrupted (run it again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from indexer.errors import IndexerError, UsageError
from model.runtime import reuse_freed_memory
from storage.errors import BuildNotFound, StorageError
from storage.settings import Settings


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagery", nargs="+", default=[], metavar="PATH", help="GeoTIFF files, folders or globs")
    p.add_argument("--tiles-csv", metavar="FILE", help="pre-cut tiles: CSV with columns path,lat,lon,size_m")
    p.add_argument("--weights", type=Path, help="checkpoint (default: CVM_WEIGHTS, else the shipped weights)")
    p.add_argument("--tile-size-m", type=_positive, help="tile side in ground metres (default: the weights')")
    p.add_argument("--stride-m", type=_positive, help="distance between tile centres (default: half a tile)")
    p.add_argument("--batch-size", type=int, default=32, help="tiles per forward pass (default 32)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--index-type", choices=("auto", "flat", "ivfpq", "hnsw"), default="auto")
    p.add_argument(
        "--memory-budget",
        type=_size,
        metavar="SIZE",
        help="RAM the index may take, e.g. 512MB or 2GiB: the best index that fits (flat, HNSW, "
        "or OPQ+IVF+PQ re-ranked with the exact vectors kept on disk); with --index-type auto",
    )
    p.add_argument(
        "--region-km",
        type=_region_km,
        metavar="KM",
        help="split the index into region shards of about KM x KM km (the service searches only "
        "the regions a prior reaches; see docs/scale.md); default: one index",
    )
    p.add_argument("--no-activate", action="store_true", help="publish without making it the served build")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        nargs="?",
        type=int,
        const=-1,
        metavar="BUILD",
        help="resume an interrupted build (default: the newest one); automatic for the same inputs",
    )
    g.add_argument("--fresh", action="store_true", help="start a new build even if one can be resumed")
    p.add_argument("--shard-size", type=int, default=2048, help="tiles per resumable shard (default 2048)")
    p.add_argument(
        "--read-threads",
        type=int,
        default=0,
        help="threads reading tiles ahead (default: half the CPU cores, 1-8)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads of the forward pass, either engine (default 0: one per core)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="embed in this process (local) or as a Ray Data pipeline (ray; the 'ray' extra)",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto")
    p.add_argument(
        "--ray-actors",
        type=int,
        default=0,
        help="embedding actors (default: one per GPU of the cluster, else half its CPUs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the tile count, estimated embedding time and index memory; write nothing",
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _region_km(text: str) -> float:
    from storage.regions import REGION_KM_MAX, REGION_KM_MIN

    value = _positive(text)
    if not REGION_KM_MIN <= value <= REGION_KM_MAX:
        raise argparse.ArgumentTypeError(
            f"must be between {REGION_KM_MIN:g} and {REGION_KM_MAX:g} km, got {text}"
        )
    return value


def _size(text: str) -> int:
    from storage.budget import BudgetError, parse_size

    try:
        return parse_size(text)
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvm-index", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="catalogue URL (default: CVM_DATABASE_URL)")
    parser.add_argument("--index-dir", type=Path, help="folder of the build folders (default: CVM_INDEX_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _build_args(sub.add_parser("build", help="index imagery into a new (or resumed) build"))
    sub.add_parser("list", help="list builds")
    p = sub.add_parser("info", help="describe a build (default: the active one)")
    p.add_argument("build", nargs="?", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--queries",
        type=int,
        default=100,
        metavar="N",
        help="stored vectors used as queries to measure recall@10 against exact search "
        "(default 100; 0: no measurement)",
    )
    p = sub.add_parser("verify", help="check a build's index against its catalogue, weights and imagery")
    p.add_argument("build", nargs="?", type=int)
    p.add_argument("--weights", type=Path, help="weights file to check (default: the build's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sample", type=int, default=0, help="re-embed this many random tiles (default: all)")
    g.add_argument("--quick", action="store_const", dest="sample", const=16, help="re-embed 16 random tiles")
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted vector difference")
    p = sub.add_parser("activate", help="make a finished build the served one (roll back or forward)")
    p.add_argument("build", type=int)
    p = sub.add_parser("tiles", help="export a build's tile catalogue")
    p.add_argument("build", nargs="?", type=int)
    p.add_argument("--format", choices=("geojson", "csv"), default="geojson")
    p.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment settings, overridden by --database-url / --index-dir."""
    overrides = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.index_dir:
        overrides["index_dir"] = args.index_dir
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from indexer import commands

    reuse_freed_memory()  # a build repeats forward passes
    try:
        settings = settings_from(args)
        return int(getattr(commands, f"cmd_{args.command}")(args, settings))
    except (UsageError, BuildNotFound) as exc:
        print(f"cvm-index: error: {exc}", file=sys.stderr)
        return 2
    except (IndexerError, StorageError) as exc:
        print(f"cvm-index: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of our output (e.g. `| head`) went away: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print("cvm-index: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
