"""VIGOR (Zhu, Yang, Chen, CVPR 2021): panoramas anywhere inside 640 px aerial tiles of four US cities.

Layout (`--data` names the VIGOR folder):

    splits/<City>/satellite_list.txt             one tile file name per line
    splits/<City>/same_area_balanced_train.txt   same-area protocol, train queries
    splits/<City>/same_area_balanced_test.txt    same-area protocol, test queries
    splits/<City>/pano_label_balanced.txt        cross-area protocol (all of a city's queries)
    <City>/panorama/<prefix>,<lat>,<lon>,.jpg    (or ground/<City>/...)
    <City>/satellite/satellite_<lat>_<lon>.png   (or satellite/<City>/...)

A label line is the panorama's name, then four tiles, each followed by its two pixel offsets:
the positive tile, then three semi-positive tiles (neighbours that also see the panorama). An
offset (d0, d1) places the panorama d0 pixels below (south of) and d1 pixels left of (west of)
the tile's centre, i.e. at row 320 + d0 and column 320 - d1 of the 640 x 640 tile (the
convention of the dataset's own code and of HC-Net's loader). Tiles are Web-Mercator images
at zoom 20, so a pixel spans `metres_per_pixel(lat)` metres (about 0.113 m in New York).

Protocols: same-area trains on `same_area_balanced_train.txt` of the four cities and tests on
their `same_area_balanced_test.txt` against the tiles of all four; cross-area trains on New
York and Seattle (`pano_label_balanced.txt`) and tests on San Francisco and Chicago against
those two cities' tiles. When `splits__corrected/` exists (the corrected labels used by
metre-level methods) it is read instead of `splits/`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import numpy as np

from model.config import Preprocessing
from model.data import DatasetError, PairDataset, PairOptions, PairRecord

PROTOCOLS = ("same-area", "cross-area")
ALL_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
CITIES: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("same-area", "train"): ALL_CITIES,
    ("same-area", "test"): ALL_CITIES,
    ("cross-area", "train"): ("NewYork", "Seattle"),
    ("cross-area", "test"): ("SanFrancisco", "Chicago"),
}
LABEL_FILES: Mapping[tuple[str, str], str] = {
    ("same-area", "train"): "same_area_balanced_train.txt",
    ("same-area", "test"): "same_area_balanced_test.txt",
    ("cross-area", "train"): "pano_label_balanced.txt",
    ("cross-area", "test"): "pano_label_balanced.txt",
}
SPLIT_DIRS = ("splits__corrected", "splits")
TILE_LIST = "satellite_list.txt"
TILE_PX = 640
ZOOM = 20
# Web Mercator: the equator's length over the 256 pixels of the zoom-0 world image.
_EQUATOR_M_PER_PX_Z0 = 2 * math.pi * 6378137.0 / 256


def metres_per_pixel(lat_deg: float | np.ndarray, zoom: int = ZOOM) -> float | np.ndarray:
    """Ground resolution of a Web-Mercator image at `zoom` and latitude `lat_deg`."""
    return _EQUATOR_M_PER_PX_Z0 * np.cos(np.radians(lat_deg)) / 2**zoom


def _world_px(lat: np.ndarray, lon: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 256.0 * 2**zoom
    phi = np.radians(lat)
    x = (np.asarray(lon) / 360.0 + 0.5) * scale
    y = (0.5 - np.log(np.tan(np.pi / 4 + phi / 2)) / (2 * np.pi)) * scale
    return x, y


def _latlon(x: np.ndarray, y: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 256.0 * 2**zoom
    lon = np.asarray(x) / scale * 360.0 - 180.0
    lat = np.degrees(2 * np.arctan(np.exp(np.pi * (1 - 2 * np.asarray(y) / scale))) - np.pi / 2)
    return lat, lon


def offset_latlon(
    lat: np.ndarray, lon: np.ndarray, d0: np.ndarray, d1: np.ndarray, zoom: int = ZOOM
) -> np.ndarray:
    """(n, 2) (lat, lon) of points d0 pixels south and d1 pixels west of tile centres (lat, lon)."""
    x, y = _world_px(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64), zoom)
    qlat, qlon = _latlon(x - np.asarray(d1, dtype=np.float64), y + np.asarray(d0, dtype=np.float64), zoom)
    return np.stack([qlat, qlon], axis=-1)


def tile_centre(name: str) -> tuple[float, float]:
    """(lat, lon) of a tile from its file name `satellite_<lat>_<lon>.png`."""
    parts = Path(name).stem.split("_")
    try:
        if len(parts) < 3:
            raise ValueError(name)
        return float(parts[-2]), float(parts[-1])
    except ValueError as exc:
        raise DatasetError(f"tile name {name!r} is not satellite_<lat>_<lon>.<ext>") from exc


def vigor_split_dir(root: Path) -> Path | None:
    """`splits__corrected/` or `splits/` under `root` when it holds a city's tile list."""
    for name in SPLIT_DIRS:
        folder = Path(root) / name
        if folder.is_dir() and any((d / TILE_LIST).is_file() for d in folder.iterdir() if d.is_dir()):
            return folder
    return None


def is_vigor_root(path: Path) -> bool:
    """Whether `path` is a VIGOR folder (splits/<City>/satellite_list.txt)."""
    return Path(path).is_dir() and vigor_split_dir(Path(path)) is not None


def _image_dir(root: Path, city: str, kind: str) -> Path:
    """<root>/<City>/<kind> of the original archive, or <root>/<kind'>/<City> (ground/satellite
    folders first, as some re-packagings have) when only that exists."""
    original = root / city / kind
    if original.is_dir():
        return original
    alt = root / ("ground" if kind == "panorama" else "satellite") / city
    return alt if alt.is_dir() else original


