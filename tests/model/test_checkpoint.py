"""Self-describing checkpoints: round trip, training state, atomic writes, clear errors."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

import model
from model.checkpoint import (
    CheckpointError,
    file_sha256,
    inference_layout,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)
from model.cvm_net import build_model
from model.losses import weighted_soft_margin_loss


def _batch(cfg, b=2):
    prep = cfg.preprocessing
    return torch.randn(b, 3, *prep.grd_size) * 50, torch.randn(b, 3, prep.sat_size, prep.sat_size) * 50


@pytest.mark.parametrize("arch", ["cvm-net-i", "cvm-net-ii"])
def test_round_trip_rebuilds_identical_model(tmp_path, tiny_config, arch):
    net = build_model(tiny_config(arch))
    net.train()
    grd, sat = _batch(net.config)
    net(grd, sat)  # moves BatchNorm running statistics away from their defaults
    net.eval()
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(path, net, train_config={"lr": 1e-4}, metrics={"r@1": 0.5})
    loaded = load_checkpoint(path)
    assert loaded.config == net.config and loaded.path == path and not loaded.model.training
    assert loaded.meta["format"] == "cvm-geoloc/1" and loaded.meta["version"] == model.__version__
    assert loaded.meta["train_config"] == {"lr": 1e-4} and loaded.meta["metrics"] == {"r@1": 0.5}
    assert loaded.meta["created"].endswith("+00:00")
    for name, value in net.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value, rtol=0, atol=0)
    with torch.no_grad():
        # Loaded for inference, its convolutions run channels-last: the same up to rounding, and
        # bitwise the same as the original in that layout.
        loaded_out = loaded.model(grd, sat)
        for a, b in zip(net(grd, sat), loaded_out, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(inference_layout(net)(grd, sat), loaded_out, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        as_saved = load_checkpoint(path, inference=False).model
        for a, b in zip(
            net.to(memory_format=torch.contiguous_format)(grd, sat), as_saved(grd, sat), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["m.pt"]  # no temp file left


def test_file_is_plain_weights_only_dict(tmp_path, tiny_config):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(tiny_config()))
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"format", "version", "config", "state_dict", "train_config", "metrics", "created"}
    assert "state" not in raw
    assert raw["config"]["preprocessing"]["mean"] == (103.939, 116.779, 123.6)


def test_training_state_round_trip(tmp_path, tiny_config):
    net = build_model(tiny_config())
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    grd, sat = _batch(net.config)
    weighted_soft_margin_loss(*net(grd, sat)).backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.default_rng(7).bit_generator.state,
        "python_rng": random.Random(7).getstate(),
    }
    path = tmp_path / "m.pt"
    save_checkpoint(path, net, state=state)
    got = load_training_state(path)
    assert got is not None and got["epoch"] == 3
    restored = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    restored.load_state_dict(got["optimizer"])
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(restored.state_dict()["state"][0]["exp_avg"], exp_avg)
    rng = np.random.default_rng()
    rng.bit_generator.state = got["numpy_rng"]
    assert rng.integers(1 << 30) == np.random.default_rng(7).integers(1 << 30)
    assert random.Random(0).setstate(tuple(got["python_rng"])) is None
    save_checkpoint(path, net)
    assert load_training_state(path) is None


def test_missing_corrupt_and_foreign_files_raise_checkpoint_error(tmp_path, tiny_config):
    missing = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match=f"not found: {missing}"):
        load_checkpoint(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {junk}"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model(tiny_config()).state_dict(), foreign)
    with pytest.raises(CheckpointError, match=f"{foreign} is not a cvm-geoloc checkpoint"):
        load_checkpoint(foreign)
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model(tiny_config()))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=str(cut)):
        load_checkpoint(cut)


def test_weights_that_do_not_fit_their_config_are_refused(tmp_path, tiny_config):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(tiny_config()))
    raw = torch.load(path, weights_only=True)
    raw["config"] = replace(tiny_config(), num_clusters=2 * tiny_config().num_clusters).to_dict()
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"(?s){path} does not describe a valid model.*size mismatch"):
        load_checkpoint(path)
    raw["config"]["arch"] = "resnet"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="unknown arch 'resnet'"):
        load_checkpoint(path)


def test_file_sha256_known_vector(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")  # FIPS 180-2 test vector
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_inference_layout_is_channels_last_and_files_stay_contiguous(tmp_path, tiny_config) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(tiny_config("cvm-net-i")))
    loaded = load_checkpoint(path)
    convs = [m.weight for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # not merely 1x1 kernels, where both hold
    training = load_checkpoint(path, inference=False).model
    assert all(m.weight.is_contiguous() for m in training.modules() if isinstance(m, torch.nn.Conv2d))
    # Saved again from the channels-last model, the weights are stored contiguous
    save_checkpoint(tmp_path / "again.pt", loaded.model)
    raw = torch.load(tmp_path / "again.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in raw.values())


def test_unreadable_file_never_advises_weights_only_false(tmp_path) -> None:
    # A pickle with a non-tensor global (what an arbitrary .pt file may hold) and plain junk: the
    # message names the file and the cause, never torch's advice to load it unsafely.
    pickled = tmp_path / "other.pt"
    torch.save({"when": __import__("datetime").datetime(2020, 1, 1)}, pickled)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for path in (pickled, junk):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert str(path) in text and "weights_only" not in text and "\n" not in text
    with pytest.raises(CheckpointError, match="datetime"):
        load_checkpoint(pickled)
