"""CVACT (Liu & Li, CVPR 2019): Canberra panoramas and aerial tiles with UTM positions.

Layout (as distributed; `--data` names the folder that holds `ACT_data.mat`):

    ACT_data.mat                  panoIds (N ids), utm (N, 2) metres, trainSet.trainInd,
                                  valSet.valInd (CVACT_val), valSetAll.valInd (CVACT_test);
                                  indices are 1-based (MATLAB)
    ANU_data_small/streetview/<id>_grdView.jpg          train and val panoramas
    ANU_data_small/satview_polish/<id>_satView_polish.jpg
    ANU_data_test/streetview/...  ANU_data_test/satview_polish/...   the test split's images

A folder that holds `streetview/` and `satview_polish/` next to `ACT_data.mat` (no
`ANU_data_*` level) is read as well. `ACT_data.mat` may be a MATLAB v5 file (scipy) or v7.3
(HDF5, read with h5py when it is installed).

The panoramas are full spheres (2:1); like the published CVACT loaders, the ground image is
the middle half of its rows (the horizon band that CVUSA panoramas show). The aerial tile is
centred on the panorama, so a pair's UTM position is both the query's and the tile's centre.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from model.config import Preprocessing
from model.data import DatasetError, PairDataset, PairOptions, PairRecord
from model.transforms import SizeFor, input_size, load_image_rgb

ACT_DATA_FILE = "ACT_data.mat"
# split -> (struct, field) of its 1-based indices in ACT_data.mat
SPLIT_KEYS: Mapping[str, tuple[str, str]] = {
    "train": ("trainSet", "trainInd"),
    "val": ("valSet", "valInd"),
    "test": ("valSetAll", "valInd"),
}
# split -> the image folder of the public archive (tried first; else the root itself)
IMAGE_FOLDERS: Mapping[str, str] = {
    "train": "ANU_data_small",
    "val": "ANU_data_small",
    "test": "ANU_data_test",
}
GROUND_DIR, SATELLITE_DIR = "streetview", "satview_polish"
# OriCNN's Recall@Geo counts a retrieved tile within this many metres of the query as correct.
GEO_RECALL_RADIUS_M = 5.0


@dataclass(frozen=True)
class ActData:
    """Contents of ACT_data.mat: pano ids (N), UTM positions (N, 2) metres, 0-based split indices."""

    pano_ids: list[str]
    utm: np.ndarray
    splits: dict[str, np.ndarray]


def is_cvact_root(path: Path) -> bool:
    """Whether `path` holds ACT_data.mat."""
    return (Path(path) / ACT_DATA_FILE).is_file()


def _strings(value: Any, path: Path) -> list[str]:
    """A MATLAB char matrix (loaded as an (N,) str array) or cell array of strings -> list."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    if arr.dtype == object:
        return [str(np.asarray(s).reshape(-1)[0]).strip() for s in arr.reshape(-1)]
    raise DatasetError(f"{path}: panoIds is not a list of strings (dtype {arr.dtype})")


