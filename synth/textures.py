"""Noise fields and colour palettes shared by the world builder and the renderers.

All noise is drawn from a caller-supplied `np.random.Generator`, so a world is a pure function
of its seed.
"""

from __future__ import annotations

import cv2
import numpy as np

# Base colours (RGB, 0-255) of ground classes; textures vary them per pixel.
GRASS_RGB = (92.0, 122.0, 62.0)
DRY_GRASS_RGB = (138.0, 136.0, 84.0)
BARE_RGB = (146.0, 124.0, 96.0)
WATER_RGB = (46.0, 72.0, 78.0)
ASPHALT_RGB = (88.0, 88.0, 90.0)
SIDEWALK_RGB = (168.0, 164.0, 156.0)
PARKING_RGB = (104.0, 104.0, 106.0)
MARKING_RGB = (226.0, 226.0, 214.0)

ROOF_PALETTE = np.array(
    [
        [150, 150, 148],  # concrete
        [96, 96, 100],  # dark membrane
        [168, 88, 64],  # terracotta tiles
        [124, 78, 62],  # brown tiles
        [196, 194, 186],  # light gravel
        [82, 96, 110],  # slate
        [120, 130, 118],  # green-grey metal
    ],
    dtype=np.float32,
)
WALL_PALETTE = np.array(
    [
        [214, 204, 182],  # beige plaster
        [232, 230, 222],  # white
        [168, 164, 158],  # grey concrete
        [156, 92, 70],  # brick
        [222, 206, 150],  # yellow plaster
        [190, 176, 160],  # sandstone
    ],
    dtype=np.float32,
)
CROWN_PALETTE = np.array(
    [[58, 92, 44], [72, 104, 50], [46, 78, 48], [90, 112, 56], [64, 86, 40], [112, 110, 52]],
    dtype=np.float32,
)
CAR_PALETTE = np.array(
    [[230, 230, 228], [30, 30, 34], [160, 162, 166], [110, 112, 118], [150, 30, 30], [40, 60, 120]],
    dtype=np.float32,
)


def value_noise(
    shape: tuple[int, int], cell_px: float, rng: np.random.Generator, octaves: int = 1
) -> np.ndarray:
    """Smooth random field of roughly unit standard deviation.

    shape: (rows, cols) of the result; cell_px: feature size of the coarsest octave in pixels;
    each further octave halves the feature size at half the amplitude. Returns float32 (rows, cols).
    """
    rows, cols = shape
    out = np.zeros(shape, dtype=np.float32)
    total = 0.0
    for octave in range(octaves):
        cell = cell_px / 2**octave
        amp = 0.5**octave
        if cell <= 1.0:
            layer: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
        else:
            grid = rng.standard_normal((int(rows / cell) + 3, int(cols / cell) + 3), dtype=np.float32)
            size = (int(np.ceil(grid.shape[1] * cell)), int(np.ceil(grid.shape[0] * cell)))
            # Cubic interpolation of unit-variance nodes has a lower variance between nodes.
            layer = cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[:rows, :cols] * np.float32(1.35)
        out += amp * layer
        total += amp * amp
    out /= np.float32(np.sqrt(total))
    return out


def jitter_colour(rgb: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """A colour near `rgb` (3,): each channel scaled by a shared and a per-channel random factor."""
    shared = rng.uniform(1.0 - spread, 1.0 + spread)
    per = rng.uniform(1.0 - spread / 2, 1.0 + spread / 2, size=3)
    return np.clip(np.asarray(rgb, dtype=np.float32) * shared * per, 0, 255).astype(np.float32)
