"""NetVLAD against a loop-by-loop float64 reading of the spec (section 3.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.netvlad import NetVLAD


def reference_vlad(x: np.ndarray, w: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x (D, H, W), w (K, D), b (K,), c (D, K) -> (D*K,) with flat index d*K + k."""
    d_, h_, w_ = x.shape
    k_ = b.shape[0]
    v = np.zeros((d_, k_))
    for i in range(h_):
        for j in range(w_):
            xn = x[:, i, j] / max(np.sqrt((x[:, i, j] ** 2).sum()), 1e-6)
            logits = [sum(xn[d] * w[k, d] for d in range(d_)) + b[k] for k in range(k_)]
            e = np.exp(np.array(logits) - max(logits))
            a = e / e.sum()
            for k in range(k_):
                for d in range(d_):
                    v[d, k] += a[k] * (xn[d] - c[d, k])
    for k in range(k_):
        v[:, k] /= np.sqrt((v[:, k] ** 2).sum())
    flat = np.array([v[d, k] for d in range(d_) for k in range(k_)])
    return flat / np.sqrt((flat**2).sum())


def test_vlad_matches_reference_feature_major():
    vlad = NetVLAD(feature_dim=4, num_clusters=3).double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        got = vlad(x)
    w = vlad.assignment.weight.detach().numpy()
    b = vlad.assignment.bias.detach().numpy()
    c = vlad.centroids.detach().numpy()
    assert got.shape == (2, 12) and vlad.out_dim == 12
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), reference_vlad(x[i].numpy(), w, b, c), rtol=1e-10)


def test_vlad_is_intra_and_globally_normalised():
    vlad = NetVLAD(feature_dim=8, num_clusters=5)
    with torch.no_grad():
        out = vlad(torch.relu(torch.randn(3, 8, 4, 4)))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    per_cluster = out.view(3, 8, 5).norm(dim=1)  # [b, D, K] layout: norm over D per cluster
    torch.testing.assert_close(per_cluster, torch.full((3, 5), 1 / math.sqrt(5)))


def test_projection_is_bias_free_linear_map_of_vlad():
    vlad = NetVLAD(feature_dim=4, num_clusters=3, proj_dim=7)
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        expected = vlad.vlad(x) @ vlad.projection.weight.T
        out = vlad(x)
    assert out.shape == (2, 7) and vlad.out_dim == 7 and vlad.projection.bias is None
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))  # not renormalised


def test_initialisers_follow_the_original():
    vlad = NetVLAD(feature_dim=512, num_clusters=64, proj_dim=8)
    for tensor in (vlad.assignment.weight, vlad.centroids):
        assert tensor.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.05)
    assert vlad.assignment.bias.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.3)
    assert vlad.projection.weight.std().item() == pytest.approx(0.125, rel=0.05)
    assert vlad.centroids.shape == (512, 64) and vlad.assignment.weight.shape == (64, 512)


def test_rejects_wrong_feature_channels():
    with pytest.raises(ValueError, match=r"expects \(b, 4, H, W\) features, got \(1, 5, 2, 2\)"):
        NetVLAD(4, 3)(torch.zeros(1, 5, 2, 2))
