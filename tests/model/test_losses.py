"""Weighted soft-margin ranking loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import weighted_soft_margin_loss


@pytest.mark.parametrize("n", [2, 5, 12])
def test_all_distances_equal_gives_n2_ln2_over_n_n_minus_1(n):
    same = torch.nn.functional.normalize(torch.ones(n, 8), dim=1)
    loss = weighted_soft_margin_loss(same, same)
    assert loss.item() == pytest.approx(n * n * math.log(2) / (n * (n - 1)), rel=1e-6)


def test_perfect_batch_approaches_ln2_over_n_minus_1():
    n = 6
    eye = torch.eye(n, 16)  # orthogonal unit vectors; pair i identical in both views
    # diagonal: softplus(0) = ln 2 (n terms); off-diagonal: d_pos - d_neg = 0 - 2 (n(n-1) terms)
    per_direction = (n * math.log(2) + n * (n - 1) * math.log1p(math.exp(-20))) / (n * (n - 1))
    loss = weighted_soft_margin_loss(eye, eye.clone())
    assert loss.item() == pytest.approx(per_direction, rel=1e-6)
    assert loss.item() == pytest.approx(math.log(2) / (n - 1), rel=1e-6)


def test_matches_explicit_triplet_sum_both_directions():
    g = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    s = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    dist = [[2 - 2 * float(s[i] @ g[j]) for j in range(4)] for i in range(4)]
    g2s = sum(math.log1p(math.exp(10 * (dist[j][j] - dist[i][j]))) for i in range(4) for j in range(4))
    s2g = sum(math.log1p(math.exp(10 * (dist[i][i] - dist[i][j]))) for i in range(4) for j in range(4))
    expected = (g2s / 12 + s2g / 12) / 2
    assert weighted_soft_margin_loss(g, s).item() == pytest.approx(expected, rel=1e-10)
    # the original divides by its global batch size even for a short final batch
    short = weighted_soft_margin_loss(g, s, batch_size=12).item()
    assert short == pytest.approx(expected * 12 / (12 * 11), rel=1e-10)


def test_unnormalised_huge_vectors_stay_finite():
    g = (torch.randn(12, 64) * 1e3).requires_grad_()
    s = (torch.randn(12, 64) * 1e3).requires_grad_()
    loss = weighted_soft_margin_loss(g, s)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e3
    assert torch.isfinite(g.grad).all() and torch.isfinite(s.grad).all()


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        weighted_soft_margin_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        weighted_soft_margin_loss(torch.zeros(1, 4), torch.zeros(1, 4))
