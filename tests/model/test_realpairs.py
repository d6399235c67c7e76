"""The 30 real CVUSA pairs in the shared data load at their native sizes and run through both
branches of a randomly initialised model (cpu preset; one pair at the paper preset, slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import preset_config
from model.cvm_net import build_model
from model.transforms import load_image_rgb, prepare_ground, prepare_satellite


def cvusa_pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    """(panorama, aerial) paths: 25 from sat2street (same file name), 5 from crossnet (index)."""
    s2s = shared_data / "realpairs" / "sat2street" / "data" / "test"
    pairs = [(s2s / "street" / p.name, p) for p in sorted((s2s / "satellite").glob("*.jpg"))]
    imgs = shared_data / "realpairs" / "crossnet" / "data" / "imgs"
    pairs += [(imgs / f"ground{i}.jpg", imgs / f"aerial{i}.jpg") for i in range(5)]
    return pairs


@pytest.fixture(scope="module")
def images(shared_data: Path):
    pairs = cvusa_pairs(shared_data)
    return [(load_image_rgb(g), load_image_rgb(s)) for g, s in pairs]


def test_thirty_pairs_at_cvusa_sizes(images):
    assert len(images) == 30
    for grd, sat in images:
        assert grd.shape == (224, 1232, 3) and sat.shape == (750, 750, 3)


@pytest.mark.parametrize("arch", ["cvm-net-i", "cvm-net-ii"])
def test_cpu_preset_descriptors_are_finite_unit_vectors(images, arch):
    cfg = preset_config(arch, "cpu")
    net = build_model(cfg).eval()
    grd = torch.stack([prepare_ground(g, cfg.preprocessing) for g, _ in images])
    sat = torch.stack([prepare_satellite(s, cfg.preprocessing) for _, s in images])
    assert grd.shape == (30, 3, 64, 352) and sat.shape == (30, 3, 128, 128)
    with torch.no_grad():
        g, s = net(grd, sat)
    for desc in (g, s):
        assert desc.shape == (30, 256) and torch.isfinite(desc).all()
        torch.testing.assert_close(desc.norm(dim=1), torch.ones(30))
    assert not torch.allclose(s[0], s[1])  # different tiles, different descriptors


@pytest.mark.slow
def test_paper_preset_one_pair(images):
    cfg = preset_config("cvm-net-i", "paper")
    net = build_model(cfg).eval()
    grd, sat = images[0]
    with torch.no_grad():
        g = net.embed_ground(prepare_ground(grd, cfg.preprocessing)[None])
        s = net.embed_satellite(prepare_satellite(sat, cfg.preprocessing)[None])
    for desc in (g, s):
        assert desc.shape == (1, 4096) and torch.isfinite(desc).all()
        assert desc.norm().item() == pytest.approx(1.0, abs=1e-5)
