"""The tables of a synthetic world: ground.csv, the CVUSA split files and world.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from synth.pairs import (
    AERIAL_M,
    AERIAL_PX,
    CVUSA_AERIAL_DIR,
    CVUSA_DIR,
    CVUSA_PANO_DIR,
    GROUND_DIR,
    PHOTO_SIZE,
    PHOTOS_DIR,
    PairSpec,
)
from synth.panorama import EYE_M, PANO_BOTTOM_DEG, PANO_SIZE, PANO_TOP_DEG
from synth.world import World

GROUND_CSV = "ground.csv"
WORLD_JSON = "world.json"
SPLITS_DIR = "splits"  # this and the next two: relative to CVUSA_DIR
LOCATIONS_DIR = "split_locations"
ANNOTATIONS_DIR = "streetview/annotations"  # named by the split files, never written
GROUND_COLUMNS = ("id", "lat", "lon", "heading_deg", "fov_deg", "file", "photo_file", "split")
FORMAT_VERSION = 1


def cvusa_line(pair_id: str) -> str:
    """One line of a CVUSA split file (no header): aerial, panorama and annotation paths."""
    return f"{CVUSA_AERIAL_DIR}/{pair_id}.jpg,{CVUSA_PANO_DIR}/{pair_id}.jpg,{ANNOTATIONS_DIR}/{pair_id}.png"


def write_tables(out: Path, specs: list[PairSpec]) -> None:
    """ground.csv, cvusa/splits/{train,val}-19zl.csv and cvusa/split_locations/all.csv."""
    specs = sorted(specs, key=lambda s: s.index)
    with open(out / GROUND_CSV, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(GROUND_COLUMNS)
        for s in specs:
            w.writerow(
                [
                    s.id,
                    f"{s.lat:.8f}",
                    f"{s.lon:.8f}",
                    f"{s.heading_deg:.2f}",
                    f"{s.fov_deg:.2f}",
                    f"{GROUND_DIR}/{s.id}.jpg",
                    f"{PHOTOS_DIR}/{s.id}.jpg",
                    s.split,
                ]
            )
    for split in ("train", "val"):
        lines = [cvusa_line(s.id) + "\n" for s in specs if s.split == split]
        (out / CVUSA_DIR / SPLITS_DIR / f"{split}-19zl.csv").write_text("".join(lines))
    rows = [f"{s.lat:.8f},{s.lon:.8f},{s.lat:.8f},{s.lon:.8f},0\n" for s in specs]
    (out / CVUSA_DIR / LOCATIONS_DIR / "all.csv").write_text("".join(rows))


def write_world_json(out: Path, world: World, n_pairs: int, val_fraction: float) -> None:
    """Parameters of the world, for people and for tools that read the directory."""
    frame = world.frame
    west, north = frame.west_north
    meta = {
        "format_version": FORMAT_VERSION,
        "seed": world.seed,
        "origin_lat": frame.origin_lat,
        "origin_lon": frame.origin_lon,
        "origin_is": "centre",
        "extent_m": frame.size_px * frame.gsd_m,
        "gsd_m": frame.gsd_m,
        "epsg": frame.epsg,
        "utm_west_m": west,
        "utm_north_m": north,
        "true_north_grid_deg": frame.true_north_grid_deg,
        "sun_azimuth_deg": world.sun_az_deg,
        "sun_elevation_deg": world.sun_el_deg,
        "pairs": n_pairs,
        "val_fraction": val_fraction,
        "aerial_m": AERIAL_M,
        "aerial_px": AERIAL_PX,
        "panorama": {
            "rows": PANO_SIZE[0],
            "cols": PANO_SIZE[1],
            "top_elevation_deg": PANO_TOP_DEG,
            "bottom_elevation_deg": PANO_BOTTOM_DEG,
            "north_col": 0.0,
            "eye_m": EYE_M,
        },
        "photo": {"rows": PHOTO_SIZE[0], "cols": PHOTO_SIZE[1]},
    }
    (out / WORLD_JSON).write_text(json.dumps(meta, indent=2) + "\n")
