"""Test-time views: the same scene transforms as training's aligned augmentation, and descriptors
that average the view-wise similarities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.config import Preprocessing
from model.cvm_net import build_model
from model.transforms import prepare_ground, prepare_satellite, rotate_flip_pair
from model.views import describe, ground_view, satellite_view, set_inference_options, view_transforms
from tests.support.tiny import TINY

# Native sizes (32 px tiles, 16 x 64 panoramas): prepare_* only normalises, so a view and the
# raw scene transform can be compared exactly.
PREP = TINY.preprocessing


def test_view_order() -> None:
    assert view_transforms(1) == [(0, False)]
    assert view_transforms(4) == [(0, False), (1, False), (2, False), (3, False)]
    assert view_transforms(8)[4:] == [(0, True), (1, True), (2, True), (3, True)]
    with pytest.raises(ValueError, match="views"):
        view_transforms(3)
    with pytest.raises(ValueError, match="views"):
        Preprocessing(sat_size=32, grd_size=(16, 64), views=2)


@pytest.mark.parametrize("k,mirror", view_transforms(8))
def test_views_equal_the_training_scene_transform(k: int, mirror: bool) -> None:
    rng = np.random.default_rng(k + 4 * mirror)
    pano = rng.integers(0, 256, (16, 64, 3), dtype=np.uint8)
    tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    turned_pano, turned_tile = rotate_flip_pair(pano, tile, k, mirror)
    g = ground_view(prepare_ground(pano, PREP)[None], k, mirror)[0]
    s = satellite_view(prepare_satellite(tile, PREP)[None], k, mirror)[0]
    assert torch.equal(g, prepare_ground(turned_pano, PREP))
    assert torch.equal(s, prepare_satellite(turned_tile, PREP))


@pytest.mark.parametrize("views", [4, 8])
def test_descriptor_similarity_is_the_mean_over_views(views: int) -> None:
    torch.manual_seed(0)
    net = build_model(TINY).eval()
    grd = torch.randn(3, 3, 16, 64) * 50
    sat = torch.randn(3, 3, 32, 32) * 50
    with torch.no_grad():
        plain_g, plain_s = net.describe_ground(grd), net.describe_satellite(sat)
        set_inference_options(net, views=views)
        assert net.config.descriptor_dim == views * 16
        g, s = net.describe_ground(grd), net.describe_satellite(sat)
        assert g.shape == (3, views * 16) and s.shape == (3, views * 16)
        torch.testing.assert_close(g.norm(dim=1), torch.ones(3))  # unit vectors stay unit
        # By hand: view i of ground image a against view i of tile b, averaged over i.
        want = torch.zeros(3, 3)
        for k, m in view_transforms(views):
            gv = net.embed_ground(ground_view(grd, k, m))
            sv = net.embed_satellite(satellite_view(sat, k, m))
            want += gv @ sv.T / views
        torch.testing.assert_close(g @ s.T, want, atol=1e-5, rtol=1e-5)
        # The first view is the image as it is.
        torch.testing.assert_close(g[:, :16] * views**0.5, plain_g)
        torch.testing.assert_close(s[:, :16] * views**0.5, plain_s)
        # Turning the whole scene a quarter only reorders the views: the similarity stays.
        g1 = net.describe_ground(ground_view(grd, 1, False))
        s1 = net.describe_satellite(satellite_view(sat, 1, False))
        torch.testing.assert_close(g1 @ s1.T, g @ s.T, atol=1e-5, rtol=1e-5)


def test_describe_of_one_view_is_embed() -> None:
    calls = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.flatten(1)

    x = torch.randn(2, 3, 4, 8)
    assert torch.equal(describe(embed, ground_view, x, 1), x.flatten(1))
    describe(embed, ground_view, x, 8)
    assert calls == [2, 16]  # all views of the batch in one call


def test_config_round_trip_and_defaults() -> None:
    prep = dataclasses.replace(PREP, views=8, photo_headings=4)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    legacy = {k: v for k, v in PREP.to_dict().items() if k not in ("views", "photo_headings")}
    assert Preprocessing.from_dict(legacy).views == 1  # checkpoints written before the field


def test_a_turned_tile_has_the_descriptor_rolled_by_view_blocks() -> None:
    """With the shipped weights (4 views, centred), the descriptor of a tile turned by r quarter
    turns is the tile's descriptor rolled left by r view blocks (what scripts/bench_million.py
    relies on to turn a corpus of tiles into more), because the views are those quarter turns."""
    from model.checkpoint import load_checkpoint
    from model.weights import default_weights_path

    loaded = load_checkpoint(default_weights_path(), inference=True)
    net, prep = loaded.model, loaded.config.preprocessing
    assert prep.views == 4
    rng = np.random.default_rng(5)
    # blocky scenes (not pixel noise, which every view sees alike)
    cells = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    tiles = [np.kron(c, np.ones((prep.sat_size // 8, prep.sat_size // 8, 1), np.uint8)) for c in cells]
    batch = [np.rot90(t, r).copy() for t in tiles for r in range(4)]
    with torch.inference_mode():
        d = net.describe_satellite(torch.stack([prepare_satellite(b, prep) for b in batch])).numpy()
    block = d.shape[1] // 4
    for t in range(2):
        for r in range(1, 4):
            np.testing.assert_allclose(d[4 * t + r], np.roll(d[4 * t], -r * block), atol=1e-6)
    assert np.abs(d[1] - d[0]).max() > 1e-2  # turning does change the descriptor
