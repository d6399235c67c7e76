"""`cvm import-tf`: turn the authors' TensorFlow CVM-Net checkpoint into project weights.

    cvm import-tf CVM-Net_model/CVM-NET-I/CVM-Net-I_model --arch cvm-net-i --out cvm-net-i.pt

CHECKPOINT is a Saver prefix (`.../model.ckpt`), one of its files, or the folder holding it. The
result is a self-describing checkpoint of the `paper` preset (the original's preprocessing: BGR,
Caffe means, aerial images resized to 512 with INTER_AREA, 224x1232 panoramas; one view, no
centring) that `cvm embed`, `cvm eval`, `cvm-index build --weights` and the service load as they
are; the source files (with sha256) and the variable count are recorded in it. An `*_init`
checkpoint imports the same way and starts `cvm train --preset paper --init-weights` (or gives
`--backbone-weights`) from the original's ImageNet VGG16. No TensorFlow is needed (docs/real-weights.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "import the authors' TensorFlow CVM-Net checkpoint (CVM-Net-I or -II) as project weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint prefix, file or folder"
    )
    parser.add_argument("--arch", required=True, choices=("cvm-net-i", "cvm-net-ii"), help="variant it holds")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.pt", help="weights file to write")
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="JSON",
        help="a ModelConfig dict, for a graph built at other sizes (default: the paper preset)",
    )


def _read_config(path: Path | None, arch: str):  # -> ModelConfig | None
    from model.config import ModelConfig

    if path is None:
        return None
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"cannot use model config {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import file_sha256, save_checkpoint
    from model.import_tf import TFCheckpointError, TFImportError, import_tf_checkpoint

    try:
        config = _read_config(args.model_config, args.arch)
        imported = import_tf_checkpoint(args.checkpoint, args.arch, config)
    except (TFCheckpointError, TFImportError, ValueError, OSError) as exc:
        print(f"cvm import-tf: error: {exc}", file=sys.stderr)
        return 2
    source = imported.provenance
    lineage = (
        f"imported from the TensorFlow checkpoint {source['prefix']} of the original {source['variant']} "
        f"({source['variables']} variables; {source['ignored_training_state']} optimiser and counter "
        "entries ignored)"
    )
    try:
        save_checkpoint(args.out, imported.model, train_config={"lineage": lineage, "imported_from": source})
    except OSError as exc:
        print(f"cvm import-tf: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    cfg = imported.model.config
    print(
        f"wrote {args.out}: {cfg.arch}, preset {cfg.preset}, {cfg.descriptor_dim}-d descriptors, "
        f"{source['variables']} variables from {args.checkpoint} "
        f"({args.out.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(args.out)})"
    )
    return 0
