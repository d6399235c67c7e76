"""Fixtures of the indexer tests: tiny checkpoints, generated GeoTIFFs, SQLite and PostgreSQL URLs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from model.checkpoint import save_checkpoint
from model.config import preset_config
from model.cvm_net import build_model
from tests.pg import postgres_server, postgres_url  # noqa: F401  (fixtures)


def _tiny_checkpoint(path: Path, sat_size: int, seed: int) -> Path:
    """A random-weight CVM-Net-I: cpu preset shrunk to 8 channels, K=4, 16-d output."""
    torch.manual_seed(seed)
    cpu = preset_config("cvm-net-i", "cpu")
    cfg = replace(cpu, preprocessing=replace(cpu.preprocessing, sat_size=sat_size), width_div=64)
    cfg = replace(cfg, num_clusters=4, out_dim=16)
    save_checkpoint(path, build_model(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 px satellite input covering 70 m (fast)."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny32.pt", 32, seed=0)


@pytest.fixture(scope="session")
def tiny_weights_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 px input as the cpu preset: 70 m tiles of a 0.6 m raster are read at full resolution."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny128.pt", 128, seed=1)


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as tiny_weights, other random weights (another sha256)."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("weights") / "other32.pt", 32, seed=7)


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str | None,
    transform: Affine | None,
    nodata: float | None = None,
) -> Path:
    """Write (bands, h, w) `data` as a tiled GeoTIFF (its dtype kept)."""
    profile: dict[str, Any] = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rasters without CRS on purpose
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_raster(name, bands=3, size=(h, w), gsd=0.5, crs="EPSG:32633", dtype=uint8, ...)."""

    def make(
        name: str,
        bands: int = 3,
        size: tuple[int, int] = (300, 300),
        gsd: float = 0.5,
        crs: str | None = "EPSG:32633",
        origin: tuple[float, float] = (500000.0, 5000000.0),
        dtype: str = "uint8",
        nodata: float | None = None,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        top = 255 if dtype == "uint8" else 4000
        data = rng.integers(1, top, size=(bands, *size)).astype(dtype)
        transform = Affine(gsd, 0, origin[0], 0, -gsd, origin[1]) if crs is not None else None
        return write_geotiff(tmp_path / name, data, crs, transform, nodata)

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalogue database: SQLite file, or a database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "indexes"
