"""Evaluation: batched embedding, metrics of a tiny checkpoint, `cvm eval` table and JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main as cvm_main
from model.checkpoint import save_checkpoint
from model.cvm_net import build_model
from model.data import DatasetError
from model.evaluate import embed_pairs, evaluate_model, open_eval_dataset, resolve_data_root
from model.metrics import EARTH_RADIUS_M
from model.transforms import heading_inputs
from model.views import set_inference_options
from tests.support.model_world import N_VAL, make_world
from tests.support.tiny import TINY


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, build_model(TINY))
    return path


def test_resolve_data_root_accepts_world_and_cvusa_root(world: Path, tmp_path: Path) -> None:
    assert resolve_data_root(world) == (world / "cvusa", world)
    assert resolve_data_root(world / "cvusa") == (world / "cvusa", None)
    with pytest.raises(DatasetError, match="neither a CVUSA root"):
        resolve_data_root(tmp_path)


def test_photo_queries_come_from_ground_csv(world: Path) -> None:
    ds = open_eval_dataset(world, TINY.preprocessing, "val", queries="photo")
    assert [r.grd for r in ds.records] == [world / f"photos/{i + 5:07d}.jpg" for i in range(N_VAL)]
    assert {r.grd_fov_deg for r in ds.records} == {72.0}
    grd, _, _ = ds[0]
    # A 72 degree photo covers round(64 * 72 / 360) = 13 of 64 columns; the rest stays zero.
    assert torch.count_nonzero(grd[:, :, 13:]) == 0 and torch.count_nonzero(grd[:, :, :13]) > 0
    with pytest.raises(DatasetError, match="synthetic world"):
        open_eval_dataset(world / "cvusa", TINY.preprocessing, "val", queries="photo")


def test_embed_pairs_matches_single_image_forward(world: Path) -> None:
    torch.manual_seed(0)
    net = build_model(TINY).train()
    ds = open_eval_dataset(world, TINY.preprocessing, "val")
    emb = embed_pairs(net, ds, batch_size=4)
    assert net.training  # the caller's mode is restored
    assert emb.grd.shape == (N_VAL, 16) and emb.sat.shape == (N_VAL, 16)
    assert emb.index.tolist() == list(range(N_VAL)) and emb.skipped == 0
    net.eval()
    with torch.no_grad():
        grd, sat, _ = ds[3]
        one_g = net.embed_ground(grd[None]).numpy()[0]
        one_s = net.embed_satellite(sat[None]).numpy()[0]
    np.testing.assert_allclose(emb.grd[3], one_g, atol=1e-5)
    np.testing.assert_allclose(emb.sat[3], one_s, atol=1e-5)


def test_evaluate_model_skips_unreadable_pair(tmp_path: Path) -> None:
    root = make_world(tmp_path / "w")
    (root / "cvusa/bingmap/19/0000006.jpg").write_bytes(b"not an image")
    torch.manual_seed(0)
    net = build_model(TINY)
    metrics, skipped = evaluate_model(net, open_eval_dataset(root, TINY.preprocessing, "val"), batch_size=4)
    assert skipped == 1 and metrics.n == N_VAL - 1
    assert metrics.median_error_m is not None


def test_eval_command_json_with_baselines(
    world: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--weights", str(weights), "--data", str(world), "--json", "--batch-size", "4"]
    assert cvm_main([*argv, "--baseline", "random", "--baseline", "histogram"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert report["pairs"] == N_VAL and report["split"] == "val"
    assert set(report["results"]) == {"model", "random", "histogram"}
    model = report["results"]["model"]
    assert model["n"] == N_VAL and model["k1pct"] == 1 and model["k1pct_cvm"] == 1
    # Errors are multiples of the 0.001 degree spacing between pairs; a median of 6 values is the
    # mean of two of them, so twice the median is a multiple.
    twice = 2 * model["median_error_m"] / (EARTH_RADIUS_M * np.radians(1e-3))
    assert twice == pytest.approx(round(twice), abs=1e-6)


def test_eval_command_prints_table(world: Path, weights: Path, capsys) -> None:
    assert cvm_main(["eval", "--weights", str(weights), "--data", str(world), "--queries", "photo"]) == 0
    out = capsys.readouterr().out
    assert "R@1%" in out and "model" in out and "queries=photo" in out


def test_eval_command_errors_name_the_file(world: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.pt"
    assert cvm_main(["eval", "--weights", str(missing), "--data", str(world)]) == 2
    assert str(missing) in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    assert cvm_main(["eval", "--weights", str(junk), "--data", str(world)]) == 2
    assert str(junk) in capsys.readouterr().err


def test_heading_inputs_turn_the_canvas_by_whole_steps() -> None:
    canvas = torch.arange(2 * 3 * 2 * 8, dtype=torch.float32).reshape(2, 3, 2, 8)
    turned = heading_inputs(canvas, 4)  # steps of 8 / 4 = 2 columns
    assert turned.shape == (8, 3, 2, 8)
    for k in range(4):
        for i in range(2):
            # Column c of heading k shows column c - 2k of the original (wrapping around).
            want = canvas[i][..., [(c - 2 * k) % 8 for c in range(8)]]
            assert torch.equal(turned[k * 2 + i], want)
    assert torch.equal(heading_inputs(canvas, 1), canvas)


def test_embed_pairs_with_headings_embeds_each_turn(world: Path) -> None:
    torch.manual_seed(0)
    net = build_model(TINY).eval()
    ds = open_eval_dataset(world, TINY.preprocessing, "val", queries="photo")
    emb = embed_pairs(net, ds, batch_size=4, headings=4)
    assert emb.grd.shape == (4, N_VAL, 16) and emb.sat.shape == (N_VAL, 16)
    with torch.no_grad():
        grd, _, _ = ds[5]
        # Heading step 3 of 4: the canvas turned by 48 of its 64 columns.
        want = net.embed_ground(torch.roll(grd, 48, dims=-1)[None]).numpy()[0]
    np.testing.assert_allclose(emb.grd[3, 5], want, atol=1e-5)
    assert not np.allclose(emb.grd[0, 5], emb.grd[3, 5])


def test_eval_command_headings(world: Path, weights: Path, capsys) -> None:
    argv = ["eval", "--weights", str(weights), "--data", str(world), "--queries", "photo", "--json"]
    assert cvm_main([*argv, "--headings", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["headings"] == 8 and report["results"]["model"]["n"] == N_VAL
    # Panoramas face north: turning them is refused with a message.
    assert cvm_main(["eval", "--weights", str(weights), "--data", str(world), "--headings", "8"]) == 2
    assert "--headings" in capsys.readouterr().err


def test_eval_command_views_override(world: Path, weights: Path, capsys) -> None:
    argv = ["eval", "--weights", str(weights), "--data", str(world), "--json"]
    assert cvm_main([*argv, "--views", "4"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert cvm_main(argv) == 0
    one = json.loads(capsys.readouterr().out)
    assert four["views"] == 4 and one["views"] == 1
    assert four["results"]["model"]["n"] == one["results"]["model"]["n"] == N_VAL


def test_eval_photo_headings_default_to_the_checkpoints(world: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    net = build_model(TINY)
    set_inference_options(net, photo_headings=4)
    save_checkpoint(tmp_path / "h4.pt", net)
    argv = ["eval", "--weights", str(tmp_path / "h4.pt"), "--data", str(world), "--json"]
    assert cvm_main([*argv, "--queries", "photo"]) == 0
    assert json.loads(capsys.readouterr().out)["headings"] == 4  # as the service tries photos
    assert cvm_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["headings"] == 1  # panoramas face north
