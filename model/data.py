"""Cross-view pair datasets: CVUSA layout, Vo & Hays list files, and a fault-tolerant collate.

Every dataset yields ``(ground (3,H,W), satellite (3,S,S), index)`` float32 tensors prepared by
`model.transforms` (sizes from `Preprocessing`), or a `SampleFailure` when an image cannot be
read. `collate_pairs` drops failures so that one bad file never stops an epoch; the training
loop reports each failed file once (`report_failures`) and counts them.

Randomness of the training augmentation is drawn from a generator seeded by
``(seed, epoch, index)``: a sample's augmentation does not depend on the worker that loads it
or on where a run was resumed, which is what makes interrupted and uninterrupted runs equal.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from model.config import Preprocessing
from model.transforms import (
    ImageLoadError,
    SizeFor,
    augment_satellite,
    input_size,
    load_image_rgb,
    prepare_ground,
    prepare_pano_crop,
    prepare_photo,
    prepare_satellite,
    rotate_flip_pair,
)

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train-19zl.csv", "val": "val-19zl.csv"}
# Where training puts a photo-like crop on the panorama canvas (see `PairDataset`).
PHOTO_PLACEMENTS = ("column0", "heading")
# Horizontal field of view (degrees) of the photo-like crops cut from panoramas in training.
PHOTO_FOV_RANGE = (60.0, 90.0)
_MAX_LISTED_MISSING = 20
# Per-process memory of files already reported, so that a bad file is warned about once.
_REPORTED: set[str] = set()


class DatasetError(ValueError):
    """A dataset folder or list file is missing or malformed (the message names it)."""


@dataclass(frozen=True)
class PairRecord:
    """One ground/satellite pair on disk.

    key: the pair's id (CVUSA: file stem of the satellite image, e.g. "0041073").
    grd_fov_deg: None for an equirectangular panorama; the horizontal field of view in degrees
    when the ground image is an ordinary perspective photo.
    """

    key: str
    sat: Path
    grd: Path
    grd_fov_deg: float | None = None


@dataclass(frozen=True)
class SampleFailure:
    """A sample whose images could not be loaded: dataset index, offending file, reason."""

    index: int
    path: str
    reason: str


@dataclass
class PairBatch:
    """A collated batch: grd (b,3,H,W), sat (b,3,S,S), index (b,) int64, plus dropped samples.

    Where the data knows its positions, training fills (`model.sampling.attach_geometry`):
    position (b, 4) float64 tile lat, tile lon, ground lat, ground lon (NaN where unknown),
    group (b,) int64 (pairs of different groups are never near each other) and, for data whose
    labels list the tiles that show each ground image (VIGOR), tiles (b, 4) int64.
    """

    grd: torch.Tensor
    sat: torch.Tensor
    index: torch.Tensor
    failures: list[SampleFailure]
    position: torch.Tensor | None = None
    group: torch.Tensor | None = None
    tiles: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])


PairSample = tuple[torch.Tensor, torch.Tensor, int]


def collate_pairs(samples: Sequence[PairSample | SampleFailure]) -> PairBatch:
    """Stack the loadable samples, keep the failures aside (a batch may end up empty)."""
    good = [s for s in samples if not isinstance(s, SampleFailure)]
    failures = [s for s in samples if isinstance(s, SampleFailure)]
    if not good:
        empty = torch.empty(0)
        return PairBatch(empty, empty, torch.empty(0, dtype=torch.int64), failures)
    grd = torch.stack([s[0] for s in good])
    sat = torch.stack([s[1] for s in good])
    index = torch.tensor([s[2] for s in good], dtype=torch.int64)
    return PairBatch(grd, sat, index, failures)


def report_failures(failures: Iterable[SampleFailure]) -> int:
    """Log a warning for each failed file not reported before; returns the number of failures."""
    count = 0
    for f in failures:
        count += 1
        if f.path not in _REPORTED:
            _REPORTED.add(f.path)
            log.warning("skipping sample %d: %s (%s)", f.index, f.path, f.reason)
    return count


def random_photo_crop(pano: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, int]:
    """A horizontal crop of a 360-degree panorama at a random heading, 60-90 degrees wide.

    pano: (H, W, 3) uint8. Returns the (H, w, 3) crop (wrapping around the seam), its horizontal
    field of view in degrees and the panorama column it starts at.
    """
    fov = float(rng.uniform(*PHOTO_FOV_RANGE))
    width = pano.shape[1]
    start = int(rng.integers(0, width))
    cols = (start + np.arange(max(1, round(width * fov / 360.0)))) % width
    return np.ascontiguousarray(pano[:, cols]), fov, start


def place_photo_crop(canvas: torch.Tensor, start_col: int, pano_width: int) -> torch.Tensor:
    """Move a `prepare_pano_crop` canvas (crop at column 0) to where its crop was cut from: column
    `start_col` of a `pano_width`-wide panorama, scaled to the canvas width (wrapping around)."""
    width = canvas.shape[-1]
    return torch.roll(canvas, shifts=round(start_col * width / pano_width) % width, dims=-1)


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell every `PairDataset` inside `dataset` (through Concat/Subset) the current epoch."""
    if isinstance(dataset, PairDataset):
        dataset.epoch = epoch
    elif isinstance(dataset, ConcatDataset):
        for d in dataset.datasets:
            set_epoch(d, epoch)
    elif isinstance(dataset, Subset):
        set_epoch(dataset.dataset, epoch)


