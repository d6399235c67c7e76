"""`cvm eval`: ground->satellite retrieval metrics of a checkpoint (and baselines) on a split."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from model.baselines import BASELINES, baseline_metrics
from model.centering import has_centers
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint
from model.config import VIEW_COUNTS
from model.data import DatasetError
from model.evaluate import evaluate_model, open_eval_dataset
from model.metrics import RetrievalMetrics, format_table
from model.protocols import ProtocolReport, evaluate_protocol, format_report, is_protocol_dataset
from model.transforms import ImageLoadError
from model.views import set_inference_options
from model.vigor import VigorDataset
from model.weights import default_weights_path

HELP = "evaluate a checkpoint: R@1/5/10, R@1%% (both conventions), median rank, location error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", metavar="PATH", help="checkpoint (default: the shipped weights)")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="CVUSA root, synthetic world folder, CVACT folder (ACT_data.mat) or VIGOR folder "
        "(DIR, DIR@same-area or DIR@cross-area); CVACT and VIGOR report their own protocol's figures",
    )
    parser.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="val",
        help="which split to evaluate (test: CVACT_test, VIGOR's test split; VIGOR's val = test)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--queries",
        choices=("panorama", "photo"),
        default="panorama",
        help="ground queries: the panoramas, or a synthetic world's perspective photos",
    )
    parser.add_argument(
        "--headings",
        type=int,
        default=None,
        metavar="N",
        help="try each photo query at N headings (360/N degree steps) and keep each tile's best "
        "similarity (default: the checkpoint's photo_headings, as the service does)",
    )
    parser.add_argument(
        "--views",
        type=int,
        choices=VIEW_COUNTS,
        help="test-time views of every descriptor (default: the checkpoint's; docs/model.md)",
    )
    parser.add_argument(
        "--centered",
        action=argparse.BooleanOptionalAction,
        help="centre the descriptors with the means stored in the weights, or not (default: as the "
        "checkpoint says; docs/model.md)",
    )
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        action="append",
        default=[],
        help="also report a baseline (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.headings is not None and args.headings != 1 and args.queries != "photo":
        raise ValueError("--headings applies to photo queries (--queries photo); panoramas face north")
    weights = Path(args.weights) if args.weights else default_weights_path()
    loaded = load_checkpoint(weights, device=args.device)
    if args.centered and not has_centers(loaded.model):
        raise ValueError(f"{weights} holds no descriptor means to centre with (scripts/center_weights.py)")
    set_inference_options(loaded.model, views=args.views, centered=args.centered)
    dataset = open_eval_dataset(args.data, loaded.config.preprocessing, args.split, args.queries)
    protocol: ProtocolReport | None = None
    if is_protocol_dataset(dataset):
        if args.baseline and isinstance(dataset, VigorDataset):
            raise ValueError("--baseline needs paired data (CVUSA layout, CVACT); VIGOR ranks a gallery")
        protocol = evaluate_protocol(
            loaded.model, dataset, batch_size=args.batch_size, workers=args.workers, device=args.device
        )
    elif args.split == "test":
        raise ValueError("--split test exists for CVACT and VIGOR folders only")
    headings = args.headings
    if headings is None:  # as the service tries photos; panoramas face north
        headings = loaded.config.preprocessing.photo_headings if args.queries == "photo" else 1
    if protocol is not None:
        metrics, skipped = protocol.retrieval, protocol.skipped_queries
    else:
        metrics, skipped = evaluate_model(
            loaded.model, dataset, args.batch_size, args.workers, args.device, headings=headings
        )
    results: dict[str, RetrievalMetrics] = {"model": metrics}
    for kind in args.baseline:
        results[kind] = baseline_metrics(kind, dataset, seed=args.seed)
    return {
        "weights": str(weights),
        "weights_sha256": file_sha256(weights),
        "arch": loaded.config.arch,
        "preset": loaded.config.preset,
        "data": str(getattr(dataset, "root", args.data)),
        "split": args.split,
        "queries": args.queries,
        "headings": headings,
        "views": loaded.model.config.preprocessing.views,
        "centered": loaded.model.config.preprocessing.centered,
        "pairs": len(dataset),
        "missing": len(dataset.missing),
        "skipped": skipped,
        "protocol": protocol,
        "results": results,
    }


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = _evaluate(args)
    except (CheckpointError, DatasetError, ImageLoadError, FileNotFoundError, ValueError) as exc:
        print(f"cvm eval: error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, RetrievalMetrics] = report.pop("results")
    protocol: ProtocolReport | None = report.pop("protocol")
    if args.json:
        report["results"] = {name: m.to_dict() for name, m in results.items()}
        if protocol is not None:
            report["protocol"] = protocol.to_dict()
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['arch']} ({report['preset']}) {report['weights']}")
    print(
        f"{report['data']} split={report['split']} queries={report['queries']} pairs={report['pairs']}"
        f" views={report['views']} centred={'yes' if report['centered'] else 'no'}"
        f" (missing {report['missing']}, unreadable {report['skipped']})"
    )
    if protocol is not None:
        print(format_report(protocol))
        if len(results) > 1:
            print(format_table(results))
        return 0
    print(format_table(results))
    return 0
