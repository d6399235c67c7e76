"""Where the repository and the shared sample data are, and how a missing shared folder is handled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Research-licensed and BSD sample data live beside the repository, never inside it.
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"


def in_ci() -> bool:
    """True when the CI environment variable says so (`CI=true`, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """`path` when it exists; otherwise skip the test, or fail it under CI=true, where tests of the
    real data must run rather than vanish from the report."""
    if path.exists():
        return path
    message = f"shared data not found at {path}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the tests of the real data must run)", pytrace=False)
    pytest.skip(message)
