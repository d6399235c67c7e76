"""Training loop: learning, outputs, and exact resume after a crash, a time limit or SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset

from cli.main import main as cvm_main
from model.centering import has_centers, set_centers
from model.checkpoint import load_checkpoint, save_checkpoint
from model.cvm_net import build_model
from model.train import StepInfo, TrainConfig, TrainError, build_train_dataset, make_train_config, train
from model.views import set_inference_options
from tests.support.tiny import TINY  # its dropout is active: resume must restore the RNG that drives it

REPO = Path(__file__).resolve().parents[2]


def make_colour_world(root: Path, n_train: int = 16, n_val: int = 8, seed: int = 0) -> Path:
    """A learnable CVUSA tree: pair i shares a random colour (plus independent noise) in its
    satellite tile and panorama, so matching colours is enough to retrieve it."""
    rng = np.random.default_rng(seed)
    ids = [f"{i + 1:07d}" for i in range(n_train + n_val)]
    for d in ("bingmap/19", "streetview/panos", "splits", "split_locations"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for key in ids:
        colour = rng.integers(0, 256, 3)
        for rel, shape in ((f"bingmap/19/{key}.jpg", (40, 40)), (f"streetview/panos/{key}.jpg", (20, 110))):
            img = np.clip(colour + rng.normal(0, 12, (*shape, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / rel), img)
    line = "bingmap/19/{0}.jpg,streetview/panos/{0}.jpg,streetview/annotations/{0}.png\n"
    (root / "splits/train-19zl.csv").write_text("".join(line.format(k) for k in ids[:n_train]))
    (root / "splits/val-19zl.csv").write_text("".join(line.format(k) for k in ids[n_train:]))
    locs = "".join(f"{40 + i * 1e-3},{8.0},{40 + i * 1e-3},{8.0},0\n" for i in range(len(ids)))
    (root / "split_locations/all.csv").write_text(locs)
    return root


def tiny_train_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base = make_train_config(
        [str(data)],
        str(out),
        preset="cpu",
        lr=3e-3,
        batch_size=4,
        epochs=2,
        workers=0,
        threads=1,
        checkpoint_minutes=0.0,
        model_config=TINY.to_dict(),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different[:5]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colour_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def reference(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run (4 steps per epoch)."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny_train_config(world, out))
    return out


def test_train_loss_decreases_and_writes_outputs(tmp_path: Path) -> None:
    data = make_colour_world(tmp_path / "world", n_train=32)
    # Wider, dropout-free and unaugmented: this tiny set is then learnt within seconds.
    learnable = replace(TINY, width_div=8, num_clusters=8, dropout=0.0).to_dict()
    out = tmp_path / "run"
    cfg = tiny_train_config(data, out, epochs=8, lr=1e-3, batch_size=8, augment=False, model_config=learnable)
    result = train(replace(cfg, checkpoint_minutes=60.0))
    losses = [h["train_loss"] for h in result.history]
    # Collapsed (all-equal) descriptors give N^2 ln2 / (N (N-1)) = 8/7 ln 2 = 0.792 for N = 8;
    # ending well below it means the pairs are being told apart, not just pulled together.
    collapsed = 8 / 7 * math.log(2)
    assert losses[-1] < 0.8 * collapsed < losses[0]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert [r["step"] for r in records] == [4 * e for e in range(1, 9)]
    assert all(r["val"]["n"] == 8 and r["pairs_per_s"] > 0 and r["skipped"] == 0 for r in records)
    assert records[-1]["val"]["median_error_m"] is not None
    for name in ("last.pt", "best.pt", "epoch-001.pt", "epoch-008.pt", "train_config.json"):
        assert (out / name).is_file(), name
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["train_config"]["batch_size"] == 8 and payload["state"]["epoch"] == 9
    assert load_checkpoint(out / "epoch-008.pt").config.num_clusters == 8
    best = torch.load(out / "best.pt", weights_only=True)["metrics"]
    assert best["val"]["r1pct"] == max(r["val"]["r1pct"] for r in records)


def test_resume_after_crash_equals_uninterrupted(world: Path, reference: Path, tmp_path: Path) -> None:
    def crash(info: StepInfo) -> None:
        if info.step == 6:  # in the middle of epoch 2, right after its checkpoint
            raise RuntimeError("simulated crash")

    cfg = tiny_train_config(world, tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, on_step=crash)
    steps: list[int] = []
    result = train(cfg, on_step=lambda info: steps.append(info.step))
    assert steps == [7, 8]  # continued at the saved step, did not restart the epoch
    assert result.epochs_done == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert_same_weights(final_weights(tmp_path), final_weights(reference))


def test_max_minutes_stops_then_resume_completes(world: Path, reference: Path, tmp_path: Path) -> None:
    stopped = train(tiny_train_config(world, tmp_path, max_minutes=0.0, checkpoint_minutes=60.0))
    assert stopped.stopped_early and stopped.step == 1 and stopped.epochs_done == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["position"] == 4
    result = train(tiny_train_config(world, tmp_path, checkpoint_minutes=60.0))
    assert not result.stopped_early and result.step == 8
    assert_same_weights(final_weights(tmp_path), final_weights(reference))


def test_sigkill_mid_run_then_resume_equals_uninterrupted(world: Path, tmp_path: Path) -> None:
    # The reference uses the same settings as the command below, one epoch longer than `reference`.
    ref_out = tmp_path / "ref"
    train(tiny_train_config(world, ref_out, epochs=4))
    out = tmp_path / "killed"
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps(TINY.to_dict()))
    flags = [
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--workers",
        "0",
        "--threads",
        "1",
        "--checkpoint-minutes",
        "0",
    ]
    argv = [sys.executable, "-m", "cli.main", "train", "--data", str(world), "--out", str(out), *flags]
    argv += ["--model-config", str(model_json)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"run ended by itself before the kill: {err.decode()[-2000:]}"
    state = torch.load(out / "last.pt", weights_only=True)["state"]
    assert state["epoch"] <= 4 and state["step"] < 16, "the killed run had already finished"
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert_same_weights(final_weights(out), final_weights(ref_out))


def test_resume_refuses_different_settings(world: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes((reference / "last.pt").read_bytes())
    with pytest.raises(TrainError, match="batch_size"):
        train(tiny_train_config(world, out, batch_size=8))
    fresh = train(tiny_train_config(world, out, epochs=1, resume=False))
    assert fresh.step == 4 and fresh.epochs_done == 1


def test_preset_defaults() -> None:
    paper = make_train_config(["d"], "o", preset="paper")
    assert (paper.lr, paper.batch_size, paper.loss_batch_size) == (1e-5, 12, 12)
    cpu = make_train_config(["d"], "o", preset="cpu")
    assert (cpu.lr, cpu.batch_size, cpu.loss_batch_size) == (1e-4, 24, None)
    assert make_train_config(["d"], "o", preset="cpu", batch_size=8, lr=0.5).batch_size == 8


def test_train_command_reports_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-world"
    code = cvm_main(["train", "--data", str(missing), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_too_small_training_set_is_refused(tmp_path: Path) -> None:
    data = make_colour_world(tmp_path / "w", n_train=3, n_val=2)
    with pytest.raises(TrainError, match="fewer than one batch"):
        train(tiny_train_config(data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty output folder


def test_worker_processes_do_not_change_the_run(world: Path, tmp_path: Path) -> None:
    # Augmentation is seeded per (seed, epoch, index), so parallel decoding gives the same run.
    common = {"epochs": 1, "photo_fraction": 0.5, "checkpoint_minutes": 60.0}
    train(tiny_train_config(world, tmp_path / "serial", workers=0, **common))
    train(tiny_train_config(world, tmp_path / "parallel", workers=2, **common))
    assert_same_weights(final_weights(tmp_path / "serial"), final_weights(tmp_path / "parallel"))


def test_backbone_weights_initialise_both_branches(world: Path, tmp_path: Path) -> None:
    # A torchvision-style vgg16 "features" state_dict (no BatchNorm): conv k sits at index
    # 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 of the Sequential.
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    widths += [(256, 512)] + [(512, 512)] * 5
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    gen = torch.Generator().manual_seed(3)
    sd = {}
    for idx, (cin, cout) in zip(indices, widths, strict=True):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.01
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.01
    vgg = tmp_path / "vgg16.pth"
    torch.save(sd, vgg)
    full_width = replace(TINY, width_div=1, batchnorm=False, frozen_blocks=3).to_dict()
    out = tmp_path / "run"
    cfg = tiny_train_config(world, out, epochs=1, model_config=full_width, backbone_weights=str(vgg))
    train(replace(cfg, checkpoint_minutes=60.0))
    loaded = load_checkpoint(out / "last.pt")
    prep = loaded.config.preprocessing
    assert prep.channel_order == "RGB" and prep.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    state = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    conv11 = [k for k in state if k.endswith(".weight") and state[k].shape == (64, 3, 3, 3)]
    assert len(conv11) == 2  # ground and satellite branches, frozen block 1: still the file's values
    assert all(torch.equal(state[k], sd["features.0.weight"]) for k in conv11)


def test_photo_placement_reaches_every_training_dataset(world: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(world, tmp_path / "out", photo_fraction=0.5, photo_placement="heading")
    prep = TINY.preprocessing
    ds = build_train_dataset(replace(cfg, data=[str(world), str(world)]), prep)
    assert isinstance(ds, ConcatDataset)
    assert [d.photo_placement for d in ds.datasets] == ["heading", "heading"]
    assert build_train_dataset(replace(cfg, photo_placement="column0"), prep).photo_placement == "column0"


def test_init_weights_ignore_inference_options_but_not_architecture(world: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = build_model(TINY)
    set_inference_options(source, views=8, photo_headings=4, centered=True)
    set_centers(source, torch.full((TINY.out_dim,), 0.1), torch.full((TINY.out_dim,), -0.1))
    init = tmp_path / "init.pt"
    save_checkpoint(init, source)
    out = tmp_path / "run"
    train(tiny_train_config(world, out, epochs=1, lr=0.0, init_weights=str(init), checkpoint_minutes=60.0))
    trained = load_checkpoint(out / "last.pt")
    # lr 0: the run's parameters are the init's (BatchNorm statistics move); its config is the
    # run's (one view, one heading).
    params = {name for name, _ in source.named_parameters()}
    assert_same_weights(
        {k: v for k, v in trained.model.state_dict().items() if k in params},
        {k: v for k, v in source.state_dict().items() if k in params},
    )
    assert trained.config.preprocessing.views == 1 and trained.config.preprocessing.photo_headings == 1
    # Means measured for the init's weights do not describe the run's: dropped.
    assert not trained.config.preprocessing.centered and not has_centers(trained.model)
    other = replace(TINY, out_dim=8)
    save_checkpoint(init, build_model(other))
    with pytest.raises(TrainError, match="model config differs"):
        train(tiny_train_config(world, tmp_path / "run2", epochs=1, init_weights=str(init)))
