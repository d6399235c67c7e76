"""`cvm calibrate`: fit the confidence of the location estimate on worlds with known positions,
and the familiarity model of each query kind on the same worlds' queries (`service.familiarity`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.eval_service import add_common
from service.familiarity import DEFAULT_COMPONENTS, DEFAULT_PERCENTILE

HELP = (
    "fit the calibrated confidence of /localize's location estimate on synthetic worlds and write "
    "it beside the weights (<weights>.calibration.json)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--out", type=Path, help="calibration file (default: the weights' sidecar)")
    parser.add_argument("--threshold", type=float, default=0.5, help="confidence of a confident answer (0.5)")
    parser.add_argument(
        "--familiarity-components",
        type=int,
        default=DEFAULT_COMPONENTS,
        help=f"PCA components of the familiarity model ({DEFAULT_COMPONENTS})",
    )
    parser.add_argument(
        "--familiarity-percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help="percentile of the fitting queries' out-of-fold familiarity scores above which a query "
        f"is unfamiliar ({DEFAULT_PERCENTILE}: about {100 - DEFAULT_PERCENTILE:g} %% of in-distribution "
        "queries rejected)",
    )
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
    from service.familiarity import Familiarity, fit_familiarity

    if args.familiarity_components < 1:
        raise SystemExit(f"--familiarity-components must be at least 1, got {args.familiarity_components}")
    if not 0 < args.familiarity_percentile < 100:
        raise SystemExit(f"--familiarity-percentile must lie in (0, 100), got {args.familiarity_percentile}")

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
    familiarity: dict[str, Familiarity] = {}
    for kind in models:
        rows = [r.query_features for r in records if r.kind == kind]
        if not all(rows):
            print(
                f"{kind}: the records carry no familiarity features (saved by an older cvm "
                "eval-service): no familiarity model; answer the worlds again to fit one",
                file=sys.stderr,
            )
            continue
        blocks = [np.atleast_2d(np.asarray(q, float)) for q in rows]
        feats = np.concatenate(blocks)
        groups = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])  # a query's rows
        try:
            familiarity[kind] = fit_familiarity(
                feats, args.familiarity_components, args.familiarity_percentile, groups=groups
            )
        except ValueError as exc:  # too few answers of this kind: its confidence is still fitted
            print(f"{kind}: no familiarity model: {exc}", file=sys.stderr)
            continue
        f = familiarity[kind]
        print(
            f"{kind}: familiarity of {len(blocks)} queries ({len(feats)} rows), {len(f.variances)} "
            f"components, threshold "
            f"{f.threshold:.3f} (out-of-fold percentile {f.percentile:g})",
            file=sys.stderr,
        )
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
        familiarity=familiarity,
    )
    out = args.out or sidecar_path(localizer.weights_path)
    cal.save(out)
    summary = summarize(re_estimate(records, cal))
    ece = {k: v["ece"] for k, v in summary.items() if isinstance(v, dict) and "ece" in v}
    print(f"wrote {out}; ECE on the fitting worlds (in-sample): {ece}")
    return 0
