"""`cvm calibrate`: fit the confidence of the location estimate on worlds with known positions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.eval_service import add_common

HELP = (
    "fit the calibrated confidence of /localize's location estimate on synthetic worlds and write "
    "it beside the weights (<weights>.calibration.json)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--out", type=Path, help="calibration file (default: the weights' sidecar)")
    parser.add_argument("--threshold", type=float, default=0.5, help="confidence of a confident answer (0.5)")
    for flag, kind, text in (
        ("--pool", int, "candidates the estimate considers"),
        ("--temperature", float, "softmax temperature over the scores"),
        ("--bandwidth-tiles", float, "kernel bandwidth, in tile sizes"),
        ("--spread-factor", float, "radius = factor x the group's RMS spread"),
        ("--min-radius-strides", float, "smallest radius, in strides"),
    ):
        parser.add_argument(
            flag, type=kind, default=None, help=f"{text} (default: service.estimate.EstimateParams)"
        )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from cli.eval_service import collect
    from cli.service_eval import feature_matrix, re_estimate, summarize
    from service.calibration import Calibration, design, fit_logistic, sidecar_path
    from service.estimate import EstimateParams

    names = ("pool", "temperature", "bandwidth_tiles", "spread_factor", "min_radius_strides")
    params = EstimateParams(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})
    localizer, records = collect(args, "none")
    raw = Calibration(models={}, weights_sha256=localizer.weights_sha256, params=params)
    records = re_estimate(records, raw)
    models = {}
    for kind in sorted({r.kind for r in records}):
        rs = [r for r in records if r.kind == kind]
        y = np.array([r.correct for r in rs], dtype=float)
        models[kind] = fit_logistic(design(feature_matrix(rs)), y)
        print(f"{kind}: {len(rs)} answers, {100 * y.mean():.1f} % within the radius", file=sys.stderr)
    fitted_on = {
        "worlds": sorted({r.world for r in records}),
        "answers": {k: sum(r.kind == k for r in records) for k in models},
    }
    cal = Calibration(
        models=models,
        weights_sha256=localizer.weights_sha256,
        params=params,
        threshold=args.threshold,
        fitted_on=fitted_on,
    )
    out = args.out or sidecar_path(localizer.weights_path)
    cal.save(out)
    summary = summarize(re_estimate(records, cal))
    ece = {k: v["ece"] for k, v in summary.items() if isinstance(v, dict) and "ece" in v}
    print(f"wrote {out}; ECE on the fitting worlds (in-sample): {ece}")
    return 0
