"""`cvm eval-service`: what a user of `/localize` sees, measured on worlds with known positions."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HELP = (
    "index synthetic worlds as cvm-index build does and answer their ground images through the "
    "service's pipeline: estimate and top-candidate errors, top-k hits, confidence calibration"
)


def kinds(text: str) -> tuple[str, ...]:
    out = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in out if k not in ("panorama", "photo")]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"--queries: a comma-separated list of panorama, photo; got {text!r}"
        )
    return out


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared with `cvm calibrate`."""
    parser.add_argument(
        "--world",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a `cvm synth` world (repeatable)",
    )
    parser.add_argument(
        "--weights", type=Path, help="checkpoint (default: CVM_WEIGHTS or the shipped weights)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where each world's catalogue and index go (<data-dir>/<world name>; an active build "
        "made with the same weights is reused); default: a temporary folder",
    )
    parser.add_argument(
        "--queries", type=kinds, default=("panorama", "photo"), help="panorama,photo (default both)"
    )
    parser.add_argument(
        "--n", type=int, default=None, help="ground images of each kind per world (default all)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--records", type=Path, help="reuse the per-query records saved by --save-records")
    parser.add_argument("--save-records", type=Path, help="write the per-query records (JSON lines)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument(
        "--calibration",
        help="calibration file to judge the estimates with (default: the weights' sidecar, "
        "docs/service.md); `none`: the raw consensus share",
    )
    parser.add_argument("--bins", type=int, default=10, help="bins of the reliability table (default 10)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def collect(args: argparse.Namespace, calibration_arg: str | None):  # type: ignore[no-untyped-def]
    """(localizer, records) for the options shared by eval-service and calibrate."""
    import torch

    from cli.service_eval import answer_world, load_records, save_records
    from model.checkpoint import file_sha256, load_checkpoint
    from model.weights import default_weights_path
    from service.calibration import Calibration, check_fits_model
    from service.localizer import Localizer
    from storage.settings import Settings

    weights = args.weights or Settings().weights or default_weights_path()
    torch.set_num_threads(max(1, args.threads))
    if calibration_arg == "none":  # the sidecar is not read (it may be the one being replaced)
        localizer = Localizer(load_checkpoint(weights), file_sha256(weights), 40_000_000)
    else:
        localizer = Localizer.from_checkpoint(weights)
    if calibration_arg and calibration_arg != "none":
        localizer.calibration = Calibration.from_json(json.loads(Path(calibration_arg).read_text()))
        check_fits_model(localizer.calibration, localizer.model, Path(calibration_arg))
    if args.records:
        records = load_records(args.records)
    else:
        if not args.world:
            raise SystemExit("give --world DIR (or --records FILE)")
        records = []
        with tempfile.TemporaryDirectory(prefix="cvm-eval-") as tmp:
            root = args.data_dir or Path(tmp)
            for world in args.world:
                records += answer_world(world, root / world.resolve().name, localizer, args.queries, args.n)
    if args.save_records:
        save_records(records, args.save_records)
    return localizer, records


def run(args: argparse.Namespace) -> int:
    from cli.service_eval import format_summary, re_estimate, summarize

    localizer, records = collect(args, args.calibration)
    if args.records:  # judged with the calibration asked for now, not the one of the saved run
        records = re_estimate(records, localizer.calibration)
    summary = summarize(records, args.bins)
    cal = localizer.calibration
    summary["calibration"] = None if cal is None else cal.to_json()["fitted_on"]
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(format_summary(summary))
    return 0
