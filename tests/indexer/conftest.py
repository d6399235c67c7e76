"""Fixtures of the indexer tests: tiny checkpoints, generated GeoTIFFs, SQLite and PostgreSQL URLs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rasterio.transform import Affine

from tests.support.rasters import (
    random_pixels,
    write_geotiff,
    write_mercator_cog,
    write_utm_with_nodata,
    write_world_degrees,
)
from tests.support.tiny import tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 px satellite input covering 70 m (fast)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny32.pt", sat_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_weights_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 px input as the cpu preset: 70 m tiles of a 0.6 m raster are read at full resolution."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny128.pt", sat_size=128, seed=1)


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as tiny_weights, other random weights (another sha256)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "other32.pt", sat_size=32, seed=7)


@pytest.fixture(scope="session")
def mercator_cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated Cloud-Optimized GeoTIFF with cogeo.tif's georeferencing (Web Mercator, ~612 m)."""
    return write_mercator_cog(tmp_path_factory.mktemp("rasters") / "mercator-cog.tif")


@pytest.fixture(scope="session")
def utm_nodata_raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated raster with RGB.byte.tif's georeferencing (UTM 18N, 300 m) and nodata corners."""
    return write_utm_with_nodata(tmp_path_factory.mktemp("rasters") / "utm-nodata.tif")


@pytest.fixture(scope="session")
def degrees_raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated whole-world raster in degrees with world.rgb.tif's georeferencing."""
    return write_world_degrees(tmp_path_factory.mktemp("rasters") / "world-degrees.tif")


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
        data = random_pixels(bands, size, dtype, seed)
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
