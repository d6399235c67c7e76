"""The rule for tests of the real sample data (../shared/data): skipped where it is absent, except
under CI=true, where its absence fails them instead of silently dropping them from the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import in_ci, require_shared_data


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("TRUE", True), ("1", True), ("", False), ("false", False)]
)
def test_ci_flag(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_data_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        require_shared_data(tmp_path / "absent")


def test_missing_data_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"shared data not found at .*absent.*CI=true"):
        require_shared_data(tmp_path / "absent")


def test_present_data_is_returned_in_and_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for value in ("true", ""):
        monkeypatch.setenv("CI", value)
        assert require_shared_data(tmp_path) == tmp_path
