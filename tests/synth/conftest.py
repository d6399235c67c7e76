"""A small synthetic world shared by the synth tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth import SynthOptions, SynthResult, synthesize
from tests.support.synth_world import SMALL


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out: Path = tmp_path_factory.mktemp("synth") / "world"
    return synthesize(SynthOptions(seed=7, out=out, workers=1, **SMALL))  # type: ignore[arg-type]
