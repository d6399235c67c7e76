"""`cvm average-weights` and `cvm export-weights`, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.centering import has_centers, set_centers
from model.checkpoint import load_checkpoint, save_checkpoint
from model.cvm_net import build_model
from model.views import set_inference_options
from tests.support.tiny import TINY

REPO = Path(__file__).resolve().parents[2]


def _script(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", name, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_average_of_checkpoints_is_the_mean_of_every_tensor(tmp_path: Path) -> None:
    paths, states = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        net = build_model(TINY)
        for m in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
        paths.append(tmp_path / f"{seed}.pt")
        save_checkpoint(paths[-1], net)
        states.append(net.state_dict())
    done = _script("average-weights", *paths, "--out", tmp_path / "soup.pt")
    assert done.returncode == 0, done.stderr
    soup = load_checkpoint(tmp_path / "soup.pt").model.state_dict()
    for key, value in soup.items():
        if value.is_floating_point():
            want = (states[0][key] + states[1][key] + states[2][key]) / 3
            torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-6)


def test_average_refuses_other_architectures(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "a.pt", build_model(TINY))
    save_checkpoint(tmp_path / "b.pt", build_model(replace(TINY, out_dim=8)))
    done = _script("average-weights", tmp_path / "a.pt", tmp_path / "b.pt", "--out", tmp_path / "s.pt")
    assert done.returncode != 0 and "b.pt" in done.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("views,headings", [(4, 1), (8, 6)])
def test_export_records_inference_options_and_keeps_weights(
    tmp_path: Path, views: int, headings: int
) -> None:
    torch.manual_seed(0)
    net = build_model(TINY)
    save_checkpoint(tmp_path / "run.pt", net)
    out = tmp_path / "shipped.pt"
    args = ["--views", views, "--photo-headings", headings, "--lineage", "test"]
    done = _script("export-weights", tmp_path / "run.pt", out, *args)
    assert done.returncode == 0, done.stderr
    shipped = load_checkpoint(out)
    prep = shipped.config.preprocessing
    assert (prep.views, prep.photo_headings) == (views, headings)
    assert shipped.meta["train_config"]["lineage"] == "test"
    for key, value in net.state_dict().items():
        assert torch.equal(shipped.model.state_dict()[key], value)


@pytest.mark.parametrize("name", ["average-weights", "export-weights"])
def test_unreadable_checkpoint_is_named_without_a_traceback(tmp_path: Path, name: str) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "good.pt", build_model(TINY))
    args = (
        [tmp_path / "good.pt", junk, "--out", tmp_path / "o.pt"]
        if name.startswith("average")
        else [junk, tmp_path / "o.pt"]
    )
    done = _script(name, *args)
    assert done.returncode == 1 and str(junk) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.pt").exists()


def test_average_drops_descriptor_means(tmp_path: Path) -> None:
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        net = build_model(TINY)
        set_centers(net, torch.randn(TINY.out_dim), torch.randn(TINY.out_dim))
        set_inference_options(net, centered=True)
        paths.append(tmp_path / f"{seed}.pt")
        save_checkpoint(paths[-1], net)
    done = _script("average-weights", *paths, "--out", tmp_path / "soup.pt")
    assert done.returncode == 0, done.stderr
    soup = load_checkpoint(tmp_path / "soup.pt")
    # Means measured for each input do not describe the average: none, and not centred.
    assert not soup.config.preprocessing.centered and not has_centers(soup.model)
