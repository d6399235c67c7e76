"""The calibration's bookkeeping on synthetic numbers with known results (`service.calibration`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import CheckpointError
from service.calibration import (
    Calibration,
    Logistic,
    design,
    expected_calibration_error,
    fit_logistic,
    load_calibration,
    reliability,
    sidecar_path,
)
from service.estimate import Estimate, EstimateParams


def test_ece_of_perfectly_calibrated_bins_is_zero() -> None:
    conf = [0.25] * 8 + [0.75] * 8
    correct = [True, False, False, False] * 2 + [True, True, True, False] * 2
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)


def test_ece_weights_each_bin_by_its_share() -> None:
    # 10 answers at 0.9 with 5 right (gap 0.4), 30 at 0.1 with 3 right (gap 0): ECE = 10/40 x 0.4.
    conf = [0.9] * 10 + [0.1] * 30
    correct = [True] * 5 + [False] * 5 + [True] * 3 + [False] * 27
    assert expected_calibration_error(conf, correct) == pytest.approx(0.1)
    rows = reliability(conf, correct)
    assert [(r.lo, r.n) for r in rows] == [(0.1, 30), (0.9, 10)]
    assert rows[1].accuracy == pytest.approx(0.5) and rows[1].confidence == pytest.approx(0.9)


def test_confidence_one_falls_in_the_last_bin() -> None:
    rows = reliability([1.0, 0.0], [True, False], bins=4)
    assert [(r.lo, r.hi, r.n) for r in rows] == [(0.0, 0.25, 1), (0.75, 1.0, 1)]


def test_fit_logistic_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (20_000, 2))
    p = 1 / (1 + np.exp(-(-0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1])))
    y = rng.random(len(p)) < p
    model = fit_logistic(x, y, l2=0.0)
    # Standardised inputs: coefficient / scale gives the raw slope back.
    slopes = np.asarray(model.coef) / np.asarray(model.scale)
    intercept = model.intercept - float(slopes @ np.asarray(model.mean))
    assert slopes == pytest.approx([2.0, -1.0], abs=0.1)
    assert intercept == pytest.approx(-0.5, abs=0.07)
    # Fitted probabilities are calibrated on their own data.
    assert expected_calibration_error(model.predict(x), y) < 0.02


def test_design_transforms() -> None:
    row = design(np.array([[0.75, 0.2, 3.0, 4.0]]))[0]
    assert row == pytest.approx([math.log(3.0), math.log(0.25), 3.0, math.log(4.0)])


def _est(mass: float) -> Estimate:
    features = {"mass": mass, "second": 0.1, "z_top": 2.0, "members": 3.0}
    return Estimate(47.0, 8.0, 35.0, mass, features)


def _calibration(sha: str = "ab" * 32) -> Calibration:
    # p = sigmoid(-1 + logit(mass)): coefficient 1 on the first input, standardisation the identity.
    model = Logistic(coef=(1.0, 0.0, 0.0, 0.0), intercept=-1.0, mean=(0.0,) * 4, scale=(1.0,) * 4)
    return Calibration({"panorama": model}, sha, EstimateParams(temperature=0.03), threshold=0.4)


def test_confidence_applies_the_kind_model() -> None:
    cal = _calibration()
    expected = 1 / (1 + math.exp(-(-1.0 + math.log(0.8 / 0.2))))
    assert cal.confidence(_est(0.8), "panorama") == pytest.approx(expected)
    assert cal.confidence(_est(0.8), "photo") == pytest.approx(0.8)  # no model: the raw share


def test_sidecar_round_trip(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    assert sidecar_path(weights) == tmp_path / "w.calibration.json"
    cal = _calibration()
    cal.save(sidecar_path(weights))
    loaded = load_calibration(weights, "ab" * 32)
    assert loaded is not None
    assert loaded.params.temperature == 0.03 and loaded.threshold == 0.4
    assert loaded.confidence(_est(0.6), "panorama") == pytest.approx(cal.confidence(_est(0.6), "panorama"))


def test_sidecar_of_other_weights_is_ignored(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    _calibration("cd" * 32).save(sidecar_path(weights))
    assert load_calibration(weights, "ab" * 32) is None
    assert load_calibration(tmp_path / "absent.pt", "ab" * 32) is None


def test_broken_sidecar_names_the_file(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    sidecar_path(weights).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="w.calibration.json"):
        load_calibration(weights, "ab" * 32)


def test_calibrate_help_names_the_familiarity_options(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["calibrate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--familiarity-components" in out and "--familiarity-percentile" in out
