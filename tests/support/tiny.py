"""The tiny model configuration of the tests: defined once here, varied with `tiny_config`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.config import ModelConfig, Preprocessing
from model.cvm_net import build_model

# Inputs must be multiples of 16 (four 2x2 max-pools before conv5_3).
TINY_PREPROCESSING = Preprocessing(sat_size=32, grd_size=(16, 64), sat_ground_m=70.0)

# The cpu preset's recipe (BatchNorm, Kaiming init, nothing frozen, dropout 0.2) at 1/16 width,
# K=4 and a 16-d output: builds and runs in milliseconds.
TINY = ModelConfig(
    arch="cvm-net-i",
    preset="custom",
    preprocessing=TINY_PREPROCESSING,
    width_div=16,
    batchnorm=True,
    num_clusters=4,
    out_dim=16,
    dropout=0.2,
    frozen_blocks=0,
    init="kaiming",
)


def tiny_config(arch: str = "cvm-net-i", **overrides: object) -> ModelConfig:
    """TINY for `arch`, with fields replaced by `overrides`."""
    return replace(TINY, arch=arch, **overrides)  # type: ignore[arg-type]


def tiny_checkpoint(path: Path, *, sat_size: int = 32, width_div: int = 64, seed: int = 0) -> Path:
    """A random-weight CVM-Net-I checkpoint of TINY with a `sat_size` px satellite input covering
    70 m (narrower still by default: 8 channels, for indexing many tiles quickly)."""
    torch.manual_seed(seed)
    prep = replace(TINY_PREPROCESSING, sat_size=sat_size)
    save_checkpoint(path, build_model(tiny_config(preprocessing=prep, width_div=width_div)))
    return path