def _read_v5(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    data = loadmat(str(path))
    out: dict[str, Any] = {}
    for key in ("panoIds", "utm"):
        if key not in data:
            raise DatasetError(f"{path}: no '{key}' variable (is it CVACT's ACT_data.mat?)")
        out[key] = data[key]
    for split, (struct, field) in SPLIT_KEYS.items():
        if struct not in data:
            continue
        rec = data[struct]
        if rec.dtype.names is None or field not in rec.dtype.names:
            raise DatasetError(f"{path}: '{struct}' has no field '{field}'")
        out[split] = np.asarray(rec[field].reshape(-1)[0])
    return out


def _read_v73(path: Path) -> dict[str, Any]:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py ships with the dev tools
        raise DatasetError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py") from exc
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key in ("panoIds", "utm"):
            if key not in f:
                raise DatasetError(f"{path}: no '{key}' variable (is it CVACT's ACT_data.mat?)")
        ids = f["panoIds"]
        if ids.dtype == object:  # cell array: references to char arrays
            out["panoIds"] = np.array(
                ["".join(map(chr, np.asarray(f[ref]).reshape(-1))) for ref in np.asarray(ids).reshape(-1)]
            )
        else:  # char matrix, stored transposed: one column per id
            chars = np.asarray(ids)
            out["panoIds"] = np.array(["".join(map(chr, col)).rstrip("\x00 ") for col in chars.T])
        out["utm"] = np.asarray(f["utm"]).T
        for split, (struct, field) in SPLIT_KEYS.items():
            if struct in f and field in f[struct]:
                out[split] = np.asarray(f[struct][field]).reshape(-1)
    return out


def read_act_data(path: str | Path) -> ActData:
    """Read and check ACT_data.mat (MATLAB v5, or v7.3 through h5py); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CVACT metadata not found: {path}")
    try:
        raw = _read_v5(path)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        try:
            raw = _read_v73(path)
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from exc
    except (ValueError, TypeError, OSError, IndexError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    ids = _strings(raw["panoIds"], path)
    utm = np.asarray(raw["utm"], dtype=np.float64)
    if utm.shape != (len(ids), 2):
        raise DatasetError(
            f"{path}: utm has shape {utm.shape}, expected ({len(ids)}, 2) for {len(ids)} panoIds"
        )
    splits: dict[str, np.ndarray] = {}
    for split, (struct, field) in SPLIT_KEYS.items():
        if split not in raw:
            continue
        one_based = np.asarray(raw[split], dtype=np.float64).reshape(-1)
        if one_based.size and (
            np.any(one_based != np.round(one_based)) or one_based.min() < 1 or one_based.max() > len(ids)
        ):
            raise DatasetError(f"{path}: {struct}.{field} holds indices outside 1..{len(ids)}")
        splits[split] = one_based.astype(np.int64) - 1
    return ActData(ids, utm, splits)


def cvact_image_root(root: Path, split: str) -> Path:
    """The folder holding `streetview/` and `satview_polish/` for `split`."""
    folder = Path(root) / IMAGE_FOLDERS[split]
    return folder if (folder / GROUND_DIR).is_dir() or (folder / SATELLITE_DIR).is_dir() else Path(root)


def neighbours_within(xy: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """For each point of `xy` (n, 2) metres, the indices of the other points within `radius_m`
    (grid hashing, so the 92,802 test positions need no n x n matrix)."""
    xy = np.asarray(xy, dtype=np.float64)
    cells = np.floor(xy / radius_m).astype(np.int64)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (cx, cy) in enumerate(cells):
        buckets.setdefault((int(cx), int(cy)), []).append(i)
    out = []
    for i, (cx, cy) in enumerate(cells):
        near = [
            j
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for j in buckets.get((int(cx) + dx, int(cy) + dy), ())
            if j != i and np.hypot(*(xy[j] - xy[i])) <= radius_m
        ]
        out.append(np.asarray(sorted(near), dtype=np.int64))
    return out


class CVACTDataset(PairDataset):
    """CVACT pairs of `split` ("train", "val" = CVACT_val, "test" = CVACT_test) under `root`.

    `utm` holds the (n, 2) UTM position (metres) of each kept pair, in dataset order. Pairs
    whose images are missing are dropped at construction and listed in `missing` (a warning
    names them), as for every `PairDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        prep: Preprocessing | None = None,
        **options: Unpack[PairOptions],
    ) -> None:
        if prep is None:
            raise ValueError("CVACTDataset needs the model's Preprocessing (prep=...)")
        if split not in SPLIT_KEYS:
            raise DatasetError(f"unknown CVACT split {split!r}; expected one of {', '.join(SPLIT_KEYS)}")
        self.root = Path(root)
        meta = read_act_data(self.root / ACT_DATA_FILE)
        if split not in meta.splits:
            struct, field = SPLIT_KEYS[split]
            raise DatasetError(f"{self.root / ACT_DATA_FILE} has no {struct}.{field} (the {split} split)")
        rows = meta.splits[split]
        images = cvact_image_root(self.root, split)
        records = [
            PairRecord(
                meta.pano_ids[i],
                images / SATELLITE_DIR / f"{meta.pano_ids[i]}_satView_polish.jpg",
                images / GROUND_DIR / f"{meta.pano_ids[i]}_grdView.jpg",
            )
            for i in rows
        ]
        position = {id(r): k for k, r in enumerate(records)}
        super().__init__(records, prep, **options)
        self.split = split
        self.utm = meta.utm[rows][[position[id(r)] for r in self.records]]

    def ground_fit(self, rec: PairRecord) -> SizeFor:
        # Twice the rows: only the middle half of the panorama is kept (`load_rgb`).
        def fit(w: int, h: int) -> tuple[int, int]:
            width, height = input_size(w, h, self.prep, "panorama")
            return width, 2 * height

        return fit

    def load_rgb(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.records[index]
        pano = load_image_rgb(rec.grd, fit=self.ground_fit(rec))
        return middle_rows(pano), load_image_rgb(rec.sat)


def middle_rows(pano: np.ndarray) -> np.ndarray:
    """The middle half of a full-sphere panorama's rows (rows h/4 to 3h/4)."""
    h = pano.shape[0]
    return np.ascontiguousarray(pano[h // 4 : h // 4 + max(1, h // 2)])
