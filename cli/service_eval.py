"""The service's own path, measured on synthetic worlds with known positions (`cvm eval-service`,
`cvm calibrate`).

Each world's orthophoto is indexed as `cvm-index build` does it (the indexer's defaults: tile size
from the weights, stride half a tile) into a catalogue of its own, and its ground images (the
panoramas and the perspective photos listed in `ground.csv`) are answered by
`service.pipeline.localize_once`, the code of `POST /localize`. Errors are geodesic distances
(WGS84, pyproj) from the true position in `ground.csv`. Each record also keeps the query's
familiarity features (`service.familiarity`), from which `cvm calibrate` fits the familiarity
models and with which `re_estimate` judges them.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Geod

from indexer.build import BuildOptions
from indexer.runner import run_build
from model.checkpoint import file_sha256
from service.calibration import (
    Calibration,
    expected_calibration_error,
    reliability,
)
from service.catalog import Catalog, TilePlace
from service.estimate import FEATURES
from service.localizer import Localizer
from service.locate import locate
from service.pipeline import localize_once
from service.snapshot import IndexSnapshot
from service.store import SnapshotStore
from storage.db import make_engine
from storage.settings import Settings

GEOD = Geod(ellps="WGS84")
KINDS = ("panorama", "photo")
TOP_KS = (1, 5, 10)
HIT_M = 50.0  # a top-k hit: a tile centre within this distance of the truth
WITHIN_M = (25.0, 50.0, 100.0)


@dataclass
class Record:
    """One answered query: truth, the pool of ranked tiles (centres, scores, best first), and the
    estimate the service gave (centre, radius, raw features, confidence)."""

    world: str
    id: str
    kind: str
    lat: float
    lon: float
    cand_lat: list[float]
    cand_lon: list[float]
    cand_south: list[float]
    cand_north: list[float]
    scores: list[float]
    grid_m: tuple[float, float] | None
    est_lat: float = math.nan
    est_lon: float = math.nan
    radius_m: float = math.nan
    features: list[float] = field(default_factory=list)
    confidence: float = math.nan
    # The query's familiarity features, one row per input (empty in records saved before them).
    query_features: list[list[float]] = field(default_factory=list)
    unfamiliar: bool = False  # the calibration's familiarity model rejected the query
    familiarity: float | None = None  # its score (None: not judged)

    def query_feature_array(self) -> np.ndarray | None:
        return np.asarray(self.query_features, float) if self.query_features else None

    @property
    def est_error_m(self) -> float:
        return distance_m(self.lat, self.lon, self.est_lat, self.est_lon)

    @property
    def correct(self) -> bool:
        """The truth lies within the estimate's radius."""
        return self.est_error_m <= self.radius_m

    def cand_errors_m(self, k: int) -> np.ndarray:
        return np.array(
            [
                distance_m(self.lat, self.lon, a, b)
                for a, b in zip(self.cand_lat[:k], self.cand_lon[:k], strict=True)
            ]
        )


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic distance on the WGS84 ellipsoid, metres."""
    return float(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def ground_rows(world: Path) -> list[dict[str, str]]:
    with (world / "ground.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def index_world(world: Path, data_dir: Path, weights: Path) -> Settings:
    """Index the world's orthophoto as `cvm-index build --imagery ortho.tif` does (defaults) into
    `data_dir` (its own SQLite catalogue and index folder); an active build there made with the
    same weights is reused."""
    settings = Settings(data_dir=data_dir, weights=weights)
    if (data_dir / "cvm.db").is_file():
        engine = make_engine(settings.database_url, read_only=True)
        try:
            active = Catalog(engine).active_build()
        finally:
            engine.dispose()
        if active is not None and active.weights_sha256 == file_sha256(weights):
            return settings
    report = run_build(
        BuildOptions(imagery=(str(world / "ortho.tif"),), progress=False), settings, weights, "cpu"
    )
    if report.status not in ("complete", "partial"):
        raise RuntimeError(f"{world}: build {report.build_id} {report.status}")
    return settings


def open_world(world: Path, data_dir: Path, localizer: Localizer) -> IndexSnapshot:
    """Index `world` (`index_world`) and load its build as the service does."""
    settings = index_world(world, data_dir, localizer.weights_path)
    catalog = Catalog(make_engine(settings.database_url, read_only=True))
    try:
        store = SnapshotStore(catalog, settings.index_root, localizer.weights_sha256, localizer.out_dim)
        store.refresh()
        return store.require()
    finally:
        catalog.engine.dispose()


def answer_world(
    world: Path,
    data_dir: Path,
    localizer: Localizer,
    kinds: Sequence[str],
    n: int | None,
    log: Any = sys.stderr,
) -> list[Record]:
    """Index `world` and answer up to n of its ground images of each kind through `localize_once`."""
    snapshot = open_world(world, data_dir, localizer)
    rows = ground_rows(world)
    if n is not None and n < len(rows):
        picks = np.random.default_rng(0).choice(len(rows), size=n, replace=False)
        rows = [rows[i] for i in sorted(picks)]
    pool = max(TOP_KS[-1], localizer.calibration.params.pool if localizer.calibration else 50)
    records = []
    for kind in kinds:
        column = "file" if kind == "panorama" else "photo_file"
        for row in rows:
            data = (world / row[column]).read_bytes()
            result = localize_once(localizer, snapshot, data, pool, kind)
            tiles = [c.tile for c in result.candidates]
            rec = Record(
                world=world.name,
                id=row["id"],
                kind=kind,
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                cand_lat=[t.lat for t in tiles],
                cand_lon=[t.lon for t in tiles],
                cand_south=[t.south for t in tiles],
                cand_north=[t.north for t in tiles],
                scores=[c.score for c in result.candidates],
                grid_m=snapshot.grid_m,
                query_features=_rows(result.query_features),
            )
            if result.estimate is not None:
                est = result.estimate
                rec.est_lat, rec.est_lon, rec.radius_m = est.lat, est.lon, est.radius_m
                rec.features, rec.confidence = est.raw.feature_vector(), est.confidence
                rec.unfamiliar, rec.familiarity = est.reason is not None, est.familiarity
            records.append(rec)
        print(f"{world.name}: {len(rows)} {kind} queries over {snapshot.ntotal} tiles", file=log)
    return records


def re_estimate(records: Iterable[Record], calibration: Calibration | None) -> list[Record]:
    """The records' estimates recomputed from their stored pools with `calibration`'s parameters
    and confidence (what the service would answer with it), without running the model again."""
    out = []
    for r in records:
        tiles = [
            TilePlace(i, la, lo, lo, s, lo, n)
            for i, (la, lo, s, n) in enumerate(
                zip(r.cand_lat, r.cand_lon, r.cand_south, r.cand_north, strict=True)
            )
        ]
        est = locate(tiles, r.scores, r.kind, r.grid_m, calibration, r.query_feature_array())
        if est is None:
            out.append(r)
            continue
        out.append(
            replace(
                r,
                est_lat=est.lat,
                est_lon=est.lon,
                radius_m=est.radius_m,
                features=est.raw.feature_vector(),
                confidence=est.confidence,
                unfamiliar=est.reason is not None,
                familiarity=est.familiarity,
            )
        )
    return out


def _rows(features: np.ndarray | None) -> list[list[float]]:
    """JSON-friendly rows, 7 significant digits (float32 precision is all they had)."""
    if features is None:
        return []
    return [[float(f"{v:.7g}") for v in row] for row in np.asarray(features, float)]


def summarize(records: Sequence[Record], bins: int = 10) -> dict[str, Any]:
    """Per kind: the estimate's and the top candidate's errors, top-k hit rates, calibration."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        rs = [r for r in records if r.kind == kind]
        if not rs:
            continue
        est_err = np.array([r.est_error_m for r in rs])
        top_err = np.array([r.cand_errors_m(1)[0] for r in rs])
        conf = np.array([r.confidence for r in rs])
        correct = np.array([r.correct for r in rs])
        cand = [r.cand_errors_m(TOP_KS[-1]) for r in rs]
        out[kind] = {
            "n": len(rs),
            "estimate": _errors(est_err),
            "top_candidate": _errors(top_err),
            "hit_at": {str(k): _pct(np.mean([c[:k].min() <= HIT_M for c in cand])) for k in TOP_KS},
            "radius_m": {"median": round(float(np.median([r.radius_m for r in rs])), 1)},
            "correct_within_radius": _pct(correct.mean()),
            "mean_confidence": round(float(conf.mean()), 4),
            "confident": _pct(np.mean([r.confidence >= 0.5 for r in rs])),
            # judged unlike the calibration's queries (on in-distribution worlds: false rejections)
            "unfamiliar": _pct(np.mean([r.unfamiliar for r in rs])),
            "ece": round(expected_calibration_error(conf, correct, bins), 4),
            "reliability": [asdict(b) for b in reliability(conf, correct, bins)],
        }
    if len({r.kind for r in records}) > 1:
        conf = np.array([r.confidence for r in records])
        correct = np.array([r.correct for r in records])
        out["all"] = {
            "n": len(records),
            "ece": round(expected_calibration_error(conf, correct, bins), 4),
            "reliability": [asdict(b) for b in reliability(conf, correct, bins)],
        }
    return out


