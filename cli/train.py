"""`cvm train`: train CVM-Net-I/II on CVUSA-layout data, synthetic worlds, CVACT or VIGOR, resumably."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from model.backbone import BackboneWeightsError
from model.checkpoint import CheckpointError
from model.config import ARCHS, PRESETS
from model.data import DatasetError
from model.train import PRESET_DEFAULTS, TrainError, make_train_config, train

HELP = "train a CVM-Net model; resumes automatically from OUT/last.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    presets = ", ".join(f"{p}: lr {lr:g}, batch {b}" for p, (lr, b, _) in PRESET_DEFAULTS.items())
    parser.add_argument("--arch", choices=ARCHS, default="cvm-net-i", help="network variant")
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help=f"configuration preset ({presets})")
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="CVUSA roots, synthetic world folders, CVACT folders or VIGOR folders (DIR, "
        "DIR@cross-area); several are concatenated",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, metrics.jsonl)")
    parser.add_argument("--epochs", type=int, default=10, help="total number of epochs of the run")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default: the preset's)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the preset's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding images")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--photo-fraction",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of replacing a panorama by a 60-90 degree photo-like crop",
    )
    parser.add_argument(
        "--photo-placement",
        choices=("column0", "heading"),
        default="column0",
        help="where a photo-like crop goes on the panorama canvas: column 0 (heading unknown, as "
        "queries are prepared by default) or the columns it was cut from (for queries tried at "
        "several headings: cvm eval --headings)",
    )
    parser.add_argument(
        "--augment",
        choices=("original", "aligned", "none"),
        default="original",
        help="original: the paper's satellite crop/rotation; aligned: mirror and quarter-turn the "
        "whole scene, keeping panoramas north-aligned with their tiles; none",
    )
    parser.add_argument(
        "--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop cleanly (with a checkpoint) after M minutes of this invocation",
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        metavar="M",
        help="mid-epoch checkpoint interval in minutes (0: after every step)",
    )
    parser.add_argument(
        "--backbone-weights",
        metavar="PATH",
        help="torchvision VGG16 state_dict to initialise both backbones (switches the "
        "preprocessing to torchvision's RGB/ImageNet normalisation), or a checkpoint of this "
        "project such as the original's *_init weights imported by `cvm import-tf` (each branch "
        "from its own VGG16, keeping that checkpoint's input normalisation)",
    )
    parser.add_argument(
        "--init-weights",
        metavar="CKPT",
        help="start from this checkpoint's weights (same architecture; fresh optimiser)",
    )
    parser.add_argument(
        "--model-config", metavar="JSON", help="file with a ModelConfig dict overriding --arch/--preset sizes"
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from OUT/last.pt when it exists (default: yes)",
    )
    parser.add_argument(
        "--val-data", metavar="DIR", help="validation data (default: the first --data's val split)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    served = parser.add_argument_group("training as served (docs/training.md)")
    served.add_argument(
        "--offset-m",
        type=float,
        default=0.0,
        metavar="M",
        help="synthetic worlds: cut each aerial crop from ortho.tif around a centre displaced by up to "
        "M metres east and north of the camera, drawn anew every epoch (17.5 = half the index's "
        "default 35 m stride); 0: the pre-cut crops centred on the camera",
    )
    served.add_argument(
        "--semi-positive-m",
        type=float,
        default=0.0,
        metavar="R",
        help="leave pairs (i, j) whose ground j lies within R metres of tile i's centre (and VIGOR's "
        "labelled semi-positive tiles) out of the loss's negatives (35 = half a 70 m tile); 0: none",
    )
    served.add_argument(
        "--hard-negatives",
        action="store_true",
        help="at every epoch's start, embed the aerial crops with the current weights and form each "
        "batch from descriptor neighbours that are more than --semi-positive-m apart",
    )


def _model_config(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise DatasetError(f"{path} must hold a JSON object (a ModelConfig dict)")
    return value


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = make_train_config(
            args.data,
            args.out,
            preset=args.preset,
            lr=args.lr,
            batch_size=args.batch_size,
            arch=args.arch,
            epochs=args.epochs,
            workers=args.workers,
            threads=args.threads,
            photo_fraction=args.photo_fraction,
            photo_placement=args.photo_placement,
            augment=args.augment != "none",
            aligned_augment=args.augment == "aligned",
            max_minutes=args.max_minutes,
            checkpoint_minutes=args.checkpoint_minutes,
            backbone_weights=args.backbone_weights,
            init_weights=args.init_weights,
            model_config=_model_config(args.model_config),
            resume=args.resume,
            val_data=args.val_data,
            seed=args.seed,
            device=args.device,
            offset_m=args.offset_m,
            semi_positive_m=args.semi_positive_m,
            hard_negatives=args.hard_negatives,
        )
        result = train(cfg)
    except (TrainError, DatasetError, CheckpointError, BackboneWeightsError, ValueError) as exc:
        print(f"cvm train: error: {exc}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else None
    status = "stopped early (--max-minutes)" if result.stopped_early else "finished"
    print(f"{status}: {result.epochs_done} epoch(s), {result.step} steps; checkpoints in {result.out}")
    if last is not None and last.get("val"):
        val = last["val"]
        print(f"last val: R@1 {val['r1']:.2f}  R@5 {val['r5']:.2f}  R@1% {val['r1pct']:.2f}  (N={val['n']})")
    return 0
