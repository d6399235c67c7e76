"""Fixtures for the model tests: the tiny configuration (tests/support/tiny.py), seeded runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model.config import ModelConfig
from tests.support.tiny import tiny_config as _tiny_config


@pytest.fixture
def tiny_config() -> Callable[..., ModelConfig]:
    """Factory: `tiny_config(arch, **overrides)` -> TINY (tests/support/tiny.py) for `arch`: the cpu
    preset's recipe at 1/16 width, K=4, 16-d output and 32 px / 16x64 px inputs."""
    return _tiny_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic initialisation in every test."""
    torch.manual_seed(0)
