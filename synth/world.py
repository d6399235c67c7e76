"""The generated world: its raster layers at the ground sampling distance (GSD) and its sun.

Layers (S = side in pixels, row 0 = north):
    cls     (S, S) uint8    ground class (see `layout` constants)
    height  (S, S) float32  height of the surface above the flat ground, metres
    albedo  (S, S, 3) uint8 colour of the top surface (RGB), unlit
    side    (S, S, 3) uint8 colour of vertical faces there (walls, crown sides, car bodies), lit
Both renderers (`ortho`, `panorama`) read only these layers, so the two views of one place show
the same objects but never share pixels. This module holds only the type; `generate` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from synth.geo import WorldFrame


@dataclass
class World:
    """Raster layers of one generated world plus its lighting."""

    frame: WorldFrame
    seed: int
    cls: np.ndarray
    height: np.ndarray
    albedo: np.ndarray
    side: np.ndarray
    sun_az_deg: float
    sun_el_deg: float

    @property
    def size_px(self) -> int:
        return int(self.cls.shape[0])

    @property
    def sun_vector(self) -> np.ndarray:
        """Unit vector towards the sun in (u east, v south, up) (3,)."""
        az, el = math.radians(self.sun_az_deg), math.radians(self.sun_el_deg)
        return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
