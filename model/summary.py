"""Parameter counts and local-feature shapes of a configuration, without allocating weights.

The model is built on the meta device, so even the 167 M-parameter paper preset costs no memory;
conv5_3 map shapes come from a shape-only forward pass of each VGG branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from model.config import ModelConfig
from model.cvm_net import CVMNet, build_model


@dataclass
class ModelSummary:
    """total / trainable parameter counts, per-component counts (component -> parameters),
    conv5_3 local-feature maps per branch as (channels, height, width), descriptor size."""

    arch: str
    preset: str
    total: int
    trainable: int
    components: dict[str, int] = field(default_factory=dict)
    feature_maps: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    out_dim: int = 0


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def component_counts(net: CVMNet) -> dict[str, int]:
    """Parameters per named part: vgg_ground, vgg_satellite, netvlad(s), fc / projection,
    transform convs. NetVLAD's projection (CVM-Net-II) is reported apart from the NetVLAD."""
    counts: dict[str, int] = {}
    for name, child in net.named_children():
        projection = getattr(child, "projection", None)
        counts[name] = _count(child) - _count(projection)
        if projection is not None:
            counts["projection"] = _count(projection)
    return counts


def summarize(cfg: ModelConfig) -> ModelSummary:
    """Counts and shapes of `cfg`'s model, computed on the meta device."""
    with torch.device("meta"):
        net = build_model(cfg).eval()
        prep = cfg.preprocessing
        with torch.no_grad():
            grd = net.vgg_ground(torch.empty(1, 3, *prep.grd_size))
            sat = net.vgg_satellite(torch.empty(1, 3, prep.sat_size, prep.sat_size))
    params = list(net.parameters())
    return ModelSummary(
        arch=cfg.arch,
        preset=cfg.preset,
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        components=component_counts(net),
        feature_maps={"ground": _chw(grd), "satellite": _chw(sat)},
        out_dim=net.out_dim,
    )


def _chw(x: torch.Tensor) -> tuple[int, int, int]:
    return (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))


def format_summary(s: ModelSummary) -> str:
    """Human-readable table of a ModelSummary."""
    lines = [
        f"{s.arch} ({s.preset} preset): {s.total:,} parameters, {s.trainable:,} trainable, "
        f"{s.out_dim}-d descriptor",
        "components:",
    ]
    lines += [f"  {name:<20} {n:>13,}" for name, n in s.components.items()]
    lines.append("conv5_3 local features (channels x height x width):")
    lines += [f"  {branch:<20} {c} x {h} x {w}" for branch, (c, h, w) in s.feature_maps.items()]
    return "\n".join(lines)
