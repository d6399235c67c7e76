"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Research-licensed and BSD sample data live beside the repository, never inside it.
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or skip when this checkout has no shared folder beside it."""
    path = SHARED_DIR / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