class PairOptions(TypedDict, total=False):
    """The keyword options of `PairDataset` (augmentation, photo crops, seed) that its subclasses
    pass on unchanged; an option left out takes `PairDataset`'s default."""

    augment: bool
    photo_fraction: float
    seed: int
    aligned: bool
    photo_placement: str


class PairDataset(Dataset):
    """Pairs from a list of `PairRecord`s, prepared for a model with preprocessing `prep`.

    augment: random satellite crop/rotation (`augment_satellite`, the original's), or with
    `aligned` a random mirror and quarter turn of the whole scene that keeps the panorama
    north-aligned with the tile (`rotate_flip_pair`); and with probability `photo_fraction` the
    panorama is replaced by a random-heading 60-90 degree crop placed by `prepare_pano_crop` (so
    that partial views like ordinary photos are seen in training). `photo_placement` says where
    the crop goes on the panorama canvas: "column0" (as `prepare_photo` places a photo of unknown
    heading) or "heading" (the columns it was cut from, so that the model learns to match partial
    panoramas in place; queries are then tried at several headings, see `model.evaluate`).
    Records whose files are missing are dropped at construction (listed in `missing`).
    """

    def __init__(
        self,
        records: Sequence[PairRecord],
        prep: Preprocessing,
        augment: bool = False,
        photo_fraction: float = 0.0,
        seed: int = 0,
        aligned: bool = False,
        photo_placement: str = "column0",
    ) -> None:
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
        if photo_placement not in PHOTO_PLACEMENTS:
            raise ValueError(f"photo_placement must be one of {PHOTO_PLACEMENTS}, got {photo_placement!r}")
        self.photo_placement = photo_placement
        self.prep = prep
        self.augment = augment
        self.aligned = aligned
        self.photo_fraction = photo_fraction
        self.seed = seed
        self.epoch = 0
        self.records, self.missing = _drop_missing(records)

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def load_rgb(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(ground, satellite) RGB uint8 images of pair `index`; raises ImageLoadError.

        A large ground JPEG is decoded at a reduced scale, exactly as the service decodes it.
        """
        rec = self.records[index]
        return load_image_rgb(rec.grd, fit=self.ground_fit(rec)), load_image_rgb(rec.sat)

    def ground_fit(self, rec: PairRecord) -> SizeFor:
        """The size the record's ground image is resized to, given its own (width, height)."""
        if rec.grd_fov_deg is None:
            return lambda w, h: input_size(w, h, self.prep, "panorama")
        fov = rec.grd_fov_deg
        return lambda w, h: input_size(w, h, self.prep, "photo", fov)

    def __getitem__(self, index: int) -> PairSample | SampleFailure:
        rec = self.records[index]
        try:
            grd_rgb, sat_rgb = self.load_rgb(index)
            grd, sat = self._prepare(rec, grd_rgb, sat_rgb, index)
        except (ImageLoadError, OSError, ValueError, cv2.error) as exc:
            return SampleFailure(index, failed_path(rec, exc), str(exc))
        return grd, sat, index

    def _prepare(
        self, rec: PairRecord, grd_rgb: np.ndarray, sat_rgb: np.ndarray, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index) if self.augment else None
        if rng is not None and self.aligned:
            turns, mirror = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
            grd_rgb, sat_rgb = rotate_flip_pair(grd_rgb, sat_rgb, turns, mirror, rec.grd_fov_deg is None)
        if rec.grd_fov_deg is not None:
            grd = prepare_photo(grd_rgb, self.prep, fov_deg=rec.grd_fov_deg)
        elif rng is not None and self.photo_fraction > 0 and rng.random() < self.photo_fraction:
            crop, fov, start = random_photo_crop(grd_rgb, rng)
            grd = prepare_pano_crop(crop, self.prep, fov_deg=fov)
            if self.photo_placement == "heading":
                grd = place_photo_crop(grd, start, grd_rgb.shape[1])
        else:
            grd = prepare_ground(grd_rgb, self.prep)
        if rng is not None and not self.aligned:
            sat_rgb = augment_satellite(sat_rgb, rng)
        return grd, prepare_satellite(sat_rgb, self.prep)


def failed_path(rec: PairRecord, exc: Exception) -> str:
    """Which of the pair's files the error is about (the loader names it in its message)."""
    text = str(exc)
    if str(rec.sat) in text:
        return str(rec.sat)
    if str(rec.grd) in text:
        return str(rec.grd)
    return f"{rec.grd} / {rec.sat}"


def _drop_missing(records: Sequence[PairRecord]) -> tuple[list[PairRecord], list[Path]]:
    kept, missing = [], []
    for rec in records:
        absent = [p for p in (rec.grd, rec.sat) if not p.is_file()]
        if absent:
            missing.extend(absent)
        else:
            kept.append(rec)
    for p in missing[:_MAX_LISTED_MISSING]:
        log.warning("missing image, pair skipped: %s", p)
    if len(missing) > _MAX_LISTED_MISSING:
        log.warning("... and %d more missing images", len(missing) - _MAX_LISTED_MISSING)
    return kept, missing


def resolve_layout_path(root: Path, rel: str) -> Path:
    """`root/rel`, or the doubled-folder variant of the public archive (`bingmap/bingmap/19/...`,
    `streetview/streetview/panos/...`, `splits/splits/...`) when only that one exists."""
    direct = root / rel
    parts = Path(rel).parts
    if direct.exists() or len(parts) < 2:
        return direct
    doubled = root / parts[0] / rel
    return doubled if doubled.exists() else direct


def is_cvusa_root(path: Path) -> bool:
    """Whether `path` holds a CVUSA split file (in either folder layout)."""
    return any(resolve_layout_path(path, f"splits/{name}").is_file() for name in SPLIT_FILES.values())


def read_cvusa_split(root: Path, split: str) -> list[PairRecord]:
    """Records of `splits/<split file>` under a CVUSA root, paths resolved against `root`."""
    if split not in SPLIT_FILES:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_FILES)}")
    split_file = resolve_layout_path(root, f"splits/{SPLIT_FILES[split]}")
    if not split_file.is_file():
        raise DatasetError(f"CVUSA split file not found: {split_file} (is {root} a CVUSA root?)")
    records = []
    with split_file.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DatasetError(f"{split_file}:{lineno}: expected 'satellite,ground,annotation' paths")
            sat_rel, grd_rel = row[0].strip(), row[1].strip()
            key = Path(sat_rel).stem
            sat, grd = resolve_layout_path(root, sat_rel), resolve_layout_path(root, grd_rel)
            records.append(PairRecord(key, sat, grd))
    return records


