"""Rendering one pair: panorama, photo and aerial crop of one camera position, written as JPEGs.

Worker processes are spawned (not forked: a fork can inherit locked OpenCV or BLAS thread pools
from a busy parent and hang) and read the world's rasters from memory-mapped .npy files, so
they share them through the page cache instead of copying. Every pair draws its randomness
from (seed, pair index) alone, so the output does not depend on the number of workers or the
order they finish in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from synth import appearance
from synth.geo import WorldFrame
from synth.panorama import render_panorama, render_photo
from synth.world import World

AERIAL_M = 70.0  # side of an aerial crop on the ground, metres
AERIAL_PX = 256
PHOTO_SIZE = (240, 320)  # rows, cols (4:3)

# Folders of a pair's images, relative to the output directory; files are named <id>.jpg.
GROUND_DIR = "ground"  # panoramas
PHOTOS_DIR = "photos"
CVUSA_DIR = "cvusa"
CVUSA_AERIAL_DIR = "bingmap/19"  # this and the next: relative to CVUSA_DIR, as its split files name them
CVUSA_PANO_DIR = "streetview/panos"

_SHARED: dict[str, object] = {}


@dataclass(frozen=True)
class PairSpec:
    """One ground position: id (7 digits), index (id - 1), continuous pixel position in the
    ortho, WGS84 position, the photo's true heading and horizontal FOV (degrees), split."""

    id: str
    index: int
    x_px: float
    y_px: float
    lat: float
    lon: float
    heading_deg: float
    fov_deg: float
    split: str


def set_shared(world: World, ortho: np.ndarray, out: Path, seed: int) -> None:
    """Make the world visible to `render_pair` in this process."""
    _SHARED.update(world=world, ortho=ortho, out=out, seed=seed)


@dataclass(frozen=True)
class SharedWorld:
    """Picklable handle of a world whose rasters were saved as .npy files in `folder`."""

    folder: Path
    frame: WorldFrame
    seed: int
    sun_az_deg: float
    sun_el_deg: float
    out: Path


LAYERS = ("cls", "height", "albedo", "side")


def save_shared(world: World, ortho: np.ndarray, folder: Path, out: Path) -> SharedWorld:
    """Write the world's rasters to `folder` for worker processes to memory-map."""
    for name in LAYERS:
        np.save(folder / f"{name}.npy", getattr(world, name))
    np.save(folder / "ortho.npy", ortho)
    f = world.frame
    frame = WorldFrame(f.origin_lat, f.origin_lon, f.extent_m, f.gsd_m)
    return SharedWorld(folder, frame, world.seed, world.sun_az_deg, world.sun_el_deg, out)


def init_worker(shared: SharedWorld) -> None:
    """Pool initializer: memory-map the world saved by `save_shared`."""
    cv2.setNumThreads(1)  # parallelism comes from the worker processes
    layers = {name: np.load(shared.folder / f"{name}.npy", mmap_mode="r") for name in LAYERS}
    world = World(
        frame=shared.frame,
        seed=shared.seed,
        sun_az_deg=shared.sun_az_deg,
        sun_el_deg=shared.sun_el_deg,
        **layers,
    )
    set_shared(world, np.load(shared.folder / "ortho.npy", mmap_mode="r"), shared.out, shared.seed)


def aerial_crop(ortho: np.ndarray, x_px: float, y_px: float, gsd_m: float) -> np.ndarray:
    """North-up crop (AERIAL_PX, AERIAL_PX, 3) of `ortho` covering AERIAL_M x AERIAL_M metres centred
    on (x_px, y_px)."""
    scale = AERIAL_M / gsd_m / AERIAL_PX  # source pixels per output pixel
    # OpenCV puts pixel centres at integer coordinates, ours at +0.5: hence the -0.5.
    x0 = x_px - AERIAL_M / gsd_m / 2 + 0.5 * scale - 0.5
    y0 = y_px - AERIAL_M / gsd_m / 2 + 0.5 * scale - 0.5
    m = np.array([[scale, 0.0, x0], [0.0, scale, y0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(ortho, m, (AERIAL_PX, AERIAL_PX), flags=flags, borderMode=cv2.BORDER_REFLECT)


def render_pair(spec: PairSpec) -> str:
    """Render and write the pair's three images; returns its id."""
    world: World = _SHARED["world"]  # type: ignore[assignment]
    ortho: np.ndarray = _SHARED["ortho"]  # type: ignore[assignment]
    out: Path = _SHARED["out"]  # type: ignore[assignment]
    rng = np.random.default_rng([int(_SHARED["seed"]), 2, spec.index])  # type: ignore[call-overload]
    pano = render_panorama(world, spec.x_px, spec.y_px, appearance.sample_sky(rng))
    pano_jpg = _encode(pano, appearance.sample_style(rng, aerial=False), rng)
    photo = render_photo(
        world, spec.x_px, spec.y_px, spec.heading_deg, spec.fov_deg, PHOTO_SIZE, appearance.sample_sky(rng)
    )
    photo_jpg = _encode(photo, appearance.sample_style(rng, aerial=False), rng)
    crop = aerial_crop(ortho, spec.x_px, spec.y_px, world.frame.gsd_m)
    aerial_jpg = _encode(crop, appearance.sample_style(rng, aerial=True), rng)
    (out / GROUND_DIR / f"{spec.id}.jpg").write_bytes(pano_jpg)
    (out / CVUSA_DIR / CVUSA_PANO_DIR / f"{spec.id}.jpg").write_bytes(pano_jpg)
    (out / PHOTOS_DIR / f"{spec.id}.jpg").write_bytes(photo_jpg)
    (out / CVUSA_DIR / CVUSA_AERIAL_DIR / f"{spec.id}.jpg").write_bytes(aerial_jpg)
    return spec.id


def _encode(rgb: np.ndarray, style: appearance.ViewStyle, rng: np.random.Generator) -> bytes:
    return appearance.encode_jpeg(appearance.apply_style(rgb, style, rng), style.jpeg_quality)
