"""The authors' TensorFlow CVM-Net checkpoints as project models (spec section 8).

`import_tf_checkpoint(path, arch)` reads a Saver checkpoint of the original graph with
`model.tf_checkpoint` (no TensorFlow), checks that it holds exactly the variables of that variant
(`tf_variables`) with the right shapes, and returns the equivalent `CVMNet` with its provenance:

  * `VGG_grd|VGG_sat/convX_Y/weights` [kh, kw, in, out] -> conv weight [out, in, kh, kw]; biases as
    they are (the input stays BGR, Caffe means, no scaling: the `paper` preprocessing);
  * NetVLAD `cluster_weights` [D, K] -> assignment weight [K, D]; `cluster_biases` -> its bias;
    `cluster_weights2` [1, D, K] -> centroids [D, K];
  * CVM-Net-I `dim_reduction/fc1/weights` [D*K, out] -> the shared FC's weight (transposed), its
    biases as they are; CVM-Net-II `netvlad/hidden1_weights` [D*K, out] -> the bias-free
    projection (transposed). Both sides flatten the VLAD matrix feature-major (index d*K + k), so
    no row is permuted;
  * CVM-Net-II `transformation_trans/{grd,sat}_trans_conv1` -> the per-branch 1x1 convs,
    `transformation_trans_shared/trans_conv{1,2}` -> the shared 3x3 and 1x1 convs.
Optimiser state and counters that the original Saver wrote with the weights (`*/Adam`,
`*/Adam_1`, `beta1_power`, `beta2_power`, `global_step`, the unnamed integer step `Variable`) are
ignored; anything else that is missing, unexpected or misshapen is refused (`TFImportError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.backbone import VGG16_BLOCKS, VGG16Conv5
from model.config import ModelConfig, preset_config
from model.cvm_net import CVMNet, CVMNetI, CVMNetII, build_model
from model.netvlad import NetVLAD
from model.tf_checkpoint import TensorEntry, TFCheckpoint, TFCheckpointError, open_checkpoint

# The original's names of the two variants (its `network_type`), for messages.
VARIANT_NAMES = {"cvm-net-i": "CVM-Net-I", "cvm-net-ii": "CVM-Net-II"}
# Variables only the other variant has: how a checkpoint of the other variant is recognised.
_SIGNATURE = {"cvm-net-i": "dim_reduction/fc1/weights", "cvm-net-ii": "netvlad/hidden1_weights"}
_TRAINING_STATE_LEAVES = ("Adam", "Adam_1", "beta1_power", "beta2_power", "global_step")
_UNNAMED_VARIABLE = re.compile(r"^Variable(_\d+)?$")
_INTEGER_DTYPES = (3, 9)  # DT_INT32, DT_INT64
_SHOWN = 3  # offending variables named in a message


class TFImportError(ValueError):
    """The checkpoint does not hold the variables of the requested variant (the message names the
    file and the first offending variables)."""


@dataclass
class ImportedModel:
    """An imported model (eval mode) and where it came from (`provenance`, plain values)."""

    model: CVMNet
    provenance: dict[str, Any]


def conv_names() -> list[str]:
    """The original's names of the 13 VGG16 convolutions, in network order."""
    return [f"conv{b + 1}_{i + 1}" for b, (_, n) in enumerate(VGG16_BLOCKS) for i in range(n)]