def _errors(err: np.ndarray) -> dict[str, float]:
    out = {f"within_{int(m)}m": _pct(np.mean(err <= m)) for m in WITHIN_M}
    out["median_m"] = round(float(np.median(err)), 1)
    out["p90_m"] = round(float(np.percentile(err, 90)), 1)
    return out


def _pct(x: Any) -> float:
    return round(100.0 * float(x), 1)


def format_summary(summary: dict[str, Any]) -> str:
    """Markdown tables of `summarize`'s result."""
    lines = [
        "| query | n | answer | within 25 / 50 / 100 m | median | p90 |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        s = summary.get(kind)
        if s is None:
            continue
        for name, key in (("estimate", "estimate"), ("top candidate", "top_candidate")):
            e = s[key]
            lines.append(
                f"| {kind} | {s['n']} | {name} "
                f"| {e['within_25m']} / {e['within_50m']} / {e['within_100m']} % "
                f"| {e['median_m']:.0f} m | {e['p90_m']:.0f} m |"
            )
    lines += [
        "",
        "| query | a tile within 50 m among top 1 / 5 / 10 | median radius | truth within radius "
        "| mean confidence | confident (>= 0.5) | unfamiliar | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        s = summary.get(kind)
        if s is None:
            continue
        h = s["hit_at"]
        lines.append(
            f"| {kind} | {h['1']} / {h['5']} / {h['10']} % | {s['radius_m']['median']:.0f} m "
            f"| {s['correct_within_radius']} % | {s['mean_confidence']:.3f} "
            f"| {s['confident']} % | {s['unfamiliar']} % | {s['ece']:.3f} |"
        )
    for kind in (*KINDS, "all"):
        s = summary.get(kind)
        if s is None:
            continue
        lines += [
            "",
            f"reliability ({kind}, ECE {s['ece']:.3f}):",
            "| confidence | n | mean confidence | correct |",
        ]
        lines.append("|---|---|---|---|")
        for b in s["reliability"]:
            lines.append(
                f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} | {b['confidence']:.3f} "
                f"| {100 * b['accuracy']:.1f} % |"
            )
    return "\n".join(lines)


def feature_matrix(records: Sequence[Record]) -> np.ndarray:
    return np.array([r.features for r in records], dtype=float).reshape(-1, len(FEATURES))


def save_records(records: Sequence[Record], path: Path) -> None:
    """One JSON object per line."""
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")


def load_records(path: Path) -> list[Record]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["grid_m"] = tuple(d["grid_m"]) if d.get("grid_m") is not None else None
            out.append(Record(**d))
    return out
