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


def planted_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs 0 and 1 are views of one place (identical descriptors), pair 2 is elsewhere."""
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    return g, g.clone()


def test_masked_semi_positives_change_the_loss_by_their_terms():
    g, s = planted_batch()
    # d = 2 - 2 s.g: d_01 = d_10 = 0 = the positives' distance, so each of those entries costs
    # softplus(0) = ln 2 in each direction; entries against pair 2 cost softplus(-20).
    sp = math.log1p(math.exp(-20.0))
    full = weighted_soft_margin_loss(g, s).item()
    assert full == pytest.approx((5 * math.log(2) + 4 * sp) / 6, rel=1e-12)
    exclude = torch.zeros(3, 3, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = True
    masked = weighted_soft_margin_loss(g, s, exclude=exclude).item()
    # Both directions lose their two ln 2 entries: (2 x 2 ln 2) / (2 x 3 x 2) = ln 2 / 3 less.
    assert masked == pytest.approx((3 * math.log(2) + 4 * sp) / 6, rel=1e-12)
    assert full - masked == pytest.approx(math.log(2) / 3, rel=1e-9)


def test_a_masked_pair_contributes_nothing():
    gen = torch.Generator().manual_seed(1)
    g = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64, generator=gen), dim=1)
    s = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64, generator=gen), dim=1)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[2, 0] = True  # satellite 2's tile also shows ground 0
    dist = [[2 - 2 * float(s[i] @ g[j]) for j in range(4)] for i in range(4)]
    kept = [(i, j) for i in range(4) for j in range(4) if (i, j) != (2, 0)]
    g2s = sum(math.log1p(math.exp(10 * (dist[j][j] - dist[i][j]))) for i, j in kept)
    s2g = sum(math.log1p(math.exp(10 * (dist[i][i] - dist[i][j]))) for i, j in kept)
    assert weighted_soft_margin_loss(g, s, exclude=exclude).item() == pytest.approx(
        (g2s + s2g) / 24, rel=1e-10
    )
    # With every negative masked only the constant diagonal is left: no gradient at all.
    g0 = g.clone().requires_grad_()
    weighted_soft_margin_loss(g0, s, exclude=~torch.eye(4, dtype=torch.bool)).backward()
    assert g0.grad is not None and torch.count_nonzero(g0.grad) == 0


def test_the_diagonal_is_never_masked_and_bad_masks_are_refused():
    g, s = planted_batch()
    assert weighted_soft_margin_loss(g, s, exclude=torch.eye(3, dtype=torch.bool)).item() == pytest.approx(
        weighted_soft_margin_loss(g, s).item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="exclude"):
        weighted_soft_margin_loss(g, s, exclude=torch.zeros(2, 2, dtype=torch.bool))