def tf_variables(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every variable the original graph of `cfg.arch` creates at `cfg`'s sizes
    (at the paper preset: spec section 8.2)."""
    out: dict[str, tuple[int, ...]] = {}
    widths = [w // cfg.width_div for w, n in VGG16_BLOCKS for _ in range(n)]
    for scope in ("VGG_grd", "VGG_sat"):
        cin = 3
        for name, width in zip(conv_names(), widths, strict=True):
            out[f"{scope}/{name}/weights"] = (3, 3, cin, width)
            out[f"{scope}/{name}/biases"] = (width,)
            cin = width
    d, k = cfg.feature_dim, cfg.num_clusters

    def netvlad(scope: str) -> None:
        out[f"{scope}/cluster_weights"] = (d, k)
        out[f"{scope}/cluster_biases"] = (k,)
        out[f"{scope}/cluster_weights2"] = (1, d, k)

    if cfg.arch == "cvm-net-i":
        netvlad("netvlad_grd")
        netvlad("netvlad_sat")
        out["dim_reduction/fc1/weights"] = (d * k, cfg.out_dim)
        out["dim_reduction/fc1/biases"] = (cfg.out_dim,)
    else:
        for name, size in (
            ("transformation_trans/sat_trans_conv1", 1),
            ("transformation_trans/grd_trans_conv1", 1),
            ("transformation_trans_shared/trans_conv1", 3),
            ("transformation_trans_shared/trans_conv2", 1),
        ):
            out[f"{name}/weights"] = (size, size, d, d)
            out[f"{name}/biases"] = (d,)
        netvlad("netvlad")
        out["netvlad/hidden1_weights"] = (d * k, cfg.out_dim)
    return out


def is_training_state(entry: TensorEntry) -> bool:
    """Optimiser slots and counters a Saver over all global variables writes with the weights."""
    leaf = entry.name.rsplit("/", 1)[-1]
    if leaf in _TRAINING_STATE_LEAVES:
        return True
    return bool(_UNNAMED_VARIABLE.match(entry.name)) and entry.shape == () and entry.dtype in _INTEGER_DTYPES


def import_config(arch: str, base: ModelConfig | None = None) -> ModelConfig:
    """The configuration an imported checkpoint gets: `base` (default: the `paper` preset of
    `arch`, whose preprocessing is the original's) with `arch` set."""
    if base is None:
        return preset_config(arch, "paper")
    if base.arch != arch:
        raise TFImportError(f"the model config is for {base.arch}, the import asks for {arch}")
    if base.batchnorm:
        raise TFImportError("the original graph has no BatchNorm; the model config must not use it")
    return base


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = len(names) - _SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def check_variables(ckpt: TFCheckpoint, cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(variables to import, training-state entries ignored); TFImportError naming the index file
    and the first offending variables when the checkpoint is of the other variant or has missing,
    unexpected or misshapen variables."""
    where = ckpt.index_path
    variant = VARIANT_NAMES[cfg.arch]
    expected = tf_variables(cfg)
    ignored = sorted(n for n, e in ckpt.entries.items() if is_training_state(e))
    present = sorted(n for n in ckpt.entries if n not in set(ignored))
    other = "cvm-net-ii" if cfg.arch == "cvm-net-i" else "cvm-net-i"
    if _SIGNATURE[other] in present and _SIGNATURE[cfg.arch] not in present:
        raise TFImportError(
            f"{where} is a {VARIANT_NAMES[other]} checkpoint (it has {_SIGNATURE[other]}), not "
            f"{variant}: import it with --arch {other}"
        )
    missing = [n for n in expected if n not in ckpt.entries]
    if missing:
        raise TFImportError(
            f"{where} is not a {variant} checkpoint: {len(missing)} variable(s) missing: {_names(missing)}"
        )
    unexpected = [n for n in present if n not in expected]
    if unexpected:
        raise TFImportError(
            f"{where} has {len(unexpected)} variable(s) that {variant} does not have: {_names(unexpected)}"
        )
    for name, shape in expected.items():
        entry = ckpt.entries[name]
        if entry.shape != shape:
            raise TFImportError(
                f"{where}: {name} has shape {list(entry.shape)}, {variant} expects {list(shape)}"
            )
        if entry.dtype != 1:
            raise TFImportError(f"{where}: {name} is {entry.dtype_name}, {variant} expects float32")
    return list(expected), ignored


def _tensor(array: np.ndarray, *, conv: bool = False, transpose: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy of the read-only bytes
    if conv:
        t = t.permute(3, 2, 0, 1)  # HWIO -> OIHW
    elif transpose:
        t = t.t()
    return t.contiguous()


def _set(param: torch.Tensor | None, value: torch.Tensor, name: str, done: set[int]) -> None:
    assert param is not None and tuple(param.shape) == tuple(value.shape), name
    with torch.no_grad():
        param.copy_(value)
    done.add(id(param))


def _set_conv(conv: nn.Conv2d, ckpt: TFCheckpoint, scope: str, done: set[int]) -> None:
    _set(conv.weight, _tensor(ckpt.read(f"{scope}/weights"), conv=True), scope, done)
    _set(conv.bias, _tensor(ckpt.read(f"{scope}/biases")), scope, done)


def _set_backbone(vgg: VGG16Conv5, ckpt: TFCheckpoint, scope: str, done: set[int]) -> None:
    for conv, name in zip(vgg.convs(), conv_names(), strict=True):
        _set_conv(conv, ckpt, f"{scope}/{name}", done)


def _set_netvlad(vlad: NetVLAD, ckpt: TFCheckpoint, scope: str, done: set[int]) -> None:
    _set(vlad.assignment.weight, _tensor(ckpt.read(f"{scope}/cluster_weights"), transpose=True), scope, done)
    _set(vlad.assignment.bias, _tensor(ckpt.read(f"{scope}/cluster_biases")), scope, done)
    _set(vlad.centroids, _tensor(ckpt.read(f"{scope}/cluster_weights2")[0]), scope, done)


def _convs(seq: nn.Module) -> list[nn.Conv2d]:
    return [m for m in seq.modules() if isinstance(m, nn.Conv2d)]


def fill_model(net: CVMNet, ckpt: TFCheckpoint) -> None:
    """Copy the checkpoint's variables into `net` (built for the checkpoint's variant and sizes,
    `check_variables` passed), every parameter of it."""
    done: set[int] = set()
    _set_backbone(net.vgg_ground, ckpt, "VGG_grd", done)
    _set_backbone(net.vgg_satellite, ckpt, "VGG_sat", done)
    if isinstance(net, CVMNetI):
        _set_netvlad(net.netvlad_ground, ckpt, "netvlad_grd", done)
        _set_netvlad(net.netvlad_satellite, ckpt, "netvlad_sat", done)
        _set(net.fc.weight, _tensor(ckpt.read("dim_reduction/fc1/weights"), transpose=True), "fc1", done)
        _set(net.fc.bias, _tensor(ckpt.read("dim_reduction/fc1/biases")), "fc1", done)
    elif isinstance(net, CVMNetII):
        (grd,) = _convs(net.transform_ground)
        (sat,) = _convs(net.transform_satellite)
        shared1, shared2 = _convs(net.transform_shared)
        _set_conv(grd, ckpt, "transformation_trans/grd_trans_conv1", done)
        _set_conv(sat, ckpt, "transformation_trans/sat_trans_conv1", done)
        _set_conv(shared1, ckpt, "transformation_trans_shared/trans_conv1", done)
        _set_conv(shared2, ckpt, "transformation_trans_shared/trans_conv2", done)
        _set_netvlad(net.netvlad, ckpt, "netvlad", done)
        assert net.netvlad.projection is not None
        weights = _tensor(ckpt.read("netvlad/hidden1_weights"), transpose=True)
        _set(net.netvlad.projection.weight, weights, "hidden1_weights", done)
    left = [n for n, p in net.named_parameters() if id(p) not in done]
    assert not left, f"parameters not filled by the import: {left}"


def file_record(path: Path) -> dict[str, Any]:
    """{"name", "bytes", "sha256"} of one source file."""
    from model.checkpoint import file_sha256  # model.checkpoint imports the model packages

    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def import_tf_checkpoint(path: str | Path, arch: str, config: ModelConfig | None = None) -> ImportedModel:
    """The `arch` model ("cvm-net-i" / "cvm-net-ii") held by the TensorFlow checkpoint at `path`
    (a prefix, one of its files or its folder), configured as `import_config(arch, config)`, in
    eval mode, with its provenance. Raises TFCheckpointError (unreadable / damaged checkpoint) or
    TFImportError (wrong variables); both name the file."""
    cfg = import_config(arch, config)
    ckpt = open_checkpoint(path)
    names, ignored = check_variables(ckpt, cfg)
    net = build_model(cfg)
    fill_model(net, ckpt)
    net.eval()
    provenance = {
        "format": "tensorflow-checkpoint-v2",
        "arch": arch,
        "variant": VARIANT_NAMES[arch],
        "prefix": ckpt.prefix.name,
        "files": [file_record(p) for p in ckpt.files()],
        "variables": len(names),
        "ignored_training_state": len(ignored),
    }
    return ImportedModel(model=net, provenance=provenance)


__all__ = [
    "ImportedModel",
    "TFCheckpointError",
    "TFImportError",
    "check_variables",
    "conv_names",
    "import_config",
    "import_tf_checkpoint",
    "is_training_state",
    "tf_variables",
]
