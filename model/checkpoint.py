"""Self-describing checkpoints: weights + ModelConfig (with preprocessing) + version + metrics.

File content (a plain dict written with torch.save, readable with `weights_only=True`):
    {"format": "cvm-geoloc/1", "version": model.__version__, "config": ModelConfig.to_dict(),
     "state_dict": ..., "train_config": dict | None, "metrics": dict | None,
     "created": ISO-8601 UTC time, "state": optional training state for resuming}
`load_checkpoint` rebuilds the model from the file alone; the service, the indexer and
evaluation all load through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model import __version__
from model.centering import with_default_centers
from model.config import ModelConfig
from model.cvm_net import CVMNet, build_model

FORMAT = "cvm-geoloc/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not a cvm-geoloc checkpoint (the message names it)."""


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint: `model` in eval mode, its `config`, `meta` (format,
    version, created, train_config, metrics) and the `path` it came from."""

    model: CVMNet
    config: ModelConfig
    meta: dict[str, Any]
    path: Path


def save_checkpoint(
    path: str | Path,
    net: CVMNet,
    *,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> None:
    """Write `net` atomically (temp file in the same folder + os.replace) to `path`.

    train_config / metrics / state must hold only plain Python values and tensors (what
    `torch.load(weights_only=True)` accepts): optimizer.state_dict(), epoch numbers, RNG states.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "config": net.config.to_dict(),
        # contiguous: the file does not depend on the layout the model ran in (`inference_layout`)
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "train_config": train_config,
        "metrics": metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if state is not None:
        payload["state"] = state
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint dict, validated for format; CheckpointError otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors all mean "not readable"
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a cvm-geoloc checkpoint, or damaged ({_load_reason(exc)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a cvm-geoloc checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    return payload


def _load_reason(exc: Exception) -> str:
    """The cause of a failed `torch.load`, without torch's advice to retry with
    `weights_only=False`: that would run arbitrary code from an untrusted file."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        detail = detail.split(" was not an allowed global")[0].split(". Please")[0].strip()
        return f"it holds data other than tensors and plain values: {detail}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", inference: bool = True
) -> LoadedModel:
    """Rebuild the model stored at `path` on `device`, in eval mode, in `inference_layout` unless
    `inference` is False (a resumed training run continues exactly as it would have).

    Raises CheckpointError (naming the file) when it is missing, corrupt, foreign, or its
    weights do not fit its own config.
    """
    path = Path(path)
    payload = _read(path)
    try:
        cfg = ModelConfig.from_dict(payload["config"])
        net = build_model(cfg)
        net.load_state_dict(with_default_centers(payload["state_dict"], cfg))
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not describe a valid model: {exc}") from exc
    net.to(device).eval()
    if inference:
        inference_layout(net)
    meta = {k: payload.get(k) for k in ("format", "version", "created", "train_config", "metrics")}
    return LoadedModel(model=net, config=cfg, meta=meta, path=path)


def inference_layout(net: CVMNet) -> CVMNet:
    """On the CPU, keep the convolution weights channels-last (NHWC), in place; returns `net`.

    oneDNN, torch's CPU convolution library, computes in that layout; with the default (NCHW)
    weights each convolution converts its tensors first. The outputs are the same up to float
    rounding (the round-trip test checks them within 1e-6) and the forward pass is faster
    (docs/benchmarks.md times both layouts). Inputs need no change:
    the weights' layout decides the convolutions'. On a GPU the layout is left as it is.
    """
    if next(net.parameters()).device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    return net


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The training `state` saved with the checkpoint (optimizer, epoch, RNG...), or None."""
    state = _read(Path(path)).get("state")
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed 'state' entry")
    return state


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the weights an index was built with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
