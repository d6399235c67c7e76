"""Calibrated confidence of a location estimate: fit, apply, measure, store.

The estimate (`service.estimate`) yields raw features: the winning group's share of the softmax
mass, the runner-up's share, the top score's z-score within the pool and the group's size. A
logistic model per query kind (panorama, photo) maps them to the probability that the true
place lies within the estimate's `radius_m`. It is fitted on worlds with known positions (`cvm
calibrate`) and stored in a JSON sidecar next to the weights file, `<weights>.calibration.json`
(e.g. `model/weights/cvm-net-i-cpu.calibration.json`): a file beside the checkpoint rather than
inside it, so that fitting it never changes the weights' sha256, which every index build records.
The sidecar names the sha256 of the weights it was fitted for and is ignored for other weights.

It also holds the estimate's parameters used when fitting (the service uses the same), the
threshold below which an answer is "no confident match", and (format 2) a familiarity model per
query kind (`service.familiarity`): a query unlike the fitting worlds' queries gets a confidence
of at most `unfamiliar_confidence` (0) whatever its consensus, since the logistic models were
fitted on queries like the ones they judge. Format 1 files (no familiarity) are still read.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from model.checkpoint import CheckpointError
from service.estimate import FEATURES, Estimate, EstimateParams
from service.familiarity import BLOCKS, Familiarity, feature_dim

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".calibration.json"
FORMAT = "cvm-calibration/2"
FORMATS = ("cvm-calibration/1", FORMAT)  # readable; 1: without familiarity models
DEFAULT_THRESHOLD = 0.5
NO_MATCH_NOTE = "no confident match"
EPS = 1e-4


def sidecar_path(weights: Path) -> Path:
    """Where the calibration of a weights file lives: `name.pt` -> `name.calibration.json`."""
    return weights.with_name(weights.stem + SIDECAR_SUFFIX)


def design(features: np.ndarray) -> np.ndarray:
    """(n, len(FEATURES)) raw features -> the logistic model's inputs: logits of the two mass
    shares, the z-score as is, log of the group size."""
    f = np.atleast_2d(np.asarray(features, float))
    mass, second = np.clip(f[:, 0], EPS, 1 - EPS), np.clip(f[:, 1], EPS, 1 - EPS)
    return np.stack(
        [
            np.log(mass / (1 - mass)),
            np.log(second / (1 - second)),
            f[:, 2],
            np.log(np.maximum(f[:, 3], 1.0)),
        ],
        axis=1,
    )


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, float)))


@dataclass(frozen=True)
class Logistic:
    """p = sigmoid(intercept + coef . x), x standardised with (mean, scale) first."""

    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return sigmoid(self.intercept + z @ np.asarray(self.coef))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 100) -> Logistic:
    """Maximum-likelihood logistic regression (Newton's method, a small L2 penalty on the
    coefficients, not the intercept) on standardised inputs."""
    x, y = np.atleast_2d(np.asarray(x, float)), np.asarray(y, float)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    a = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    beta = np.zeros(a.shape[1])
    penalty = np.full(a.shape[1], l2 * len(x))
    penalty[0] = 0.0
    for _ in range(iters):
        p = sigmoid(a @ beta)
        grad = a.T @ (p - y) + penalty * beta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return Logistic(
        tuple(map(float, beta[1:])), float(beta[0]), tuple(map(float, mean)), tuple(map(float, scale))
    )


@dataclass(frozen=True)
class Calibration:
    """Per-kind logistic models, the estimate parameters they were fitted with, the threshold of a
    confident answer and the weights they belong to."""

    models: Mapping[str, Logistic]
    weights_sha256: str
    params: EstimateParams = field(default_factory=EstimateParams)
    threshold: float = DEFAULT_THRESHOLD
    fitted_on: Mapping[str, Any] = field(default_factory=dict)
    familiarity: Mapping[str, Familiarity] = field(default_factory=dict)
    unfamiliar_confidence: float = 0.0  # the highest confidence an unfamiliar query gets

    def confidence(self, est: Estimate, kind: str) -> float:
        """The calibrated probability that the true place lies within `est.radius_m`."""
        model = self.models.get(kind)
        if model is None:
            return float(est.raw)
        return float(model.predict(design(np.asarray([est.feature_vector()])))[0])

    def familiar(self, kind: str, features: np.ndarray | None) -> tuple[bool, float] | None:
        """(familiar, score) of a query's familiarity features ((m, dim), `service.familiarity`);
        None when there is no model for the kind or no features to judge."""
        model = self.familiarity.get(kind)
        if model is None or features is None or len(features) == 0:
            return None
        return model.familiar(features)

    def feature_blocks(self) -> tuple[int, ...]:
        """The VGG blocks whose moments the familiarity models read (`service.familiarity`)."""
        return next((f.blocks for f in self.familiarity.values()), BLOCKS)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "weights_sha256": self.weights_sha256,
            "features": list(FEATURES),
            "params": asdict(self.params),
            "threshold": self.threshold,
            "models": {kind: asdict(m) for kind, m in self.models.items()},
            "fitted_on": dict(self.fitted_on),
            "unfamiliar_confidence": self.unfamiliar_confidence,
            "familiarity": {kind: f.to_json() for kind, f in self.familiarity.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("format") not in FORMATS:
            raise ValueError(f"not a {' or '.join(FORMATS)} file (format {data.get('format')!r})")
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"features {data.get('features')} != {list(FEATURES)}")
        unfamiliar = float(data.get("unfamiliar_confidence", 0.0))
        if not 0.0 <= unfamiliar <= 1.0:
            raise ValueError(f"unfamiliar_confidence {unfamiliar} is not a probability")
        models = {
            kind: Logistic(tuple(m["coef"]), float(m["intercept"]), tuple(m["mean"]), tuple(m["scale"]))
            for kind, m in data["models"].items()
        }
        return cls(
            models=models,
            weights_sha256=str(data["weights_sha256"]),
            params=EstimateParams(**data.get("params", {})),
            threshold=float(data.get("threshold", DEFAULT_THRESHOLD)),
            fitted_on=dict(data.get("fitted_on", {})),
            familiarity={kind: Familiarity.from_json(f) for kind, f in data.get("familiarity", {}).items()},
            unfamiliar_confidence=unfamiliar,
        )

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)


def load_calibration(weights: Path, weights_sha256: str) -> Calibration | None:
    """The sidecar of `weights` when present and fitted for these weights, else None (logged).
    A sidecar that cannot be read raises CheckpointError naming the file (the start stops, as
    for a broken checkpoint)."""
    path = sidecar_path(weights)
    if not path.is_file():
        log.info("no calibration at %s: confidences are the raw consensus share", path)
        return None
    try:
        cal = Calibration.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable calibration: {exc}") from exc
    if cal.weights_sha256 != weights_sha256:
        log.warning(
            "%s was fitted for weights %s..., not %s...: ignored",
            path,
            cal.weights_sha256[:12],
            weights_sha256[:12],
        )
        return None
    log.info("calibration %s", path)
    return cal


def check_fits_model(cal: Calibration | None, model: Any, where: Path) -> None:
    """Refuse (CheckpointError naming `where`) familiarity models that read other VGG blocks or
    another number of features than `model` gives: otherwise every query would fail to score."""
    for kind, fam in ({} if cal is None else cal.familiarity).items():
        dim = feature_dim(model, fam.blocks)
        if dim != fam.dim:
            raise CheckpointError(
                f"{where}: the {kind} familiarity model reads {fam.dim} features of VGG blocks "
                f"{list(fam.blocks)}, these weights give {dim if dim is not None else 'none'}"
            )


@dataclass(frozen=True)
class Bin:
    """One row of a reliability table: confidences in [lo, hi)."""

    lo: float
    hi: float
    n: int
    confidence: float  # mean predicted
    accuracy: float  # fraction correct


def reliability(confidence: ArrayLike, correct: ArrayLike, bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1] (the last one closed); empty bins are left out."""
    c, y = np.asarray(confidence, float), np.asarray(correct, float)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append(Bin(b / bins, (b + 1) / bins, int(m.sum()), float(c[m].mean()), float(y[m].mean())))
    return rows


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = 10) -> float:
    """ECE: the bins' |accuracy - mean confidence|, weighted by their share of the answers."""
    rows = reliability(confidence, correct, bins)
    n = sum(r.n for r in rows)
    return float(sum(r.n * abs(r.accuracy - r.confidence) for r in rows) / n) if n else math.nan