def read_cvusa_locations(root: Path, keys: Sequence[str]) -> np.ndarray | None:
    """(n, 4) float64 rows (sat_lat, sat_lon, grd_lat, grd_lon) for `keys` from
    `split_locations/all.csv` (row = int(key) - 1), or None when the file or a row is absent."""
    path = resolve_layout_path(root, "split_locations/all.csv")
    if not path.is_file():
        return None
    try:
        table = np.loadtxt(path, delimiter=",", usecols=(0, 1, 2, 3), ndmin=2, dtype=np.float64)
        rows = np.array([int(k) - 1 for k in keys], dtype=np.int64)
    except ValueError as exc:
        log.warning("ignoring unreadable locations file %s: %s", path, exc)
        return None
    if rows.size and (rows.min() < 0 or rows.max() >= table.shape[0]):
        log.warning("locations file %s has %d rows; ids out of range, locations ignored", path, len(table))
        return None
    return table[rows]


class CVUSADataset(PairDataset):
    """CVUSA pairs of `split` ("train" or "val") under `root` (see `read_cvusa_split`).

    photos: optional key -> (photo path, horizontal FOV in degrees); pairs whose key is listed
    use that perspective photo as the ground query instead of the panorama (synthetic worlds).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        prep: Preprocessing | None = None,
        augment: bool = False,
        photo_fraction: float = 0.0,
        seed: int = 0,
        photos: Mapping[str, tuple[Path, float]] | None = None,
        aligned: bool = False,
        photo_placement: str = "column0",
    ) -> None:
        if prep is None:
            raise ValueError("CVUSADataset needs the model's Preprocessing (prep=...)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"CVUSA root is not a directory: {self.root}")
        records = read_cvusa_split(self.root, split)
        if photos is not None:
            records = [PairRecord(r.key, r.sat, *photos[r.key]) if r.key in photos else r for r in records]
        super().__init__(records, prep, augment, photo_fraction, seed, aligned, photo_placement)
        self.split = split

    def locations(self) -> np.ndarray | None:
        """(n, 4) (sat_lat, sat_lon, grd_lat, grd_lon) in dataset order, or None if unknown."""
        return read_cvusa_locations(self.root, [r.key for r in self.records])


def read_caffe_list(path: Path, root: Path) -> list[Path]:
    """Image paths of a Caffe ImageData list ("path label" per line; the label after the last
    space is ignored), resolved against `root`."""
    if not path.is_file():
        raise DatasetError(f"image list not found: {path}")
    paths = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        name, _, label = line.rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            name = line
        paths.append(root / name)
    return paths


class VoHaysDataset(PairDataset):
    """Vo & Hays pairs from two Caffe list files paired by line (street view i <-> overhead i).

    Street views are perspective crops, so they go through `prepare_photo` with
    `street_fov_deg`. Paths are relative to `root` (default: each list file's folder).
    """

    def __init__(
        self,
        streetview_list: str | Path,
        overhead_list: str | Path,
        prep: Preprocessing,
        augment: bool = False,
        seed: int = 0,
        street_fov_deg: float = 90.0,
        root: str | Path | None = None,
    ) -> None:
        sv_list, oh_list = Path(streetview_list), Path(overhead_list)
        streets = read_caffe_list(sv_list, Path(root) if root else sv_list.parent)
        overheads = read_caffe_list(oh_list, Path(root) if root else oh_list.parent)
        if len(streets) != len(overheads):
            raise DatasetError(
                f"{sv_list} has {len(streets)} lines but {oh_list} has {len(overheads)}; "
                "the lists must pair line by line"
            )
        records = [
            PairRecord(str(i), sat, grd, street_fov_deg)
            for i, (grd, sat) in enumerate(zip(streets, overheads, strict=True))
        ]
        super().__init__(records, prep, augment, 0.0, seed)


def ground_table_rows(table: Path, columns: set[str]) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line number, key, row) of a world's `ground.csv`, after checking that it has `columns`
    (DatasetError naming the file otherwise). Numeric ids are zero-padded to the 7 digits of the
    CVUSA export, so keys match the pair records'."""
    with table.open(newline="") as fh:
        reader = csv.DictReader(fh)
        absent = columns - set(reader.fieldnames or ())
        if absent:
            raise DatasetError(f"{table} lacks column(s) {', '.join(sorted(absent))}")
        for lineno, row in enumerate(reader, start=2):
            key = row["id"].strip()
            yield lineno, key.zfill(7) if key.isdigit() else key, row


def read_world_photos(world_dir: str | Path) -> dict[str, tuple[Path, float]]:
    """Photo queries of a synthetic world: key -> (photo path, horizontal FOV in degrees).

    Reads `ground.csv` (columns id, lat, lon, heading_deg, fov_deg, file[, photo_file, split]):
    the photo is `photo_file` when that column exists, else `photos/<id>.jpg`; paths are
    relative to the world folder. Numeric ids are zero-padded to the 7 digits of the CVUSA export.
    """
    world = Path(world_dir)
    table = world / "ground.csv"
    if not table.is_file():
        raise DatasetError(f"photo queries need {table} (is {world} a synthetic world folder?)")
    photos: dict[str, tuple[Path, float]] = {}
    for lineno, key, row in ground_table_rows(table, {"id", "fov_deg"}):
        try:
            fov = float(row["fov_deg"])
        except ValueError as exc:
            raise DatasetError(f"{table}:{lineno}: bad fov_deg {row['fov_deg']!r}") from exc
        name = (row.get("photo_file") or "").strip() or f"photos/{key}.jpg"
        photos[key] = (world / name, fov)
    return photos