@dataclass(frozen=True)
class VigorLabel:
    """One label line: the panorama, its four tiles (gallery indices: positive, then three
    semi-positives) and their (d0, d1) pixel offsets (4, 2)."""

    city: str
    pano: str
    tiles: tuple[int, int, int, int]
    offsets: np.ndarray


def read_tile_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"VIGOR tile list not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"VIGOR tile list is empty: {path}")
    return names


def read_labels(path: Path, city: str, tile_index: Mapping[str, int]) -> list[VigorLabel]:
    """Label lines of `path` (tiles looked up in the city's `tile_index`); errors name file:line."""
    if not path.is_file():
        raise DatasetError(f"VIGOR label file not found: {path}")
    labels = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tok = line.split()
        if not tok:
            continue
        if len(tok) != 13:
            raise DatasetError(
                f"{path}:{lineno}: expected a panorama and 4 x (tile, d0, d1), got {len(tok)} fields"
            )
        tiles = []
        for name in tok[1::3]:
            if name not in tile_index:
                raise DatasetError(f"{path}:{lineno}: tile {name} is not in {city}'s {TILE_LIST}")
            tiles.append(tile_index[name])
        try:
            offsets = np.array([[float(tok[i + 1]), float(tok[i + 2])] for i in (1, 4, 7, 10)])
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: bad pixel offset ({exc})") from exc
        labels.append(VigorLabel(city, tok[0], (tiles[0], tiles[1], tiles[2], tiles[3]), offsets))
    return labels


def parse_data_spec(data: str | Path) -> tuple[Path, str | None]:
    """`DIR` or `DIR@same-area` / `DIR@cross-area` (a VIGOR protocol) -> (folder, protocol)."""
    text = str(data)
    for protocol in PROTOCOLS:
        suffix = "@" + protocol
        if text.endswith(suffix):
            return Path(text[: -len(suffix)]), protocol
    return Path(text), None


class VigorDataset(PairDataset):
    """VIGOR queries of `split` ("train"; "test", also called "val") under `protocol`.

    Each pair is a panorama and its positive tile (what training uses). For evaluation the
    gallery is every tile listed for the protocol's test (or train) cities: `gallery_paths`
    (m paths) with `gallery_latlon` (m, 2) centres from the file names. Per kept query:
    `positive` (n,), `semi_positive` (n, 3) gallery indices and `offsets` (n, 4, 2) pixels.
    Queries whose panorama or positive tile is missing are dropped at construction and listed
    in `missing` (a warning names them); tiles missing from the gallery are listed in
    `gallery_missing` and reported the same way by the evaluation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        protocol: str = "same-area",
        prep: Preprocessing | None = None,
        cities: Sequence[str] | None = None,
        **options: Unpack[PairOptions],
    ) -> None:
        if prep is None:
            raise ValueError("VigorDataset needs the model's Preprocessing (prep=...)")
        if protocol not in PROTOCOLS:
            raise DatasetError(f"unknown VIGOR protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        split = "test" if split == "val" else split
        if split not in ("train", "test"):
            raise DatasetError(f"unknown VIGOR split {split!r}; expected train or test (val = test)")
        self.root = Path(root)
        splits = vigor_split_dir(self.root)
        if splits is None:
            raise DatasetError(f"{self.root} is not a VIGOR folder (splits/<City>/{TILE_LIST})")
        self.split_dir = splits
        self.split, self.protocol = split, protocol
        self.cities = tuple(cities) if cities is not None else CITIES[(protocol, split)]
        self.gallery_paths: list[Path] = []
        names: list[str] = []
        labels: list[VigorLabel] = []
        panos: list[Path] = []
        for city in self.cities:
            tiles = read_tile_list(splits / city / TILE_LIST)
            sat_dir, pano_dir = (
                _image_dir(self.root, city, "satellite"),
                _image_dir(self.root, city, "panorama"),
            )
            offset = len(self.gallery_paths)
            index = {name: offset + i for i, name in enumerate(tiles)}
            if len(index) != len(tiles):
                raise DatasetError(f"{splits / city / TILE_LIST} lists a tile twice")
            self.gallery_paths.extend(sat_dir / name for name in tiles)
            names.extend(tiles)
            city_labels = read_labels(splits / city / LABEL_FILES[(protocol, split)], city, index)
            labels.extend(city_labels)
            panos.extend(pano_dir / lab.pano for lab in city_labels)
        self.gallery_latlon = np.array([tile_centre(n) for n in names], dtype=np.float64).reshape(-1, 2)
        self.gallery_missing = [p for p in self.gallery_paths if not p.is_file()]
        records = [
            PairRecord(f"{lab.city}/{lab.pano}", self.gallery_paths[lab.tiles[0]], pano)
            for lab, pano in zip(labels, panos, strict=True)
        ]
        position = {id(r): k for k, r in enumerate(records)}
        super().__init__(records, prep, **options)
        kept = [labels[position[id(r)]] for r in self.records]
        self.labels = kept
        self.positive = np.array([lab.tiles[0] for lab in kept], dtype=np.int64)
        self.semi_positive = np.array([lab.tiles[1:] for lab in kept], dtype=np.int64).reshape(-1, 3)
        self.offsets = np.array([lab.offsets for lab in kept], dtype=np.float64).reshape(-1, 4, 2)

    def query_latlon(self) -> np.ndarray:
        """(n, 2) true (lat, lon) of each kept query: its positive tile's centre moved by the offset."""
        centre = self.gallery_latlon[self.positive]
        return offset_latlon(centre[:, 0], centre[:, 1], self.offsets[:, 0, 0], self.offsets[:, 0, 1])
