"""`cvm localize PHOTO`: the service's pipeline from the command line, against the local index."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.pipeline import LocalizeResult

HELP = "Localise a ground photo or panorama against the active local index (no server needed)."


def _k(value: str) -> int:
    k = int(value)
    if not 1 <= k <= 100:
        raise argparse.ArgumentTypeError(f"k must be in 1..100, got {k}")
    return k


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", type=Path, help="JPEG, PNG or WebP ground image")
    parser.add_argument("--k", type=_k, default=5, help="number of candidates (1..100, default 5)")
    parser.add_argument(
        "--kind",
        choices=("panorama", "photo"),
        default=None,
        help="input kind (default: panorama when width / height >= 3, else photo)",
    )
    parser.add_argument("--json", action="store_true", help="print the same JSON as POST /localize")
    prior = parser.add_mutually_exclusive_group()
    prior.add_argument(
        "--near", metavar="LAT,LON", help="search prior: rank only tiles within --radius-m of this point"
    )
    prior.add_argument(
        "--bbox", metavar="W,S,E,N", help="search prior: rank only tiles whose centre lies in this box"
    )
    parser.add_argument("--radius-m", type=float, metavar="R", help="radius of the --near prior in metres")


def _print_table(result: LocalizeResult) -> None:
    print(f"build {result.build_id}, kind {result.kind}, {result.timings_ms['total']:.1f} ms")
    print(f"{'rank':>4}  {'tile':>8}  {'lat':>11}  {'lon':>12}  {'score':>7}")
    for c in result.candidates:
        print(f"{c.rank:>4}  {c.tile.id:>8}  {c.tile.lat:>11.6f}  {c.tile.lon:>12.6f}  {c.score:>7.4f}")
    est = result.estimate
    if est is not None:
        verdict = "confident" if est.confident else (est.note or "not confident")
        print(
            f"estimate {est.lat:.6f}, {est.lon:.6f} within {est.radius_m:.0f} m, "
            f"confidence {est.confidence:.2f} ({verdict})"
        )


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from model.checkpoint import CheckpointError
    from model.runtime import claim_pool, set_search_threads
    from service.catalog import Catalog
    from service.core.config import ServiceSettings
    from service.core.state import load_localizer
    from service.errors import BadPrior, ServiceError
    from service.pipeline import localize_once
    from service.prior import parse_prior
    from service.schemas import localize_out
    from service.store import SnapshotStore
    from storage.db import make_engine
    from storage.errors import StorageError

    try:
        prior = parse_prior(args.near, args.radius_m, args.bbox)
    except BadPrior as exc:
        print(f"cvm localize: {exc}", file=sys.stderr)
        return 2
    try:
        data = args.photo.read_bytes()
    except OSError as exc:
        print(f"cvm localize: cannot read {args.photo}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        settings = ServiceSettings()
        localizer = load_localizer(settings)
        set_search_threads(settings.search_threads)
        catalog = Catalog(make_engine(settings.database_url, read_only=True))
        store = SnapshotStore(catalog, settings.index_root, localizer.weights_sha256, localizer.out_dim)
        store.refresh()
        claim_pool(settings.torch_threads)  # one thread does it all here
        snapshot = store.require()
        allowed = None if prior is None else snapshot.select(prior)
        result = localize_once(localizer, snapshot, data, args.k, args.kind, allowed=allowed)
    except BadPrior as exc:  # no tile of the build inside the prior
        print(f"cvm localize: {exc}", file=sys.stderr)
        return 2
    except (ServiceError, CheckpointError, FileNotFoundError, StorageError, ValidationError) as exc:
        print(f"cvm localize: {args.photo}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(localize_out(result, args.k).model_dump_json(indent=2))
    else:
        _print_table(result)
    return 0
