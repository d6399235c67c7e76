"""CVM-Net-I / II structure: shapes, weight sharing, freezing, dropout, init, VGG16 weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from model.backbone import (
    BackboneWeightsError,
    VGG16Conv5,
    config_for_torchvision_weights,
    load_vgg16_backbone_weights,
)
from model.config import Preprocessing, preset_config
from model.cvm_net import CVMNetI, CVMNetII, build_model

ARCHS = ["cvm-net-i", "cvm-net-ii"]
FULL_WIDTH_SMALL = Preprocessing(sat_size=32, grd_size=(16, 32))


def _inputs(cfg, b=3):
    prep = cfg.preprocessing
    return torch.randn(b, 3, *prep.grd_size) * 50, torch.randn(b, 3, prep.sat_size, prep.sat_size) * 50


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_cpu_preset_shapes_and_norm(arch):
    cfg = preset_config(arch, "cpu")
    net = build_model(cfg).eval()
    grd, sat = _inputs(cfg)
    with torch.no_grad():
        g, s = net(grd, sat)
    assert isinstance(net, CVMNetI if arch == "cvm-net-i" else CVMNetII)
    assert g.shape == s.shape == (3, 256) and net.out_dim == 256
    torch.testing.assert_close(g.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(s.norm(dim=1), torch.ones(3))


def test_embed_rejects_wrong_input_size(tiny_config):
    net = build_model(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"ground input must be \(b, 3, 16, 64\).*\(2, 3, 16, 48\)"):
        net.embed_ground(torch.zeros(2, 3, 16, 48))
    with pytest.raises(ValueError, match="satellite input must be"):
        net.embed_satellite(torch.zeros(2, 3, 16, 64))


def test_cvm_net_ii_paper_switch_leaves_output_unnormalised(tiny_config):
    net = build_model(tiny_config("cvm-net-ii", normalize_output=False)).eval()
    grd, sat = _inputs(net.config)
    with torch.no_grad():
        g, s = net(grd, sat)
        expected = net.netvlad(net.transform_shared(net.transform_ground(net.vgg_ground(grd))))
    torch.testing.assert_close(g, expected)
    assert not torch.allclose(g.norm(dim=1), torch.ones(3))
    assert preset_config("cvm-net-ii", "paper").normalize_output is False


def _grads_after_ground_only_backward(net):
    grd, _ = _inputs(net.config, b=2)
    net.embed_ground(grd).sum().backward()
    return {n: (p.grad is not None and p.grad.abs().sum().item() > 0) for n, p in net.named_parameters()}


def test_cvm_net_i_shares_only_the_fc(tiny_config):
    net = build_model(tiny_config("cvm-net-i"))
    assert net.vgg_ground is not net.vgg_satellite
    got = _grads_after_ground_only_backward(net)
    assert got["fc.weight"] and got["netvlad_ground.centroids"] and got["vgg_ground.blocks.4.0.weight"]
    assert not any(v for n, v in got.items() if "satellite" in n)


def test_cvm_net_ii_shares_transform_and_netvlad(tiny_config):
    net = build_model(tiny_config("cvm-net-ii"))
    got = _grads_after_ground_only_backward(net)
    assert got["transform_shared.0.weight"] and got["netvlad.projection.weight"]
    assert got["transform_ground.0.weight"]
    assert not any(v for n, v in got.items() if "satellite" in n)
    assert net.netvlad.projection.bias is None


def _count_modules(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("arch,expected", [("cvm-net-i", 12), ("cvm-net-ii", 12 + 4)])
def test_dropout_after_blocks_4_5_and_transform_convs(arch, expected):
    with torch.device("meta"):
        net = build_model(preset_config(arch, "paper"))
    assert _count_modules(net, nn.Dropout) == expected  # 6 per VGG branch (+ 4 transform convs)
    for vgg in (net.vgg_ground, net.vgg_satellite):
        assert [_count_modules(b, nn.Dropout) for b in vgg.blocks] == [0, 0, 0, 3, 3]
    assert all(m.p == 0.2 for m in net.modules() if isinstance(m, nn.Dropout))
    assert _count_modules(net, nn.BatchNorm2d) == 0 and _count_modules(net, nn.MaxPool2d) == 8


def test_paper_preset_freezes_blocks_1_to_3_cpu_preset_none():
    with torch.device("meta"):
        paper = build_model(preset_config("cvm-net-i", "paper"))
        cpu = build_model(preset_config("cvm-net-i", "cpu"))
    flags = [all(p.requires_grad for p in b.parameters()) for b in paper.vgg_satellite.blocks]
    assert flags == [False, False, False, True, True]
    assert not any(p.requires_grad for b in paper.vgg_ground.blocks[:3] for p in b.parameters())
    assert all(p.requires_grad for p in cpu.parameters())


def test_frozen_block_batchnorm_stays_in_eval_mode(tiny_config):
    net = build_model(tiny_config(frozen_blocks=2)).train()
    vgg = net.vgg_ground
    frozen_bn, live_bn = vgg.blocks[0][1], vgg.blocks[2][1]
    assert isinstance(frozen_bn, nn.BatchNorm2d) and not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone()
    vgg(torch.randn(2, 3, 32, 32) * 50)
    torch.testing.assert_close(frozen_bn.running_mean, before)
    assert not torch.allclose(live_bn.running_mean, torch.zeros_like(live_bn.running_mean))


def test_original_fc_init_makes_descriptors_follow_the_bias(tiny_config):
    """std 0.005 weights + 0.1 bias: every descriptor is ~ the normalised all-ones vector."""
    original = build_model(tiny_config(init="original", batchnorm=False)).eval()
    d = original.config.out_dim
    ones = torch.ones(d) / d**0.5
    assert torch.all(original.fc.bias == 0.1) and original.fc.weight.abs().max() <= 0.01
    grd, sat = _inputs(original.config)
    with torch.no_grad():
        assert torch.all(original.embed_satellite(sat) @ ones > 0.99)
        kaiming = build_model(tiny_config(init="kaiming")).eval()
        assert torch.all(kaiming.fc.bias == 0)
        assert torch.all((kaiming.embed_satellite(sat) @ ones).abs() < 0.6)


def test_build_model_rejects_unknown_arch(tiny_config):
    cfg = tiny_config()
    object.__setattr__(cfg, "arch", "cvm-net-iii")
    with pytest.raises(ValueError, match="unknown arch 'cvm-net-iii'"):
        build_model(cfg)


def _torchvision_features(batchnorm: bool) -> nn.Sequential:
    features = make_layers(cfgs["D"], batch_norm=batchnorm)
    if batchnorm:  # non-trivial statistics so that copying them is actually checked
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
    return features


@pytest.mark.parametrize("batchnorm", [False, True])
def test_load_torchvision_vgg16_matches_torchvision_conv5_3(tmp_path, tiny_config, batchnorm):
    features = _torchvision_features(batchnorm).eval()
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    cfg = tiny_config(width_div=1, batchnorm=batchnorm, preprocessing=FULL_WIDTH_SMALL)
    backbone = VGG16Conv5(cfg).eval()
    load_vgg16_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = features[:-1](x)  # torchvision ends with pool5, which CVM-Net omits
        torch.testing.assert_close(backbone(x), expected)


def test_load_torchvision_vgg16_errors_name_the_file(tmp_path, tiny_config):
    backbone = VGG16Conv5(tiny_config(batchnorm=False))  # 1/16 width: shapes cannot fit
    path = tmp_path / "vgg16.pth"
    features = _torchvision_features(False)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    with pytest.raises(BackboneWeightsError, match=rf"{path}.*features.0.weight has shape"):
        load_vgg16_backbone_weights(backbone, path)
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_vgg16_backbone_weights(backbone, tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BackboneWeightsError, match=str(junk)):
        load_vgg16_backbone_weights(backbone, junk)
    torch.save({"conv.weight": torch.zeros(1)}, junk)
    with pytest.raises(BackboneWeightsError, match="missing features.0.weight"):
        load_vgg16_backbone_weights(backbone, junk)


def test_torchvision_preprocessing_switch_keeps_geometry():
    cfg = config_for_torchvision_weights(preset_config("cvm-net-i", "paper"))
    prep = cfg.preprocessing
    assert prep.channel_order == "RGB" and prep.sat_size == 512 and prep.grd_size == (224, 1232)
    assert prep.mean == pytest.approx((123.675, 116.28, 103.53))
    assert prep.std == pytest.approx((58.395, 57.12, 57.375))
    assert replace(prep, channel_order="BGR") != preset_config("cvm-net-i", "paper").preprocessing


def test_default_weights_path_is_clear_when_absent(monkeypatch):
    import model.weights as weights

    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS_NAME", "no-such-weights.pt")
    with pytest.raises(FileNotFoundError, match=r"no-such-weights\.pt"):
        weights.default_weights_path()
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS_NAME", Path(__file__).name)  # any existing file
    monkeypatch.setattr(weights, "__file__", __file__)
    assert weights.default_weights_path() == Path(__file__).resolve()
