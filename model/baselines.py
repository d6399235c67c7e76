"""Reference points for the model's retrieval numbers: random ranking and colour histograms.

Both produce descriptors and go through the same `model.metrics` code as the model, so their
rows in a results table are directly comparable.

* random: i.i.d. Gaussian descriptors (seeded) -- every ranking equally likely; expected
  R@K = K/N.
* histogram: the joint RGB colour histogram (8 levels per channel, 512 bins) of the raw ground
  image and of the raw satellite image, compared by the Bhattacharyya coefficient (the dot
  product of square-rooted normalised histograms). It measures how far "same colours" alone
  gets, without any geometry.
"""

from __future__ import annotations

import numpy as np

from model.data import DatasetError, PairDataset, SampleFailure, failed_path, report_failures
from model.evaluate import pair_locations
from model.metrics import RetrievalMetrics, retrieval_metrics
from model.transforms import ImageLoadError

BASELINES = ("random", "histogram")
RANDOM_DIM = 64


def colour_histogram(rgb: np.ndarray, levels: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (levels**3,) float64 square-rooted normalised joint histogram.

    Unit L2 norm, so the dot product of two of them is their Bhattacharyya coefficient in [0, 1].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if 256 % levels:
        raise ValueError(f"levels must divide 256, got {levels}")
    q = (rgb.reshape(-1, 3) // (256 // levels)).astype(np.int64)
    bins = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    hist = np.bincount(bins, minlength=levels**3).astype(np.float64)
    return np.sqrt(hist / hist.sum())


def histogram_descriptors(dataset: PairDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(grd (n, 512), sat (n, 512), index (n,), skipped) colour histograms of the raw images."""
    grd, sat, index, failures = [], [], [], []
    for i in range(len(dataset)):
        try:
            g, s = dataset.load_rgb(i)
        except ImageLoadError as exc:
            failures.append(SampleFailure(i, failed_path(dataset.records[i], exc), str(exc)))
            continue
        grd.append(colour_histogram(g))
        sat.append(colour_histogram(s))
        index.append(i)
    skipped = report_failures(failures)
    if not index:
        raise DatasetError(f"no readable pairs for the histogram baseline ({skipped} skipped)")
    return np.stack(grd), np.stack(sat), np.asarray(index, dtype=np.int64), skipped


def random_descriptors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Independent Gaussian (n, RANDOM_DIM) ground and satellite descriptors."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, RANDOM_DIM)), rng.normal(size=(n, RANDOM_DIM))


def baseline_metrics(kind: str, dataset: PairDataset, seed: int = 0) -> RetrievalMetrics:
    """Metrics of baseline `kind` ("random" or "histogram") on every pair of `dataset`."""
    if kind == "random":
        index = np.arange(len(dataset))
        grd, sat = random_descriptors(len(dataset), seed)
    elif kind == "histogram":
        grd, sat, index, _ = histogram_descriptors(dataset)
    else:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    query_loc, ref_loc = pair_locations(dataset, index)
    return retrieval_metrics(grd, sat, query_loc, ref_loc)
