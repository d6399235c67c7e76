"""`cvm summary`: parameter counts computed independently from the layer lists of the spec."""

from __future__ import annotations

import argparse
import json

import pytest

from cli import summary as summary_cmd
from model.config import preset_config
from model.summary import summarize

VGG16_D = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip


def vgg_params(div: int, batchnorm: bool) -> int:
    """sum of 3*3*cin*cout + cout (+ 2*cout BatchNorm scale/shift) over the 13 convs."""
    total = 0
    for cin, cout in VGG16_D:
        cin = cin if cin == 3 else cin // div
        cout //= div
        total += 3 * 3 * cin * cout + cout + (2 * cout if batchnorm else 0)
    return total


def netvlad_params(d: int, k: int) -> int:
    return d * k + k + d * k  # assignment weights + biases, centroids


def conv_params(kernel: int, c: int, batchnorm: bool) -> int:
    return kernel * kernel * c * c + c + (2 * c if batchnorm else 0)


def test_paper_vgg_conv_part_is_14_714_688_per_branch():
    assert vgg_params(1, False) == 14_714_688
    s = summarize(preset_config("cvm-net-i", "paper"))
    assert s.components["vgg_ground"] == s.components["vgg_satellite"] == 14_714_688


def test_paper_cvm_net_i_counts():
    s = summarize(preset_config("cvm-net-i", "paper"))
    expected = 2 * 14_714_688 + 2 * (512 * 64 + 64 + 512 * 64) + 32768 * 4096 + 4096
    assert s.total == expected and abs(s.total - 163.8e6) < 0.1e6
    frozen = 2 * (3 * 3 * 3 * 64 + 64 + 9 * 64 * 64 + 64 + 9 * 64 * 128 + 128 + 9 * 128 * 128 + 128
                  + 9 * 128 * 256 + 256 + 2 * (9 * 256 * 256 + 256))  # fmt: skip
    assert frozen == 2 * 1_735_488 and s.trainable == expected - frozen
    assert s.components["fc"] == 32768 * 4096 + 4096 and s.components["netvlad_ground"] == 65_600
    assert s.feature_maps == {"ground": (512, 14, 77), "satellite": (512, 32, 32)}
    assert s.out_dim == 4096


def test_paper_cvm_net_ii_counts():
    s = summarize(preset_config("cvm-net-ii", "paper"))
    transforms = 2 * conv_params(1, 512, False) + conv_params(3, 512, False) + conv_params(1, 512, False)
    expected = 2 * 14_714_688 + transforms + netvlad_params(512, 64) + 32768 * 4096
    assert s.total == expected and abs(s.total - 166.9e6) < 0.1e6
    assert s.components["projection"] == 32768 * 4096 and s.components["netvlad"] == 65_600
    assert s.components["transform_shared"] == 9 * 512 * 512 + 512 + 512 * 512 + 512
    assert s.feature_maps == {"ground": (512, 14, 77), "satellite": (512, 32, 32)}


def test_cpu_preset_counts():
    vgg = vgg_params(8, True)
    s1 = summarize(preset_config("cvm-net-i", "cpu"))
    assert s1.total == s1.trainable == 2 * vgg + 2 * netvlad_params(64, 32) + 2048 * 256 + 256
    s2 = summarize(preset_config("cvm-net-ii", "cpu"))
    transforms = 2 * conv_params(1, 64, True) + conv_params(3, 64, True) + conv_params(1, 64, True)
    assert s2.total == s2.trainable == 2 * vgg + transforms + netvlad_params(64, 32) + 2048 * 256
    for s in (s1, s2):  # 128 px and 64x352 px inputs, four 2x2 pools
        assert s.feature_maps == {"ground": (64, 4, 22), "satellite": (64, 8, 8)} and s.out_dim == 256


def _run_cli(argv: list[str], capsys) -> str:
    parser = argparse.ArgumentParser()
    summary_cmd.add_arguments(parser)
    assert summary_cmd.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_cli_json_parses(capsys):
    out = json.loads(_run_cli(["--arch", "cvm-net-ii", "--preset", "cpu", "--json"], capsys))
    assert out["arch"] == "cvm-net-ii" and out["total"] == summarize(preset_config("cvm-net-ii", "cpu")).total
    assert out["feature_maps"]["ground"] == [64, 4, 22]


def test_cli_text_and_bad_arch(capsys):
    text = _run_cli(["--arch", "cvm-net-i", "--preset", "paper"], capsys)
    assert "163,782,400 parameters" in text and "512 x 14 x 77" in text
    with pytest.raises(SystemExit):
        _run_cli(["--arch", "resnet"], capsys)
