"""`cvm center-weights`: measure the mean ground, satellite and photo view descriptors of a
checkpoint on training worlds and write a copy whose descriptors are centred with them
(`model.centering`, docs/model.md).

    .venv/bin/cvm center-weights SRC DST --data runs/worlds/i-3000 [--data ...] \
        [--split train] [--batch-size 64]

Measure on worlds the weights were trained on, never on a world an evaluation reports. The means
average every image of the split over all eight scene transforms (`model.views`), so they hold
for any view count; the weights themselves are unchanged. Photos are those of the worlds'
ground.csv, prepared with the checkpoint's preprocessing (set `pano_elevation_deg` first:
`cvm export-weights --pano-elevation`); without photos, photos are centred with the panoramas' mean.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from model.centering import clear_centers, set_centers
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from model.config import Preprocessing
from model.cvm_net import CVMNet
from model.data import DatasetError, collate_pairs, report_failures
from model.evaluate import embed_pairs, open_eval_dataset
from model.views import set_inference_options

MEASURE_VIEWS = 8


def mean_view_descriptors(descriptors: np.ndarray, views: int) -> np.ndarray:
    """(n, views * d) descriptors (`model.views.describe`) -> (d,) mean of the n * views unit
    view descriptors."""
    n = len(descriptors)
    return (descriptors.reshape(n * views, -1) * math.sqrt(views)).mean(axis=0)


def photo_descriptors(
    net: CVMNet, world: str, prep: Preprocessing, args: argparse.Namespace
) -> list[np.ndarray]:
    """[(n, views * d)] descriptors of the split's photos of a synthetic world (`cvm eval
    --queries photo`'s inputs); [] for a folder without ground.csv (a CVUSA root)."""
    if not (Path(world) / "ground.csv").is_file():
        return []
    dataset = open_eval_dataset(world, prep, args.split, queries="photo")
    rows = [i for i, rec in enumerate(dataset.records) if rec.grd_fov_deg is not None]
    loader = DataLoader(Subset(dataset, rows), batch_size=args.batch_size, collate_fn=collate_pairs)
    out = []
    with torch.no_grad():
        for batch in loader:
            report_failures(batch.failures)
            if len(batch):
                out.append(net.describe_ground(batch.grd).float().numpy())
    return out


HELP = "centre a checkpoint's descriptors with their means measured on training worlds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="checkpoint to centre")
    p.add_argument("dst", type=Path, help="where to write the centred checkpoint")
    p.add_argument(
        "--data", action="append", required=True, metavar="DIR", help="training world (repeatable)"
    )
    p.add_argument(
        "--split", choices=("train", "val"), default="train", help="split of each world to measure"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_checkpoint(args.src)
    except CheckpointError as exc:
        print(f"cvm center-weights: {exc}", file=sys.stderr)
        return 1
    net, views = loaded.model, loaded.config.preprocessing.views
    clear_centers(net)
    set_inference_options(net, views=MEASURE_VIEWS, centered=False)
    grd, sat, photos = [], [], []
    try:
        for world in args.data:
            dataset = open_eval_dataset(world, loaded.config.preprocessing, args.split)
            emb = embed_pairs(net, dataset, args.batch_size)
            grd.append(emb.grd)
            sat.append(emb.sat)
            photos.extend(photo_descriptors(net, world, loaded.config.preprocessing, args))
            print(f"{world}: {len(emb.index)} pairs", flush=True)
    except DatasetError as exc:
        print(f"cvm center-weights: {exc}", file=sys.stderr)
        return 1
    g_mean = mean_view_descriptors(np.concatenate(grd), MEASURE_VIEWS)
    s_mean = mean_view_descriptors(np.concatenate(sat), MEASURE_VIEWS)
    p_mean = mean_view_descriptors(np.concatenate(photos), MEASURE_VIEWS) if photos else None
    set_centers(net, g_mean, s_mean, p_mean)
    set_inference_options(net, views=views, centered=True)
    train_config = dict(loaded.meta.get("train_config") or {})
    pairs = sum(len(g) for g in grd)
    n_photos = sum(len(p) for p in photos)
    train_config["centering"] = {
        "data": args.data,
        "split": args.split,
        "pairs": pairs,
        "photos": n_photos,
        "views": MEASURE_VIEWS,
    }
    save_checkpoint(args.dst, net, train_config=train_config, metrics=loaded.meta.get("metrics"))
    cos = float(g_mean @ s_mean / (np.linalg.norm(g_mean) * np.linalg.norm(s_mean)))
    print(
        f"means of {pairs} pairs x {MEASURE_VIEWS} views: |ground| {np.linalg.norm(g_mean):.3f}, "
        f"|satellite| {np.linalg.norm(s_mean):.3f}, cosine {cos:.3f}"
    )
    if p_mean is None:
        print("no photos in these worlds: photos are centred with the panoramas' mean")
    else:
        print(
            f"photo mean of {n_photos} photos x {MEASURE_VIEWS} views: |photo| {np.linalg.norm(p_mean):.3f}"
        )
    print(f"wrote {args.dst} (sha256 {file_sha256(args.dst)})")
    return 0
