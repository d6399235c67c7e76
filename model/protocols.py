"""Each dataset's own evaluation protocol: CVACT and VIGOR figures, with metre-level error.

* CVACT (val or test): ground->satellite R@1/5/10/1% over the split's pairs (N queries, N
  tiles), the same recalls counting any tile within 5 m of the query (OriCNN's Recall@Geo),
  and the metre-level error: the UTM distance from the query to its top-1 tile's centre.
* VIGOR (same-area or cross-area): each panorama is ranked against every tile of the
  protocol's test cities; R@1/5/10/1% count the positive tile only (1% of the gallery size),
  the hit rate counts a top-1 that is the positive or one of the three semi-positives, and the
  metre-level error is the great-circle distance from the query's true position (positive
  tile centre + pixel offset at the tile's ground resolution) to the top-1 tile's centre.

A retrieval method that only picks a tile places the query at the tile's centre; these
errors are what such a method achieves (no offset regression).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Unpack

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.config import Preprocessing
from model.cvact import GEO_RECALL_RADIUS_M, CVACTDataset, neighbours_within
from model.cvm_net import CVMNet
from model.data import DatasetError, PairDataset, SampleFailure, report_failures
from model.evaluate import EmbedOptions, embed_pairs, eval_loader, eval_mode
from model.metrics import (
    MetreErrors,
    RetrievalMetrics,
    haversine_m,
    metre_errors,
    metrics_from_ranks,
    planar_errors_m,
    rank_gallery,
    top1pct_k,
)
from model.transforms import ImageLoadError, load_image_rgb, prepare_ground, prepare_satellite
from model.vigor import VigorDataset


@dataclass
class ProtocolReport:
    """One protocol's figures. `accepted`: recalls counting accepted references besides the
    positive (CVACT: any tile within 5 m, keys r1/r5/r10/r1pct; VIGOR: `hit_rate`), in percent."""

    dataset: str
    protocol: str
    queries: int
    gallery: int
    retrieval: RetrievalMetrics
    accepted_label: str
    accepted: dict[str, float]
    metres: MetreErrors
    skipped_queries: int = 0
    skipped_tiles: int = 0
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retrieval"] = self.retrieval.to_dict()
        out["metres"] = self.metres.to_dict()
        return out


def _recalls(ranks: np.ndarray, gallery: int) -> dict[str, float]:
    k1pct, _ = top1pct_k(gallery)
    return {
        f"r{k}": float(100.0 * np.mean(ranks < kk))
        for k, kk in (("1", 1), ("5", 5), ("10", 10), ("1pct", k1pct))
    }


def cvact_figures(grd: np.ndarray, sat: np.ndarray, utm: np.ndarray, protocol: str = "val") -> ProtocolReport:
    """CVACT figures of paired descriptors grd/sat (n, d) (row i of each = pair i at UTM utm[i])."""
    n = grd.shape[0]
    near = neighbours_within(utm, GEO_RECALL_RADIUS_M)
    width = max((len(a) for a in near), default=0)
    accepted = np.full((n, max(1, width)), -1, dtype=np.int64)
    for i, a in enumerate(near):
        accepted[i, : len(a)] = a
    ranked = rank_gallery(grd, sat, np.arange(n), accepted)
    assert ranked.accepted_ranks is not None
    retrieval = metrics_from_ranks(ranked.ranks)
    return ProtocolReport(
        dataset="CVACT",
        protocol=protocol,
        queries=n,
        gallery=n,
        retrieval=retrieval,
        accepted_label=f"recall counting any tile within {GEO_RECALL_RADIUS_M:g} m",
        accepted=_recalls(ranked.accepted_ranks, n),
        metres=metre_errors(planar_errors_m(utm, utm, ranked.top1)),
    )


def vigor_figures(
    grd: np.ndarray,
    sat: np.ndarray,
    positive: np.ndarray,
    semi_positive: np.ndarray,
    query_latlon: np.ndarray,
    gallery_latlon: np.ndarray,
    protocol: str = "same-area",
) -> ProtocolReport:
    """VIGOR figures: queries grd (n, d) against the gallery sat (m, d) centred at gallery_latlon
    (m, 2); positive (n,), semi_positive (n, 3) gallery indices (-1: unavailable)."""
    ranked = rank_gallery(grd, sat, positive, semi_positive)
    assert ranked.accepted_ranks is not None
    m = sat.shape[0]
    best = np.asarray(gallery_latlon, dtype=np.float64)[ranked.top1]
    q = np.asarray(query_latlon, dtype=np.float64)
    return ProtocolReport(
        dataset="VIGOR",
        protocol=protocol,
        queries=grd.shape[0],
        gallery=m,
        retrieval=metrics_from_ranks(ranked.ranks, gallery_size=m),
        accepted_label="hit rate: top-1 is the positive or a semi-positive tile",
        accepted={"hit_rate": float(100.0 * np.mean(ranked.accepted_ranks == 0))},
        metres=metre_errors(haversine_m(q[:, 0], q[:, 1], best[:, 0], best[:, 1])),
    )


class _Images(Dataset):
    """Prepared single images (ground panoramas or tiles) of `paths`, or a SampleFailure."""

    def __init__(self, paths: list[Path], prep: Preprocessing, kind: str) -> None:
        self.paths, self.prep, self.kind = paths, prep, kind

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | SampleFailure:
        path = self.paths[index]
        try:
            rgb = load_image_rgb(path)
            x = prepare_satellite(rgb, self.prep) if self.kind == "tile" else prepare_ground(rgb, self.prep)
        except (ImageLoadError, OSError, ValueError, cv2.error) as exc:
            return SampleFailure(index, str(path), str(exc))
        return x, index


def _collate(samples: list[Any]) -> tuple[torch.Tensor | None, np.ndarray, list[SampleFailure]]:
    good = [s for s in samples if not isinstance(s, SampleFailure)]
    failures = [s for s in samples if isinstance(s, SampleFailure)]
    if not good:
        return None, np.empty(0, dtype=np.int64), failures
    return torch.stack([s[0] for s in good]), np.array([s[1] for s in good], dtype=np.int64), failures


@torch.no_grad()
def embed_images(
    net: CVMNet,
    paths: list[Path],
    prep: Preprocessing,
    kind: str,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, int]:
    """(descriptors (k, d), index (k,) into `paths`, failures) of the readable images; `kind`
    is "ground" (panoramas) or "tile". Unreadable files are reported by name and skipped."""
    loader = eval_loader(_Images(paths, prep, kind), batch_size, workers, _collate)
    out, index, failed = [], [], 0
    with eval_mode(net):
        for x, idx, failures in loader:
            failed += report_failures(failures)
            if x is None:
                continue
            x = x.to(device)
            d = net.describe_satellite(x) if kind == "tile" else net.describe_ground(x)
            out.append(d.float().cpu().numpy())
            index.append(idx)
    if not out:
        raise DatasetError(f"no readable {kind} images ({failed} unreadable)")
    return np.concatenate(out), np.concatenate(index), failed


def evaluate_vigor(net: CVMNet, dataset: VigorDataset, **options: Unpack[EmbedOptions]) -> ProtocolReport:
    """VIGOR figures of `net` on `dataset` (see the module docstring)."""
    prep = dataset.prep
    sat, tile_idx, _ = embed_images(
        net, dataset.gallery_paths, prep, "tile", **options
    )  # missing gallery tiles fail here, by name
    remap = np.full(len(dataset.gallery_paths), -1, dtype=np.int64)
    remap[tile_idx] = np.arange(len(tile_idx))
    grd, q_idx, _ = embed_images(net, [r.grd for r in dataset.records], prep, "ground", **options)
    positive = remap[dataset.positive[q_idx]]
    usable = positive >= 0
    semi = dataset.semi_positive[q_idx]
    semi = np.where(semi >= 0, remap[np.maximum(semi, 0)], -1)
    if not usable.any():
        raise DatasetError("no VIGOR query has a readable panorama and positive tile")
    report = vigor_figures(
        grd[usable],
        sat,
        positive[usable],
        semi[usable],
        dataset.query_latlon()[q_idx][usable],
        dataset.gallery_latlon[tile_idx],
        dataset.protocol,
    )
    report.skipped_queries = len(dataset) - int(usable.sum())
    report.skipped_tiles = len(dataset.gallery_paths) - len(tile_idx)
    report.missing = [str(p) for p in dataset.missing] + [str(p) for p in dataset.gallery_missing]
    return report


def evaluate_cvact(net: CVMNet, dataset: CVACTDataset, **options: Unpack[EmbedOptions]) -> ProtocolReport:
    """CVACT figures of `net` on `dataset` (see the module docstring)."""
    emb = embed_pairs(net, dataset, **options)
    report = cvact_figures(emb.grd, emb.sat, dataset.utm[emb.index], dataset.split)
    report.skipped_queries = emb.skipped
    report.missing = [str(p) for p in dataset.missing]
    return report


def is_protocol_dataset(dataset: PairDataset) -> bool:
    """Whether `dataset` has its own protocol figures (`evaluate_protocol`)."""
    return isinstance(dataset, CVACTDataset | VigorDataset)


def evaluate_protocol(net: CVMNet, dataset: PairDataset, **options: Unpack[EmbedOptions]) -> ProtocolReport:
    """The protocol figures of a CVACT or VIGOR dataset."""
    if isinstance(dataset, VigorDataset):
        return evaluate_vigor(net, dataset, **options)
    if isinstance(dataset, CVACTDataset):
        return evaluate_cvact(net, dataset, **options)
    raise DatasetError(f"{type(dataset).__name__} has no protocol of its own (CVACT and VIGOR do)")


def format_report(report: ProtocolReport) -> str:
    """Plain-text figures of one protocol."""
    r, m = report.retrieval, report.metres
    lines = [
        f"{report.dataset} {report.protocol}: {report.queries} queries, gallery of {report.gallery} tiles"
        f" (skipped: {report.skipped_queries} queries, {report.skipped_tiles} tiles;"
        f" missing files: {len(report.missing)})",
        f"  R@1 {r.r1:.2f}  R@5 {r.r5:.2f}  R@10 {r.r10:.2f}  R@1% {r.r1pct:.2f} (K = {r.k1pct})"
        f"  median rank {r.median_rank:.1f}",
        f"  {report.accepted_label}: " + "  ".join(f"{k} {v:.2f}" for k, v in report.accepted.items()),
        f"  top-1 tile centre error: within 1 m {m.within_1m:.2f}%  5 m {m.within_5m:.2f}%"
        f"  10 m {m.within_10m:.2f}%  25 m {m.within_25m:.2f}%  50 m {m.within_50m:.2f}%"
        f"  median {m.median_m:.1f} m",
    ]
    return "\n".join(lines)
