"""`cvm import-tf` and `cvm embed` against the original graph, built and run by TensorFlow.

TensorFlow (a development dependency only) builds the authors' CVM-Net-I / -II graph in its own
process (`tests/support/tf_cvm_graph.py`), takes one Adam step, saves a Saver checkpoint and
computes `grd_global` / `sat_global` of real CVUSA images, prepared as the original does (cv2).
The checkpoint goes through `cvm import-tf`, the same images through `cvm embed`, and the two
descriptors must agree: cosine >= 0.9999 and relative L2 error <= 1e-3 for every image, both
variants, both branches, at a reduced size (quarter width, K=16, 128-d, 128 px aerial, 64x352
panorama) and at the paper's size (slow). The refusals of the importer are checked on
checkpoints rewritten by TensorFlow's own SaveV2.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cli.main import main
from model.backbone import VGG16Conv5, load_vgg16_backbone_weights, project_checkpoint_preprocessing
from model.checkpoint import load_checkpoint
from model.config import ModelConfig, Preprocessing
from model.transforms import load_image_rgb, prepare_satellite
from tests.support.paths import REPO_ROOT, in_ci

TF_GRAPH = REPO_ROOT / "tests" / "support" / "tf_cvm_graph.py"
ARCHS = ("cvm-net-i", "cvm-net-ii")
MIN_COSINE = 0.9999
MAX_REL_ERROR = 1e-3
# Reduced size of the fast stage: all 13 VGG16 convs at quarter width, K=16, 128-d output.
REDUCED = {"width_div": 4, "clusters": 16, "out_dim": 128, "sat_size": 128, "grd_size": [64, 352]}
PAPER = {"width_div": 1, "clusters": 64, "out_dim": 4096, "sat_size": 512, "grd_size": [224, 1232]}
BRANCHES = (("ground", "grd"), ("satellite", "sat"))


def _require_tensorflow() -> None:
    if importlib.util.find_spec("tensorflow") is None:
        message = "tensorflow-cpu is not installed (a dev dependency: pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    """(panorama, aerial) CVUSA pairs: three from sat2street, one from crossnet."""
    s2s = shared_data / "realpairs" / "sat2street" / "data" / "test"
    pairs = [
        (s2s / "street" / n, s2s / "satellite" / n) for n in ("0000015.jpg", "0000016.jpg", "0000017.jpg")
    ]
    imgs = shared_data / "realpairs" / "crossnet" / "data" / "imgs"
    return [*pairs, (imgs / "ground0.jpg", imgs / "aerial0.jpg")]


def _run_tf(spec: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(TF_GRAPH), str(spec_path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"TensorFlow side failed:\n{proc.stderr[-4000:]}"


@dataclass
class Reference:
    """A TensorFlow checkpoint of the original graph and its descriptors of `images`."""

    arch: str
    folder: Path
    prefix: Path
    sizes: dict[str, Any]
    images: dict[str, list[Path]]  # branch -> files
    expected: dict[str, np.ndarray]  # branch -> (n, d) TensorFlow descriptors
    variables: dict[str, dict[str, list[int]]]  # "model" (the graph's) and "saved" (the file's)

    def config(self) -> ModelConfig:
        s = self.sizes
        return ModelConfig(
            arch=self.arch,
            preset="custom",
            preprocessing=Preprocessing(sat_size=s["sat_size"], grd_size=tuple(s["grd_size"])),
            width_div=s["width_div"],
            num_clusters=s["clusters"],
            out_dim=s["out_dim"],
            normalize_output=self.arch == "cvm-net-i",
        )


_CACHE: dict[tuple[str, str], Reference] = {}


def reference(arch: str, size: str, shared_data: Path, tmp_root: Path) -> Reference:
    key = (arch, size)
    if key not in _CACHE:
        _require_tensorflow()
        sizes = REDUCED if size == "reduced" else PAPER
        folder = tmp_root / f"{arch}-{size}"
        pairs = _pairs(shared_data)
        prefix = folder / "ckpt" / "model.ckpt"
        spec = {
            "arch": arch,
            **sizes,
            "ckpt": str(prefix),
            "pairs": [[str(g), str(s)] for g, s in pairs[:2]],
            "grd_images": [str(g) for g, _ in pairs],
            "sat_images": [str(s) for _, s in pairs],
            "out_dir": str(folder),
            "seed": 7,
        }
        _run_tf(spec, folder)
        _CACHE[key] = Reference(
            arch=arch,
            folder=folder,
            prefix=prefix,
            sizes=sizes,
            images={"ground": [g for g, _ in pairs], "satellite": [s for _, s in pairs]},
            expected={b: np.load(folder / f"{short}.npy") for b, short in BRANCHES},
            variables=json.loads((folder / "variables.json").read_text()),
        )
    return _CACHE[key]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import_tf")


def cvm(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def import_weights(ref: Reference, out: Path, *, paper: bool) -> Path:
    extra: list[str | Path] = []
    if not paper:
        cfg_path = ref.folder / "model_config.json"
        cfg_path.write_text(json.dumps(ref.config().to_dict()))
        extra = ["--model-config", cfg_path]
    assert cvm("import-tf", ref.prefix, "--arch", ref.arch, "--out", out, *extra) == 0
    return out


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cosine and relative L2 error of `actual` against `expected`."""
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    cos = (a * e).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1))
    rel = np.linalg.norm(a - e, axis=1) / np.linalg.norm(e, axis=1)
    return cos, rel


