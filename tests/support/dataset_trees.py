"""Small CVACT and VIGOR folders in the datasets' own layouts, with known tile positions.

`vigor_tree` writes a VIGOR folder whose tiles are named after chosen centres, with a same-area
test label per city; `cvact_tree` writes ACT_data.mat (MATLAB v5, the real variable names) with
chosen UTM positions and the images of every pair. Images are small random PNGs unless a real
sample is linked in (`link`: {file name: real file}, symlinked, never copied).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import scipy.io

# Tile centres (lat, lon) per VIGOR city: real latitudes, so each city's resolution differs.
VIGOR_CENTRES: dict[str, list[tuple[float, float]]] = {
    "NewYork": [(40.713, -74.006), (40.7136, -74.006), (40.713, -74.0068)],
    "Seattle": [(47.606, -122.332), (47.6066, -122.332)],
    "SanFrancisco": [(37.7749, -122.4194)],
    "Chicago": [(41.8781, -87.6298)],
}
# CVACT: Canberra positions in UTM zone 55 south (easting, northing), metres.
CVACT_IDS = [
    "__-DFIFxvZBCn1873qkqXA",
    "__-HLmaxPZ3bHbiNhPzi0w",
    "__0GfgYPzGYvz-yEi0DDdg",
    "__0Y7ByQ93HhK2HePuNZ-g",
]
CVACT_UTM = np.array(
    [[692000.0, 6091000.0], [692073.0, 6091000.0], [692500.0, 6091500.0], [689000.0, 6095000.0]]
)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    path.write_bytes(buf.tobytes())


def _image(path: Path, shape: tuple[int, int], rng: np.random.Generator, link: Mapping[str, Path]) -> None:
    if path.name in link:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link[path.name], path)
    else:
        write_png(path, rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


def vigor_tile_name(lat: float, lon: float) -> str:
    return f"satellite_{lat}_{lon}.png"


def vigor_tree(
    root: Path,
    centres: Mapping[str, Sequence[tuple[float, float]]] = VIGOR_CENTRES,
    link: Mapping[str, Path] | None = None,
    tile_px: int = 64,
) -> Path:
    """A VIGOR folder (original layout): tiles at `centres`, one panorama per city in the same-area
    train and test labels (positive: the city's first tile, offset (0, 0))."""
    link = link or {}
    rng = np.random.default_rng(0)
    for city, places in centres.items():
        names = [vigor_tile_name(lat, lon) for lat, lon in places]
        split = root / "splits" / city
        split.mkdir(parents=True)
        (split / "satellite_list.txt").write_text("".join(n + "\n" for n in names))
        four = (names * 4)[:4]
        for label, prefix in (("same_area_balanced_train.txt", "tr"), ("same_area_balanced_test.txt", "te")):
            pano = f"{prefix}_{city},{places[0][0]},{places[0][1]},.jpg"
            (split / label).write_text(" ".join([pano] + [f"{t} 0.0 0.0" for t in four]) + "\n")
            _image(root / city / "panorama" / pano, (tile_px // 2, tile_px), rng, link)
        (split / "pano_label_balanced.txt").write_text((split / "same_area_balanced_test.txt").read_text())
        for name in names:
            _image(root / city / "satellite" / name, (tile_px, tile_px), rng, link)
    return root


def cvact_tree(
    root: Path,
    ids: Sequence[str] = CVACT_IDS,
    utm: np.ndarray = CVACT_UTM,
    link: Mapping[str, Path] | None = None,
    tile_px: int = 48,
) -> Path:
    """A CVACT folder: ACT_data.mat (train = pairs 1, 3; val = 4, 2; test = all) and the images of
    every pair under ANU_data_small/ (train, val) and ANU_data_test/ (test)."""
    link = link or {}
    content: dict[str, object] = {
        "panoIds": np.array(list(ids)),
        "utm": np.asarray(utm, dtype=np.float64)[: len(ids)],
        "trainSet": {"trainInd": np.array([1, 3], dtype=np.float64).reshape(-1, 1)},
        "valSet": {"valInd": np.array([4, 2], dtype=np.float64).reshape(-1, 1)},
        "valSetAll": {"valInd": np.arange(1, len(ids) + 1, dtype=np.float64).reshape(-1, 1)},
    }
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(root / "ACT_data.mat"), content)
    rng = np.random.default_rng(1)
    for folder in ("ANU_data_small", "ANU_data_test"):
        for pid in ids:
            _image(root / folder / "streetview" / f"{pid}_grdView.jpg", (tile_px, 2 * tile_px), rng, link)
            _image(
                root / folder / "satview_polish" / f"{pid}_satView_polish.jpg", (tile_px, tile_px), rng, link
            )
    return root
