"""Random and colour-histogram baselines."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.baselines import baseline_metrics, colour_histogram, random_descriptors
from model.config import Preprocessing
from model.data import CVUSADataset
from model.metrics import retrieval_metrics

PREP = Preprocessing(sat_size=32, grd_size=(16, 64))
# Distinct 8-level bins: each colour falls into its own histogram cell.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (128, 64, 200)]


def make_solid_cvusa(root: Path) -> Path:
    """Pair i: satellite and panorama in COLOURS[i] (written as PNG bytes, so exact)."""
    for d in ("bingmap/19", "streetview/panos", "splits"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"{i + 1:07d}" for i in range(len(COLOURS))]
    for key, rgb in zip(ids, COLOURS, strict=True):
        bgr = np.array(rgb[::-1], dtype=np.uint8)
        for rel, shape in ((f"bingmap/19/{key}.jpg", (24, 24)), (f"streetview/panos/{key}.jpg", (12, 60))):
            (root / rel).write_bytes(cv2.imencode(".png", np.tile(bgr, (*shape, 1)))[1].tobytes())
    line = "bingmap/19/{0}.jpg,streetview/panos/{0}.jpg,streetview/annotations/{0}.png\n"
    (root / "splits/val-19zl.csv").write_text("".join(line.format(k) for k in ids))
    return root


def test_colour_histogram_by_hand() -> None:
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    h = colour_histogram(red)
    assert h.shape == (512,)
    assert h[(7 * 8 + 0) * 8 + 0] == pytest.approx(1.0) and np.count_nonzero(h) == 1
    half = red.copy()
    half[:2] = (0, 0, 255)  # top half blue
    h2 = colour_histogram(half)
    assert h2[(7 * 8) * 8] == pytest.approx(math.sqrt(0.5)) and h2[7] == pytest.approx(math.sqrt(0.5))
    # Bhattacharyya coefficient of (1, 0) and (0.5, 0.5): sqrt(1 * 0.5).
    assert float(h @ h2) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="uint8"):
        colour_histogram(red.astype(np.float32))


def test_histogram_baseline_finds_solid_colour_pairs(tmp_path: Path) -> None:
    ds = CVUSADataset(make_solid_cvusa(tmp_path), "val", prep=PREP)
    m = baseline_metrics("histogram", ds)
    assert m.n == len(COLOURS) and m.r1 == 100.0 and m.median_rank == 0.0


def test_histogram_baseline_skips_unreadable_pair(tmp_path: Path) -> None:
    root = make_solid_cvusa(tmp_path)
    (root / "streetview/panos/0000002.jpg").write_bytes(b"\x89PNG broken")
    m = baseline_metrics("histogram", CVUSADataset(root, "val", prep=PREP))
    assert m.n == len(COLOURS) - 1 and m.r1 == 100.0


def test_random_baseline_is_chance_level() -> None:
    n = 2000
    m = retrieval_metrics(*random_descriptors(n, seed=5))
    # Expected R@1% = 1 % (K = 20) with a standard deviation of 0.22 points; median rank ~ n/2.
    assert 0.3 < m.r1pct < 2.0
    assert 0.8 * n / 2 < m.median_rank < 1.2 * n / 2
    assert np.array_equal(random_descriptors(10, seed=1)[0], random_descriptors(10, seed=1)[0])


def test_baseline_metrics_rejects_unknown_kind(tmp_path: Path) -> None:
    ds = CVUSADataset(make_solid_cvusa(tmp_path), "val", prep=PREP)
    assert baseline_metrics("random", ds).n == len(COLOURS)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_metrics("oracle", ds)