def check_equal_to_tensorflow(ref: Reference, weights: Path, tmp_path: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for branch, _ in BRANCHES:
        out = tmp_path / f"{branch}.npy"
        assert cvm("embed", "--weights", weights, "--branch", branch, "--out", out, *ref.images[branch]) == 0
        got, expected = np.load(out), ref.expected[branch]
        assert got.dtype == np.float32 and got.shape == expected.shape
        cos, rel = compare(got, expected)
        report[branch] = (float(cos.min()), float(rel.max()))
        assert cos.min() >= MIN_COSINE and rel.max() <= MAX_REL_ERROR, (branch, cos, rel)
        # Different images are told apart well beyond the tolerance (at least 5x on 1 - cosine),
        # so the comparison can fail.
        unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        between = unit @ unit.T
        assert between[np.triu_indices(len(unit), 1)].max() < 1.0 - 5 * (1.0 - MIN_COSINE)
    print(f"{ref.arch} {ref.sizes['sat_size']}px: (min cosine, max relative error) {report}")
    return report


# --------------------------------------------------------------------------------------------
# equality, reduced size


@pytest.mark.parametrize("arch", ARCHS)
def test_import_equals_tensorflow_reduced(
    arch: str, shared_data: Path, tmp_root: Path, tmp_path: Path
) -> None:
    ref = reference(arch, "reduced", shared_data, tmp_root)
    weights = import_weights(ref, tmp_path / "imported.pt", paper=False)
    check_equal_to_tensorflow(ref, weights, tmp_path)


def test_a_wrong_mapping_is_caught(shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    """Negative control: one kernel flipped spatially (a plausible HWIO->OIHW mistake) in the
    satellite VGG16 moves the descriptors outside the tolerance."""
    ref = reference("cvm-net-i", "reduced", shared_data, tmp_root)
    loaded = load_checkpoint(import_weights(ref, tmp_path / "imported.pt", paper=False))
    conv = loaded.model.vgg_satellite.convs()[4]  # conv3_1
    with torch.no_grad():
        conv.weight.copy_(conv.weight.flip(2, 3))
        x = torch.stack(
            [
                prepare_satellite(load_image_rgb(p), loaded.config.preprocessing)
                for p in ref.images["satellite"]
            ]
        )
        got = loaded.model.describe_satellite(x).numpy()
    cos, rel = compare(got, ref.expected["satellite"])
    assert cos.min() < MIN_COSINE or rel.max() > MAX_REL_ERROR


@pytest.mark.parametrize("arch", ARCHS)
def test_imported_file_describes_itself(arch: str, shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    ref = reference(arch, "reduced", shared_data, tmp_root)
    loaded = load_checkpoint(import_weights(ref, tmp_path / "imported.pt", paper=False))
    source = loaded.meta["train_config"]["imported_from"]
    # The graph's own variables (before the optimiser added its slots) are what was imported ...
    assert source["variables"] == len(ref.variables["model"])
    # ... and every other saved entry was training state.
    assert source["variables"] + source["ignored_training_state"] == len(ref.variables["saved"])
    assert any(n.endswith("/Adam_1") for n in ref.variables["saved"])
    files = {f["name"]: f for f in source["files"]}
    assert set(files) == {"model.ckpt.index", "model.ckpt.data-00000-of-00001"}
    for name, record in files.items():
        data = (ref.prefix.parent / name).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
    prep = loaded.config.preprocessing
    assert (prep.channel_order, prep.mean, prep.std) == ("BGR", (103.939, 116.779, 123.6), (1.0, 1.0, 1.0))
    assert (prep.views, prep.centered) == (1, False)


def test_folder_and_file_name_the_checkpoint(shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    """The folder (with or without its `checkpoint` file) and the `.index` file import the same."""
    ref = reference("cvm-net-ii", "reduced", shared_data, tmp_root)
    folder = tmp_path / "copy"
    shutil.copytree(ref.prefix.parent, folder)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(ref.config().to_dict()))
    results = []
    for i, source in enumerate((folder, folder / "model.ckpt.index")):
        out = tmp_path / f"{i}.pt"
        assert cvm("import-tf", source, "--arch", "cvm-net-ii", "--out", out, "--model-config", cfg) == 0
        results.append(load_checkpoint(out).model.state_dict())
    (folder / "checkpoint").unlink()
    assert (
        cvm("import-tf", folder, "--arch", "cvm-net-ii", "--out", tmp_path / "2.pt", "--model-config", cfg)
        == 0
    )
    results.append(load_checkpoint(tmp_path / "2.pt").model.state_dict())
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0])


def test_imported_weights_start_a_backbone(shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    """An imported checkpoint (such as the original's `*_init`) fills each branch's VGG16 with its
    own TensorFlow variables and keeps the Caffe-style normalisation."""
    ref = reference("cvm-net-i", "reduced", shared_data, tmp_root)
    weights = import_weights(ref, tmp_path / "init.pt", paper=False)
    prep = project_checkpoint_preprocessing(weights)
    assert prep is not None and prep.channel_order == "BGR"
    reader = _tf_values(ref, ["VGG_grd/conv1_1/weights", "VGG_sat/conv5_3/biases"], tmp_path)
    for branch, name, index in (
        ("ground", "VGG_grd/conv1_1/weights", 0),
        ("satellite", "VGG_sat/conv5_3/biases", -1),
    ):
        backbone = VGG16Conv5(ref.config())
        load_vgg16_backbone_weights(backbone, weights, branch)
        conv = backbone.convs()[index]
        value = torch.from_numpy(reader[name])
        if value.dim() == 4:
            value = value.permute(3, 2, 0, 1)  # TensorFlow HWIO -> torch OIHW
            assert torch.equal(conv.weight, value)
        else:
            assert conv.bias is not None and torch.equal(conv.bias, value)


def _tf_values(ref: Reference, names: list[str], tmp_path: Path) -> dict[str, np.ndarray]:
    """Variables as TensorFlow itself reads them from the checkpoint (in a subprocess, via .npy)."""
    _require_tensorflow()
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "r = tf.train.load_checkpoint(sys.argv[1])\n"
        "for i, n in enumerate(sys.argv[3:]): np.save(f'{sys.argv[2]}/{i}.npy', r.get_tensor(n))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ref.prefix), str(tmp_path), *names], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {n: np.load(tmp_path / f"{i}.npy") for i, n in enumerate(names)}


# --------------------------------------------------------------------------------------------
# refusals


def _rewritten(ref: Reference, tmp_path: Path, **changes: Any) -> Path:
    dst = tmp_path / "bad" / "model.ckpt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    _run_tf({"mode": "rewrite", "src": str(ref.prefix), "dst": str(dst), **changes}, tmp_path / "spec")
    return dst


def refuse(
    capsys: pytest.CaptureFixture[str],
    checkpoint: Path,
    arch: str,
    out: Path,
    cfg: Path | None,
    *needles: str,
) -> str:
    capsys.readouterr()
    extra = ["--model-config", cfg] if cfg is not None else []
    assert cvm("import-tf", checkpoint, "--arch", arch, "--out", out, *extra) != 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "output left behind"
    return err


@pytest.fixture
def reduced_cfg(shared_data: Path, tmp_root: Path, tmp_path: Path) -> tuple[Reference, Path]:
    ref = reference("cvm-net-i", "reduced", shared_data, tmp_root)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(ref.config().to_dict()))
    return ref, cfg


def test_refuses_missing_variable(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, cfg = reduced_cfg
    bad = _rewritten(ref, tmp_path, drop=["netvlad_sat/cluster_biases", "netvlad_sat/cluster_biases/Adam"])
    refuse(
        capsys,
        bad,
        "cvm-net-i",
        tmp_path / "out.pt",
        cfg,
        "missing",
        "netvlad_sat/cluster_biases",
        "model.ckpt.index",
    )


def test_refuses_unexpected_variable(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, cfg = reduced_cfg
    bad = _rewritten(ref, tmp_path, add={"VGG_grd/conv6_1/weights": [3, 3, 128, 128]})
    refuse(capsys, bad, "cvm-net-i", tmp_path / "out.pt", cfg, "VGG_grd/conv6_1/weights")


def test_refuses_misshapen_variable(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, cfg = reduced_cfg
    bad = _rewritten(ref, tmp_path, reshape={"VGG_sat/conv2_1/weights": [3, 3, 16, 64]})
    refuse(capsys, bad, "cvm-net-i", tmp_path / "out.pt", cfg, "VGG_sat/conv2_1/weights", "[3, 3, 16, 64]")


def test_refuses_paper_import_of_reduced_graph(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, _ = reduced_cfg  # without --model-config the paper sizes are expected
    refuse(
        capsys,
        ref.prefix,
        "cvm-net-i",
        tmp_path / "out.pt",
        None,
        "VGG_grd/conv1_1/weights",
        "expects [3, 3, 3, 64]",
    )


def test_refuses_other_variant(capsys, shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    for arch, other in (("cvm-net-ii", "cvm-net-i"), ("cvm-net-i", "cvm-net-ii")):
        ref = reference(arch, "reduced", shared_data, tmp_root)
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps({**ref.config().to_dict(), "arch": other}))
        refuse(capsys, ref.prefix, other, tmp_path / "out.pt", cfg, "--arch " + arch)


def test_refuses_truncated_or_damaged_data(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, cfg = reduced_cfg
    folder = tmp_path / "copy"
    shutil.copytree(ref.prefix.parent, folder)
    data = folder / "model.ckpt.data-00000-of-00001"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    refuse(capsys, folder / "model.ckpt", "cvm-net-i", tmp_path / "out.pt", cfg, str(data), "truncated")
    damaged = bytearray(raw)
    for i in range(0, len(raw), 4096):  # every tensor over 4 kB, imported ones included
        damaged[i] ^= 0x40
    data.write_bytes(bytes(damaged))
    refuse(capsys, folder / "model.ckpt", "cvm-net-i", tmp_path / "out.pt", cfg, str(data), "checksum")
    data.unlink()
    refuse(capsys, folder / "model.ckpt", "cvm-net-i", tmp_path / "out.pt", cfg, str(data), "missing")


def test_refuses_what_is_not_a_checkpoint(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, cfg = reduced_cfg
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    refuse(capsys, text, "cvm-net-i", tmp_path / "out.pt", cfg, str(text))
    fake = tmp_path / "fake.ckpt"
    Path(f"{fake}.index").write_bytes(b"\0" * 100)
    refuse(capsys, fake, "cvm-net-i", tmp_path / "out.pt", cfg, f"{fake}.index")
    empty = tmp_path / "empty"
    empty.mkdir()
    refuse(capsys, empty, "cvm-net-i", tmp_path / "out.pt", cfg, str(empty))
    refuse(capsys, tmp_path / "absent" / "model.ckpt", "cvm-net-i", tmp_path / "out.pt", cfg, "not found")
    index = (ref.prefix.parent / "model.ckpt.index").read_bytes()
    damaged = tmp_path / "damaged" / "model.ckpt"
    damaged.parent.mkdir()
    Path(f"{damaged}.index").write_bytes(index[:20] + bytes([index[20] ^ 1]) + index[21:])
    shutil.copy(ref.prefix.parent / "model.ckpt.data-00000-of-00001", damaged.parent)
    refuse(capsys, damaged, "cvm-net-i", tmp_path / "out.pt", cfg, f"{damaged}.index")


def test_embed_refuses_unreadable_image(capsys, reduced_cfg, tmp_path: Path) -> None:
    ref, _ = reduced_cfg
    weights = import_weights(ref, tmp_path / "w.pt", paper=False)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    out = tmp_path / "x.npy"
    capsys.readouterr()
    assert (
        cvm("embed", "--weights", weights, "--branch", "ground", "--out", out, ref.images["ground"][0], junk)
        != 0
    )
    err = capsys.readouterr().err
    assert str(junk) in err and "Traceback" not in err and not out.exists()


# --------------------------------------------------------------------------------------------
# equality at the paper's size


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_import_equals_tensorflow_paper(arch: str, shared_data: Path, tmp_root: Path, tmp_path: Path) -> None:
    ref = reference(arch, "paper", shared_data, tmp_root)
    weights = import_weights(ref, tmp_path / "imported.pt", paper=True)
    loaded = load_checkpoint(weights)
    assert loaded.config.preset == "paper" and loaded.config.descriptor_dim == 4096
    prep = loaded.config.preprocessing
    assert (prep.sat_size, prep.grd_size, prep.channel_order) == (512, (224, 1232), "BGR")
    assert loaded.config.normalize_output == (arch == "cvm-net-i")
    del loaded
    check_equal_to_tensorflow(ref, weights, tmp_path)
    shutil.rmtree(ref.prefix.parent)  # about 2 GB with the Adam slots


def test_no_tensorflow_at_run_time() -> None:
    """The importer and both commands run without TensorFlow (only the tests use it)."""
    script = (
        "import sys\n"
        "import cli.embed, cli.import_tf, cli.main, model.import_tf, model.tf_checkpoint\n"
        "assert not any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules), 'tf loaded'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in ("model/tf_checkpoint.py", "model/import_tf.py", "cli/import_tf.py", "cli/embed.py"):
        assert "import tensorflow" not in (REPO_ROOT / path).read_text()
