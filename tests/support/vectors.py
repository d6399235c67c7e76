"""Descriptor-like vectors and tile places for index and search tests."""

from __future__ import annotations

import numpy as np

from service.catalog import TilePlace


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors on a low-dimensional manifold with small noise, as image descriptors are."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    x = np.tanh(z @ rng.standard_normal((6, d))) + 0.05 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def random_places(n: int, rng: np.random.Generator, ids: np.ndarray) -> dict[int, TilePlace]:
    """A place (centre and a small bbox) for each tile id, scattered over 2 x 2 degrees."""
    lats, lons = rng.uniform(44.0, 46.0, n), rng.uniform(14.0, 16.0, n)
    return {
        int(i): TilePlace(
            int(i), float(a), float(o), float(o) - 1e-3, float(a) - 1e-3, float(o) + 1e-3, float(a) + 1e-3
        )
        for i, a, o in zip(ids, lats, lons, strict=True)
    }
