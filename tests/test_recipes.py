"""The paper-preset training recipes (scripts/train_vigor.sh, scripts/train_cvact.sh) run end to end
on small VIGOR and CVACT folders: the authors' graph is built in TensorFlow at a reduced size
and saved as a Saver checkpoint (tests/support/tf_cvm_graph.py, as the import tests do), each
script imports it, trains one epoch of one or two steps on the CPU with the paper preset's
hyper-parameters, and evaluates the result with the dataset's own protocol."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.config import ModelConfig, Preprocessing
from tests.support.dataset_trees import cvact_tree, vigor_tree
from tests.support.paths import REPO_ROOT, in_ci

pytestmark = pytest.mark.slow

TF_GRAPH = REPO_ROOT / "tests" / "support" / "tf_cvm_graph.py"
# The authors' graph at 1/16 width, K = 4, 16-d output: seconds instead of minutes on a CPU.
WIDTH_DIV, CLUSTERS, OUT_DIM, SAT_SIZE, GRD_SIZE = 16, 4, 16, 32, (16, 64)
SIZES = {
    "width_div": WIDTH_DIV,
    "clusters": CLUSTERS,
    "out_dim": OUT_DIM,
    "sat_size": SAT_SIZE,
    "grd_size": list(GRD_SIZE),
}


@pytest.fixture(scope="module")
def tf_init(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint folder of the TensorFlow graph, ModelConfig JSON of its sizes)."""
    if importlib.util.find_spec("tensorflow") is None:
        message = "tensorflow-cpu is not installed (a dev dependency: pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tf-init")
    images = vigor_tree(folder / "images", {"Chicago": [(41.8781, -87.6298)]})
    grd = next((images / "Chicago/panorama").iterdir())
    sat = next((images / "Chicago/satellite").iterdir())
    spec = {
        "arch": "cvm-net-i",
        **SIZES,
        "ckpt": str(folder / "CVM-Net-I_init" / "model.ckpt"),
        "pairs": [[str(grd), str(sat)]],
        "grd_images": [str(grd)],
        "sat_images": [str(sat)],
        "out_dir": str(folder),
        "seed": 3,
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(TF_GRAPH), str(folder / "spec.json")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = ModelConfig(
        arch="cvm-net-i",
        preset="custom",
        preprocessing=Preprocessing(sat_size=SAT_SIZE, grd_size=GRD_SIZE),
        width_div=WIDTH_DIV,
        num_clusters=CLUSTERS,
        out_dim=OUT_DIM,
    )
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder / "CVM-Net-I_init", folder / "config.json"


def run_recipe(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "BATCH": "2", "EPOCHS": "1", "WORKERS": "0"}
    full.update(env)
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script)], env=full, capture_output=True, text=True, timeout=300
    )


def check_run(out: Path, steps: int, semi_positive_m: float) -> None:
    """One epoch of `steps` steps of the paper preset from the imported initial weights, near
    pairs (within `semi_positive_m`) left out of the negatives."""
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and history[0]["step"] == steps
    trained = load_checkpoint(out / "best.pt")
    cfg = trained.meta["train_config"]
    assert cfg["preset"] == "paper" and cfg["lr"] == 1e-5 and cfg["batch_size"] == 2
    assert cfg["init_weights"] == str(out / "init.pt")
    assert cfg["semi_positive_m"] == semi_positive_m
    init = load_checkpoint(out / "init.pt")
    assert init.meta["train_config"]["imported_from"]["variant"] == "CVM-Net-I"  # from the TF files
    # the network is the imported one, and the steps moved its trainable weights
    assert trained.config.to_dict() == init.config.to_dict()
    before, after = init.model.state_dict(), trained.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_vigor_recipe(tmp_path: Path, tf_init: tuple[Path, Path]) -> None:
    init_tf, config = tf_init
    data, out = vigor_tree(tmp_path / "VIGOR"), tmp_path / "run"
    proc = run_recipe(
        "train_vigor.sh",
        {"DATA": str(data), "INIT_TF": str(init_tf), "MODEL_CONFIG": str(config), "OUT": str(out)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(out, steps=2, semi_positive_m=36.0)  # 4 same-area training panoramas, 2 a step
    report = json.loads((out / "eval-test.json").read_text())["protocol"]
    assert (report["dataset"], report["protocol"], report["queries"], report["gallery"]) == (
        "VIGOR",
        "same-area",
        4,
        7,
    )
    assert f"evaluation: {out / 'eval-test.json'}" in proc.stdout
    # a second run continues the finished run: no new import, no new epoch
    again = run_recipe(
        "train_vigor.sh", {"DATA": str(data), "MODEL_CONFIG": str(config), "OUT": str(out), "EVAL": "0"}
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_cvact_recipe(tmp_path: Path, tf_init: tuple[Path, Path]) -> None:
    init_tf, config = tf_init
    data, out = cvact_tree(tmp_path / "CVACT"), tmp_path / "run"
    proc = run_recipe(
        "train_cvact.sh",
        {"DATA": str(data), "INIT_TF": str(init_tf), "MODEL_CONFIG": str(config), "OUT": str(out)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(out, steps=1, semi_positive_m=5.0)  # trainSet holds 2 pairs
    report = json.loads((out / "eval-val.json").read_text())["protocol"]
    assert (report["dataset"], report["queries"], report["gallery"]) == ("CVACT", 2, 2)


def test_recipes_refuse_missing_settings(tmp_path: Path) -> None:
    proc = run_recipe("train_vigor.sh", {"DATA": str(tmp_path), "OUT": str(tmp_path / "run")})
    assert proc.returncode != 0 and "set INIT_TF" in proc.stderr
    proc = run_recipe("train_cvact.sh", {"OUT": str(tmp_path / "run")})
    assert proc.returncode != 0 and "set DATA to the CVACT folder" in proc.stderr
    proc = run_recipe("train_vigor.sh", {"DATA": str(tmp_path), "PROTOCOL": "elsewhere"})
    assert proc.returncode == 2 and "PROTOCOL must be same-area or cross-area" in proc.stderr
