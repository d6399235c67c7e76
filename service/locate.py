"""The answer's location estimate: the consensus of the ranked tiles (`service.estimate`) with its
calibrated confidence (`service.calibration`), as `/localize` and `cvm localize` return it. A query
that the calibration's familiarity model (`service.familiarity`) finds unlike the imagery it was
fitted on is "no confident match" with a confidence of at most `unfamiliar_confidence`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.calibration import DEFAULT_THRESHOLD, NO_MATCH_NOTE, Calibration
from service.catalog import TilePlace
from service.estimate import EARTH_RADIUS_M, Estimate, EstimateParams, estimate
from service.familiarity import UNFAMILIAR_REASON


@dataclass(frozen=True)
class LocationEstimate:
    """Centre (degrees), radius (m), the probability that the true place lies within the radius,
    whether that reaches the calibration's threshold, and a note when it does not; `reason` says
    why when the query itself was judged unfamiliar (`familiarity`: its score, None: not judged)."""

    lat: float
    lon: float
    radius_m: float
    confidence: float
    confident: bool
    note: str | None
    raw: Estimate
    reason: str | None = None
    familiarity: float | None = None


def estimate_params(calibration: Calibration | None) -> EstimateParams:
    """The parameters the calibration was fitted with, else the defaults."""
    return calibration.params if calibration is not None else EstimateParams()


def locate(
    tiles: Sequence[TilePlace],
    scores: Sequence[float],
    kind: str,
    grid_m: tuple[float, float] | None,
    calibration: Calibration | None,
    query_features: np.ndarray | None = None,
) -> LocationEstimate | None:
    """The estimate of ranked tiles (best first). `grid_m`: the build's (tile side, stride) in
    metres; None: the tile side from the bboxes and half of it as the stride. Without a
    calibration the confidence is the raw consensus share and the threshold 0.5.
    `query_features`: the query's familiarity features ((m, dim), `service.familiarity`), judged
    by the calibration's model of the kind when it has one."""
    if not tiles:
        return None
    if grid_m is None:
        side = float(np.median([np.radians(t.north - t.south) * EARTH_RADIUS_M for t in tiles]))
        grid_m = (side, side / 2.0)
    est = estimate(
        np.array([t.lat for t in tiles]),
        np.array([t.lon for t in tiles]),
        np.asarray(scores, float),
        tile_m=grid_m[0],
        stride_m=grid_m[1],
        params=estimate_params(calibration),
    )
    if est is None:
        return None
    verdict = None
    if calibration is None:
        confidence, threshold = est.raw, DEFAULT_THRESHOLD
    else:
        confidence, threshold = calibration.confidence(est, kind), calibration.threshold
        verdict = calibration.familiar(kind, query_features)
    unfamiliar = verdict is not None and not verdict[0]
    if unfamiliar and calibration is not None:
        confidence = min(confidence, calibration.unfamiliar_confidence)
    # An unfamiliar query is never confident, whatever threshold the calibration holds.
    confident = confidence >= threshold and not unfamiliar
    return LocationEstimate(
        lat=est.lat,
        lon=est.lon,
        radius_m=est.radius_m,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
        confident=confident,
        note=None if confident else NO_MATCH_NOTE,
        raw=est,
        reason=UNFAMILIAR_REASON if unfamiliar else None,
        familiarity=None if verdict is None else verdict[1],
    )
