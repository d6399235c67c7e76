"""Is a query like the imagery the weights were calibrated on? A novelty score of the query itself.

The consensus features of `service.estimate` describe how the best tiles agree, not what the query
is: a real photograph, a blank or a noise image against a synthetic index gets consensus features
like those of a synthetic panorama, and so a confidence like theirs. Nor, in trials, did the
final descriptor tell them apart (it is centred and L2-normalised per view; a PCA Mahalanobis
score or the cosine distance to the nearest calibration queries of it flagged almost none of
them). The ground branch's intermediate activations do (docs/model-card.md, "Out of
distribution"): what is measured here is the per-channel mean and standard
deviation of the outputs of VGG blocks 2-4 of the ground branch (`BLOCKS`; 16 + 32 + 64 channels
for the shipped `cpu` preset, 224 numbers), averaged over the test-time views: a summary of the
query's textures as the network sees them, cheap to take while the descriptor is computed
(`BlockMoments`, forward hooks, no second forward pass).

The model of a query kind (`Familiarity`): those features standardised, a PCA of `k` components
fitted on in-distribution queries, and the score

    s(x) = (sum_i z_i^2 / lambda_i + |r|^2 / rho) / dim

with z the coordinates in the components, lambda their variances, r the residual outside them and
rho the mean variance per residual dimension: a Mahalanobis distance that also counts what the
components miss, per dimension (about 1 for a typical query). A query whose score exceeds
`threshold` is unfamiliar. The threshold is the `percentile` of the out-of-fold scores of the
fitting queries (`fit_familiarity`: k-fold, each fold scored by a model fitted on the others), so
about (100 - percentile) % of in-distribution queries are rejected by construction.

Stored in the calibration sidecar (`service.calibration`) as base64 float32 arrays.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it runs: `cvm --help` and the CLI parsers stay light
    import torch
    from torch import nn

BLOCKS = (1, 2, 3)  # VGG blocks (0-based: conv2, conv3, conv4) of the ground branch
DEFAULT_COMPONENTS = 48
DEFAULT_PERCENTILE = 99.5
DEFAULT_FOLDS = 5
UNFAMILIAR_REASON = "the image is unlike the imagery these weights know"


def encode_array(a: np.ndarray) -> str:
    """float32 little-endian bytes, base64 (the sidecar is JSON)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def decode_array(text: Any, shape: Sequence[int], name: str) -> np.ndarray:
    """The inverse of `encode_array`; ValueError naming the field when it does not fit `shape`."""
    if not isinstance(text, str):
        raise ValueError(f"familiarity field {name!r}: expected a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"familiarity field {name!r}: not base64 ({exc})") from exc
    n = int(np.prod(shape))
    if len(raw) != 4 * n:
        raise ValueError(f"familiarity field {name!r}: {len(raw) // 4} values, expected {n} {tuple(shape)}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(tuple(shape))


@dataclass(frozen=True)
class Familiarity:
    """The novelty model of one query kind: standardisation, PCA, threshold (module doc)."""

    mean: np.ndarray  # (dim,)
    scale: np.ndarray  # (dim,)
    components: np.ndarray  # (k, dim), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float  # mean variance per dimension outside the components
    threshold: float
    percentile: float
    blocks: tuple[int, ...] = BLOCKS
    fitted_on: int = 0  # queries

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n,) scores (about 1 for a typical in-distribution query)."""
        x = np.atleast_2d(np.asarray(features, float))
        if x.shape[1] != self.dim:
            raise ValueError(f"familiarity: features of {x.shape[1]} values, the model has {self.dim}")
        y = (x - self.mean) / self.scale
        z = y @ self.components.T
        residual = np.maximum((y * y).sum(1) - (z * z).sum(1), 0.0)
        return ((z * z / self.variances).sum(1) + residual / self.residual_variance) / self.dim

    def familiar(self, features: np.ndarray) -> tuple[bool, float]:
        """(familiar, score) of one query given as (m, dim) rows (m inputs, e.g. a photo's
        headings): its most familiar row counts."""
        s = float(self.score(features).min())
        return s <= self.threshold, s

    def to_json(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "dim": self.dim,
            "components": len(self.variances),
            "mean": encode_array(self.mean),
            "scale": encode_array(self.scale),
            "basis": encode_array(self.components),
            "variances": encode_array(self.variances),
            "residual_variance": self.residual_variance,
            "threshold": self.threshold,
            "percentile": self.percentile,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Familiarity:
        """ValueError naming the field when something does not fit."""
        dim, k = int(data["dim"]), int(data["components"])
        if dim < 1 or not 1 <= k <= dim:
            raise ValueError(f"familiarity: components {k} and dim {dim} do not fit")
        variances = decode_array(data["variances"], (k,), "variances")
        scale = decode_array(data["scale"], (dim,), "scale")
        residual = float(data["residual_variance"])
        if (variances <= 0).any() or (scale <= 0).any() or residual <= 0:
            raise ValueError("familiarity: variances, scale and residual_variance must be positive")
        return cls(
            mean=decode_array(data["mean"], (dim,), "mean"),
            scale=scale,
            components=decode_array(data["basis"], (k, dim), "basis"),
            variances=variances,
            residual_variance=residual,
            threshold=float(data["threshold"]),
            percentile=float(data["percentile"]),
            blocks=tuple(int(b) for b in data["blocks"]),
            fitted_on=int(data.get("fitted_on", 0)),
        )


def _fit_pca(x: np.ndarray, k: int, blocks: tuple[int, ...]) -> Familiarity:
    """The model's parts (threshold infinite) from (n, dim) features."""
    mean = x.mean(0)
    scale = x.std(0)
    # A constant feature carries no information; its scale 1 keeps it from dividing by zero.
    scale[scale < 1e-8] = 1.0
    y = (x - mean) / scale
    _, s, vt = np.linalg.svd(y, full_matrices=False)
    var = s * s / max(len(x) - 1, 1)
    k = min(k, len(var))
    rest = x.shape[1] - k
    # Fewer queries than dimensions leave trailing variances at 0: the floor keeps scores finite.
    floor = 1e-6 * max(float(var[0]), 1e-12)
    residual = float(var[k:].sum()) / rest if rest > 0 else 1.0
    return Familiarity(
        mean=mean,
        scale=scale,
        components=vt[:k],
        variances=np.maximum(var[:k], floor),
        residual_variance=max(residual, floor),
        threshold=float("inf"),
        percentile=float("nan"),
        blocks=blocks,
        fitted_on=len(x),
    )


def fit_familiarity(
    features: np.ndarray,
    components: int = DEFAULT_COMPONENTS,
    percentile: float = DEFAULT_PERCENTILE,
    folds: int = DEFAULT_FOLDS,
    blocks: tuple[int, ...] = BLOCKS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Familiarity:
    """The model of in-distribution `features` (n, dim): PCA on all of them, the threshold at
    `percentile` of out-of-fold query scores (each of `folds` seeded folds scored by a model
    fitted on the rest, so the threshold is set on queries the scoring model has not seen).

    `groups` (n,) names the query of each row when a query has several (a photo tried at several
    headings); a query scores as its most familiar row, as `Familiarity.familiar` judges it, so
    the threshold is a percentile of those minima and a query's rows share one fold. Without
    `groups` each row is a query."""
    x = np.asarray(features, float)
    g = np.arange(len(x)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    queries = int(g.max()) + 1 if len(g) else 0
    if x.ndim != 2 or len(g) != len(x) or queries < 2 * folds:
        raise ValueError(
            f"familiarity: need at least {2 * folds} queries of (n, dim) features, got {queries} "
            f"queries in {x.shape} features"
        )
    if not 0 < percentile < 100:
        raise ValueError(f"familiarity: percentile must lie in (0, 100), got {percentile}")
    fold = (np.random.default_rng(seed).permutation(queries) % folds)[g]
    held_out = np.empty(len(x))
    for f in range(folds):
        held_out[fold == f] = _fit_pca(x[fold != f], components, blocks).score(x[fold == f])
    per_query = np.full(queries, np.inf)
    np.minimum.at(per_query, g, held_out)
    model = _fit_pca(x, components, blocks)
    threshold = float(np.percentile(per_query, percentile))
    return Familiarity(
        mean=model.mean,
        scale=model.scale,
        components=model.components,
        variances=model.variances,
        residual_variance=model.residual_variance,
        threshold=threshold,
        percentile=float(percentile),
        blocks=blocks,
        fitted_on=queries,
    )


def feature_dim(model: nn.Module | None, blocks: Sequence[int]) -> int | None:
    """How many features `BlockMoments` takes from `blocks` of the model's ground VGG: a mean and
    a spread per output channel of each block; None when the model has no such blocks."""
    import torch

    modules = getattr(getattr(model, "vgg_ground", None), "blocks", None)
    if modules is None or not blocks or max(blocks) >= len(modules) or min(blocks) < 0:
        return None
    channels = 0
    for b in blocks:
        convs = [m for m in modules[b].modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            return None
        channels += convs[-1].out_channels
    return 2 * channels


class BlockMoments:
    """While open (`with`), records the per-channel mean and standard deviation of the outputs of
    `blocks` of the ground branch's VGG (`model.vgg_ground.blocks`) computed in this thread.

    Forward hooks, removed on exit; a forward pass in another thread meanwhile is not recorded.
    `features(n)`: (n, dim) for the n inputs of the last forward pass, averaged over its views
    (the model embeds views * n rows, view by view: `model.views.describe`).
    """

    def __init__(self, model: nn.Module | None, blocks: Sequence[int] = BLOCKS) -> None:
        vgg = getattr(model, "vgg_ground", None)
        modules = getattr(vgg, "blocks", None)
        if modules is None or max(blocks) >= len(modules):
            raise ValueError(f"familiarity: the model has no ground VGG blocks {tuple(blocks)}")
        self._modules = [modules[b] for b in blocks]
        self._owner = threading.get_ident()
        self._out: list[torch.Tensor | None] = [None] * len(blocks)
        self._handles: list[Any] = []

    def _hook(self, i: int) -> Any:
        import torch

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if threading.get_ident() == self._owner:
                flat = output.detach().float().flatten(2)
                self._out[i] = torch.cat([flat.mean(2), flat.std(2)], dim=1).cpu()

        return hook

    def __enter__(self) -> BlockMoments:
        self._owner = threading.get_ident()
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self._modules)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def features(self, n: int) -> np.ndarray:
        """(n, dim) features of the last forward pass's n inputs."""
        import torch

        if any(o is None for o in self._out):
            raise RuntimeError("familiarity: no forward pass was recorded")
        rows = torch.cat([o for o in self._out if o is not None], dim=1)  # (views * n, dim)
        if len(rows) % n:
            raise RuntimeError(f"familiarity: {len(rows)} recorded rows for {n} inputs")
        return rows.reshape(len(rows) // n, n, -1).mean(0).numpy().astype(np.float64)


def embed_recording(localizer: Any, x: torch.Tensor, photo: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """`localizer.embed(x, photo)` and the familiarity features of its inputs ((len(x), dim)) from
    the blocks its calibration's models read (`BLOCKS` without one). Features are None when the
    localizer has no model with those ground VGG blocks (nothing to judge then)."""
    calibration = getattr(localizer, "calibration", None)
    blocks = BLOCKS if calibration is None else calibration.feature_blocks()
    try:
        recorder = BlockMoments(getattr(localizer, "model", None), blocks)
    except ValueError:
        return localizer.embed(x, photo), None
    with recorder:
        emb = localizer.embed(x, photo)
    return emb, recorder.features(len(x))
