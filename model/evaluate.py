"""Embed a dataset split with a model and compute ground->satellite retrieval metrics.

Used by `cvm eval` and by the training loop's per-epoch validation. Embedding runs batched,
under `torch.no_grad()` with the model in eval mode (dropout off, BatchNorm statistics fixed);
the model's previous train/eval mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.config import Preprocessing
from model.cvm_net import CVMNet
from model.data import (
    CVUSADataset,
    DatasetError,
    PairDataset,
    collate_pairs,
    is_cvusa_root,
    read_world_photos,
    report_failures,
)
from model.geodata import open_protocol_dataset
from model.metrics import RetrievalMetrics, retrieval_metrics
from model.transforms import heading_inputs


@dataclass
class Embeddings:
    """Descriptors of the loadable pairs: grd (n, d) (or (h, n, d) for h headings), sat (n, d)
    float32, index (n,) int64 into the dataset; `skipped` pairs could not be read."""

    grd: np.ndarray
    sat: np.ndarray
    index: np.ndarray
    skipped: int


class EmbedOptions(TypedDict, total=False):
    """How descriptors are computed (`embed_pairs`): images per batch, DataLoader worker processes
    and the torch device; an option left out takes the embedding function's default."""

    batch_size: int
    workers: int
    device: str | torch.device


@contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[None]:
    """`net` in eval mode for the block; its previous train/eval mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def eval_loader(
    dataset: Dataset, batch_size: int, workers: int, collate_fn: Callable[[list[Any]], Any]
) -> DataLoader:
    """A loader of `dataset` in order, batched by `collate_fn`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
        # A private generator: creating this loader must not consume the global torch RNG,
        # which the training loop's dropout depends on.
        generator=torch.Generator(),
    )


def resolve_data_root(data: str | Path) -> tuple[Path, Path | None]:
    """(CVUSA root, synthetic world folder or None) for a `--data` argument.

    A synthetic world folder holds its CVUSA export in `cvusa/`; any other folder must itself be
    a CVUSA root. Raises DatasetError naming the folder otherwise.
    """
    path = Path(data)
    if not path.is_dir():
        raise DatasetError(f"data folder not found: {path}")
    if (path / "cvusa").is_dir() and is_cvusa_root(path / "cvusa"):
        return path / "cvusa", path
    if is_cvusa_root(path):
        return path, None
    raise DatasetError(f"{path} is neither a CVUSA root (splits/*-19zl.csv) nor a synthetic world (cvusa/)")


def open_eval_dataset(
    data: str | Path, prep: Preprocessing, split: str = "val", queries: str = "panorama"
) -> PairDataset:
    """The un-augmented split of `data` (see `resolve_data_root`), or of a CVACT or VIGOR
    folder (`model.geodata.open_protocol_dataset`; split "test" is CVACT_test / VIGOR's test).

    queries: "panorama" (the CVUSA ground images) or "photo" (a synthetic world's perspective
    photos, from its ground.csv; pairs without a photo keep their panorama).
    """
    if queries not in ("panorama", "photo"):
        raise ValueError(f"queries must be 'panorama' or 'photo', got {queries!r}")
    other = open_protocol_dataset(data, split, prep)
    if other is not None:
        if queries == "photo":
            raise DatasetError(f"--queries photo needs a synthetic world folder (ground.csv), got {data}")
        return other
    root, world = resolve_data_root(data)
    photos = None
    if queries == "photo":
        if world is None:
            raise DatasetError(
                f"--queries photo needs a synthetic world folder (with ground.csv), got {data}"
            )
        photos = read_world_photos(world)
    return CVUSADataset(root, split, prep=prep, augment=False, photos=photos)


@torch.no_grad()
def embed_pairs(
    net: CVMNet,
    dataset: PairDataset,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    headings: int = 1,
) -> Embeddings:
    """Descriptors of every loadable pair of `dataset` (unreadable ones are reported and skipped).

    headings > 1: each ground input is also embedded turned by 360/headings degree steps
    (`heading_inputs`), giving grd of shape (headings, n, d).
    """
    if headings < 1:
        raise ValueError(f"headings must be >= 1, got {headings}")
    loader = eval_loader(dataset, batch_size, workers, collate_pairs)
    grd, sat, index, skipped = [], [], [], 0
    with eval_mode(net):
        for batch in loader:
            skipped += report_failures(batch.failures)
            if len(batch) == 0:
                continue
            turned = heading_inputs(batch.grd.to(device), headings)  # (headings * b, 3, H, W)
            photo = torch.tensor([dataset.records[int(i)].grd_fov_deg is not None for i in batch.index])
            g = net.describe_ground(turned, photo=photo.repeat(headings)).float().cpu().numpy()
            grd.append(g.reshape(headings, len(batch), -1))
            sat.append(net.describe_satellite(batch.sat.to(device)).float().cpu().numpy())
            index.append(batch.index.numpy())
    if not index:
        raise DatasetError(f"no readable pairs to evaluate ({skipped} skipped)")
    g_all = np.concatenate(grd, axis=1)
    g_out = g_all[0] if headings == 1 else g_all
    return Embeddings(g_out, np.concatenate(sat), np.concatenate(index), skipped)


def pair_locations(dataset: PairDataset, index: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(query (n, 2), reference (n, 2)) (lat, lon) degrees of the pairs `index`, if known."""
    if not isinstance(dataset, CVUSADataset):
        return None, None
    loc = dataset.locations()
    if loc is None:
        return None, None
    rows = loc[index]
    return rows[:, 2:4], rows[:, 0:2]


def evaluate_model(
    net: CVMNet,
    dataset: PairDataset,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    headings: int = 1,
) -> tuple[RetrievalMetrics, int]:
    """Metrics of `net` on `dataset` and the number of skipped (unreadable) pairs."""
    emb = embed_pairs(net, dataset, batch_size, workers, device, headings)
    query_loc, ref_loc = pair_locations(dataset, emb.index)
    return retrieval_metrics(emb.grd, emb.sat, query_loc, ref_loc), emb.skipped
