"""Fixtures for the model tests: tiny configurations that build and run in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from model.config import ModelConfig, Preprocessing, preset_config

# Inputs must be multiples of 16 (four 2x2 max-pools before conv5_3).
TINY_PREPROCESSING = Preprocessing(sat_size=32, grd_size=(16, 64), sat_ground_m=70.0)


@pytest.fixture
def tiny_config() -> Callable[..., ModelConfig]:
    """Factory: `tiny_config(arch, **overrides)` -> a cpu-preset-like config at 1/16 width,
    K=8, 32-d output and 32 px / 16x64 px inputs."""

    def make(arch: str = "cvm-net-i", **overrides: object) -> ModelConfig:
        base = replace(
            preset_config(arch, "cpu"),
            preset="custom",
            preprocessing=TINY_PREPROCESSING,
            width_div=16,
            num_clusters=8,
            out_dim=32,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic initialisation in every test."""
    torch.manual_seed(0)
