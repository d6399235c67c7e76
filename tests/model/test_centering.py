"""Descriptor centring: the stored means are subtracted per view, checkpoints keep them, and
`cvm center-weights` measures them as the mean of the view descriptors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli.main import main as cvm_main
from model.centering import clear_centers, has_centers, set_centers
from model.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from model.cvm_net import build_model
from model.evaluate import open_eval_dataset
from model.views import ground_view, satellite_view, set_inference_options, view_transforms
from tests.support.model_world import make_world
from tests.support.tiny import TINY

REPO = Path(__file__).resolve().parents[2]
D = TINY.out_dim


def _center_weights(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", "center-weights", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def _net_with_centers(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(TINY).eval()
    set_centers(net, torch.randn(D) * 0.3, torch.randn(D) * 0.3, torch.randn(D) * 0.3)
    return net


@pytest.mark.parametrize("views", [1, 4])
def test_photos_are_centred_with_their_own_mean(views: int) -> None:
    net = _net_with_centers()
    set_inference_options(net, views=views, centered=True)
    x = torch.randn(3, 3, 16, 64) * 50
    mask = torch.tensor([False, True, False])
    with torch.no_grad():
        mixed = net.describe_ground(x, photo=mask)
        for i, is_photo in enumerate(mask.tolist()):
            want = []
            for k, m in view_transforms(views):
                e = net.embed_ground(ground_view(x[i : i + 1], k, m))
                mean = net.photo_center if is_photo else net.ground_center
                want.append(F.normalize(e - mean, dim=1))
            torch.testing.assert_close(
                mixed[i : i + 1], torch.cat(want, 1) / math.sqrt(views), atol=1e-6, rtol=1e-5
            )
        torch.testing.assert_close(net.describe_ground(x, photo=True)[1], mixed[1])
        torch.testing.assert_close(net.describe_ground(x)[0], mixed[0])


@pytest.mark.parametrize("views", [1, 4, 8])
def test_centred_descriptor_is_each_view_minus_its_domain_mean(views: int) -> None:
    net = _net_with_centers()
    grd, sat = torch.randn(3, 3, 16, 64) * 50, torch.randn(3, 3, 32, 32) * 50
    with torch.no_grad():
        set_inference_options(net, views=views, centered=True)
        g, s = net.describe_ground(grd), net.describe_satellite(sat)
        want_g, want_s = [], []
        for k, m in view_transforms(views):
            eg = net.embed_ground(ground_view(grd, k, m))
            es = net.embed_satellite(satellite_view(sat, k, m))
            want_g.append(F.normalize(eg - net.ground_center, dim=1))
            want_s.append(F.normalize(es - net.satellite_center, dim=1))
    torch.testing.assert_close(g, torch.cat(want_g, dim=1) / math.sqrt(views), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s, torch.cat(want_s, dim=1) / math.sqrt(views), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g.norm(dim=1), torch.ones(3))


def test_means_are_used_only_when_the_preprocessing_says_centred() -> None:
    net = _net_with_centers()
    grd = torch.randn(2, 3, 16, 64) * 50
    with torch.no_grad():
        plain = net.describe_ground(grd)
        torch.testing.assert_close(plain, net.embed_ground(grd))
        set_inference_options(net, centered=True)
        centred = net.describe_ground(grd)
    assert not torch.allclose(plain, centred, atol=1e-3)


def test_checkpoint_keeps_means_and_older_files_load_without_them(tmp_path: Path) -> None:
    net = _net_with_centers()
    set_inference_options(net, centered=True)
    save_checkpoint(tmp_path / "c.pt", net)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded.config.preprocessing.centered
    assert torch.equal(loaded.model.ground_center, net.ground_center)
    assert torch.equal(loaded.model.satellite_center, net.satellite_center)
    # Centred before photos had a mean of their own: photos keep the panoramas' mean.
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    del payload["state_dict"]["photo_center"]
    torch.save(payload, tmp_path / "no-photo.pt")
    no_photo = load_checkpoint(tmp_path / "no-photo.pt")
    assert no_photo.config.preprocessing.centered
    assert torch.equal(no_photo.model.photo_center, net.ground_center)
    # A file written before centring existed: no buffers, no flag -> zero means, not centred.
    for key in ("ground_center", "satellite_center"):
        del payload["state_dict"][key]
    payload["config"]["preprocessing"].pop("centered")
    torch.save(payload, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert payload["format"] == FORMAT
    assert not old.config.preprocessing.centered and not has_centers(old.model)
    # Centred without its means: refused, naming the file.
    payload["config"]["preprocessing"]["centered"] = True
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")


def test_set_centers_checks_the_shape() -> None:
    net = build_model(TINY)
    with pytest.raises(ValueError, match="ground_center"):
        set_centers(net, torch.zeros(D + 1), torch.zeros(D))
    set_centers(net, torch.ones(D), torch.ones(D))
    assert has_centers(net)
    clear_centers(net)
    assert not has_centers(net)


def test_center_weights_script_measures_the_mean_view_descriptor(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", n_train=5, n_val=2)
    torch.manual_seed(3)
    net = build_model(TINY).eval()
    set_inference_options(net, views=4)
    save_checkpoint(tmp_path / "w.pt", net)
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "center-weights",
        str(tmp_path / "w.pt"),
        str(tmp_path / "c.pt"),
    ]
    done = subprocess.run([*cmd, "--data", str(world)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    centred = load_checkpoint(tmp_path / "c.pt")
    assert centred.config.preprocessing.centered and centred.config.preprocessing.views == 4
    assert centred.meta["train_config"]["centering"]["pairs"] == 5
    assert centred.meta["train_config"]["centering"]["photos"] == 5
    # By hand: every training pair, each of the 8 scene transforms, one image at a time.
    ds = open_eval_dataset(world, TINY.preprocessing, split="train")
    g_sum, s_sum = torch.zeros(D), torch.zeros(D)
    with torch.no_grad():
        for i in range(len(ds)):
            grd, sat, _ = ds[i]
            for k, m in view_transforms(8):
                g_sum += net.embed_ground(ground_view(grd[None], k, m))[0]
                s_sum += net.embed_satellite(satellite_view(sat[None], k, m))[0]
    torch.testing.assert_close(centred.model.ground_center, g_sum / 40, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(centred.model.satellite_center, s_sum / 40, atol=1e-5, rtol=1e-4)
    # Photos: the world's photos of the same split, as `--queries photo` prepares them.
    photos = open_eval_dataset(world, TINY.preprocessing, split="train", queries="photo")
    p_sum = torch.zeros(D)
    with torch.no_grad():
        for i in range(len(photos)):
            grd, _, _ = photos[i]
            for k, m in view_transforms(8):
                p_sum += net.embed_ground(ground_view(grd[None], k, m))[0]
    torch.testing.assert_close(centred.model.photo_center, p_sum / 40, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(centred.model.photo_center, centred.model.ground_center, atol=1e-3)
    # The weights themselves are unchanged.
    params = dict(net.named_parameters())
    for name, value in centred.model.named_parameters():
        assert torch.equal(value, params[name])


def test_center_weights_script_names_a_missing_world(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "w.pt", build_model(TINY))
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "center-weights",
        str(tmp_path / "w.pt"),
        str(tmp_path / "c.pt"),
    ]
    done = subprocess.run(
        [*cmd, "--data", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "nowhere" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c.pt").exists()


def test_eval_centred_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(tmp_path / "world")
    plain = tmp_path / "plain.pt"
    torch.manual_seed(0)
    save_checkpoint(plain, build_model(TINY))
    argv = ["eval", "--data", str(world), "--json", "--weights"]
    # Weights without measured means cannot be centred.
    assert cvm_main([*argv, str(plain), "--centered"]) == 2
    assert "means" in capsys.readouterr().err
    net = _net_with_centers()
    set_inference_options(net, centered=True)
    save_checkpoint(tmp_path / "c.pt", net)
    assert cvm_main([*argv, str(tmp_path / "c.pt"), "--no-centered"]) == 0
    assert '"centered": false' in capsys.readouterr().out
    assert cvm_main([*argv, str(tmp_path / "c.pt")]) == 0
    assert '"centered": true' in capsys.readouterr().out
