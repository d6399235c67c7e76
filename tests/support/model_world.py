"""A CVUSA-shaped evaluation world for the model tests: a few generated pairs, ground.csv, photos."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

N_VAL = 6


def make_world(root: Path, n_train: int = 4, n_val: int = N_VAL) -> Path:
    """A synthetic-world-shaped folder: cvusa/ (CVUSA layout), ground.csv and photos/."""
    rng = np.random.default_rng(1)
    cvusa = root / "cvusa"
    for d in ("bingmap/19", "streetview/panos", "splits", "split_locations"):
        (cvusa / d).mkdir(parents=True, exist_ok=True)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    ids = [f"{i + 1:07d}" for i in range(n_train + n_val)]
    for key in ids:
        colour = rng.integers(0, 256, 3)
        for path, shape in (
            (cvusa / f"bingmap/19/{key}.jpg", (40, 40)),
            (cvusa / f"streetview/panos/{key}.jpg", (20, 110)),
            (root / f"photos/{key}.jpg", (30, 40)),
        ):
            cv2.imwrite(str(path), np.clip(colour + rng.normal(0, 10, (*shape, 3)), 0, 255).astype(np.uint8))
    line = "bingmap/19/{0}.jpg,streetview/panos/{0}.jpg,streetview/annotations/{0}.png\n"
    (cvusa / "splits/train-19zl.csv").write_text("".join(line.format(k) for k in ids[:n_train]))
    (cvusa / "splits/val-19zl.csv").write_text("".join(line.format(k) for k in ids[n_train:]))
    # Pair i sits 0.001 degree of latitude north of pair i-1.
    (cvusa / "split_locations/all.csv").write_text(
        "".join(f"{45 + i * 1e-3},7.0,{45 + i * 1e-3},7.0,0\n" for i in range(len(ids)))
    )
    with (root / "ground.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "lat", "lon", "heading_deg", "fov_deg", "file", "photo_file", "split"])
        for i, key in enumerate(ids):
            split = "train" if i < n_train else "val"
            w.writerow([key, 45 + i * 1e-3, 7.0, 10.0, 72.0, f"ground/{key}.jpg", f"photos/{key}.jpg", split])
    return root
