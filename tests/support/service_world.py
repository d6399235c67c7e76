"""A tiny, fully generated world for service tests: random-weight checkpoint, a UTM GeoTIFF whose
tiles are solid colours, a SQLite catalogue (migrated with Alembic) and FAISS flat indexes.

Each build plants the descriptor of a known query image at a chosen tile, so the expected answer
(tile id, its lat/lon from pyproj, score 1.0) is known without running the service.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import rasterio
import torch
from affine import Affine
from PIL import Image
from pyproj import Transformer

from model.checkpoint import file_sha256, save_checkpoint
from model.config import preset_config
from model.cvm_net import CVMNet, build_model
from model.transforms import load_image_rgb, prepare_ground, prepare_photo
from service.core.config import ServiceSettings
from storage.catalog import activate, insert_tiles
from storage.db import make_engine, session_scope, upgrade
from storage.models import Build
from storage.overview import OverviewSource, write_overview

EPSG = 32633  # UTM 33N: near 45 N, 15 E, so a swapped lat/lon is obvious
ORIGIN = (500_000.0, 5_000_000.0)  # top-left corner, metres
GSD_M = 0.5
TILE_PX = 16
GRID = 4  # GRID x GRID tiles
PANO_TILE = 5  # tile index whose vector is the panorama query's descriptor in a planted world
PHOTO_TILE = 10  # same for the photo query


def tile_colour(row: int, col: int) -> tuple[int, int, int]:
    """Distinct RGB per tile, asymmetric in row/col so a transposed window shows."""
    return (40 + 50 * row, 30 + 60 * col, 200 - 10 * row - 30 * col)


def panorama_bytes() -> bytes:
    """A 616x112 PNG panorama (aspect 5.5 -> kind "panorama")."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(112, 616, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def photo_bytes() -> bytes:
    """A 160x120 JPEG photo (aspect 1.33 -> kind "photo")."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class TileSpec:
    """Where a tile of the raster is: pixel window and geographic centre/bbox."""

    row: int
    col: int
    lat: float
    lon: float
    bbox: tuple[float, float, float, float]
    footprint: dict[str, Any]


@dataclass
class World:
    root: Path
    net: CVMNet
    weights: Path
    raster: Path
    tiles: list[TileSpec]
    db_url: str
    index_dir: Path
    builds: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights)

    def settings(self, **overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = dict(
            data_dir=self.root,
            database_url=self.db_url,
            index_dir=self.index_dir,
            weights=self.weights,
            build_poll_s=0.1,
            batch_window_ms=5.0,
        )
        values.update(overrides)
        return ServiceSettings(**values)

    def descriptor(self, data: bytes, kind: str) -> np.ndarray:
        """(d,) ground descriptor of a query image, computed with the model API directly."""
        rgb = load_image_rgb(data)
        prep = self.net.config.preprocessing
        x = prepare_ground(rgb, prep) if kind == "panorama" else prepare_photo(rgb, prep)
        with torch.inference_mode():
            return self.net.describe_ground(x[None]).numpy()[0].astype(np.float32)

    def add_build(self, planted: dict[int, np.ndarray], *, activate_it: bool = True, seed: int = 0) -> int:
        """A build over every tile: random unit vectors, except `planted` {tile index: vector}.

        Returns the build id; `self.builds[id]["tile_ids"][i]` is the catalogue id of tile i.
        """
        engine = make_engine(self.db_url)
        with session_scope(engine) as session:
            build = Build(
                status="complete",
                weights_path=str(self.weights),
                weights_sha256=self.weights_sha256,
                model_arch="cvm-net-i",
                embed_dim=self.net.config.descriptor_dim,
                n_tiles=len(self.tiles),
            )
            session.add(build)
            session.flush()
            ids = insert_tiles(session, [self._tile_row(build.id, t) for t in self.tiles])
            folder = self.index_dir / f"build-{build.id}"
            build.index_path = str(folder)
            write_index(folder, ids, self._vectors(planted, seed), self.weights_sha256, build.id)
            # The basemap of the map page, as `cvm-index build` writes it (indexer.overview).
            write_overview(folder, [OverviewSource(str(self.raster))])
            build_id = build.id
        if activate_it:
            self.activate(build_id)
        engine.dispose()
        self.builds[build_id] = {"tile_ids": ids, "folder": folder}
        return build_id

    def activate(self, build_id: int) -> None:
        engine = make_engine(self.db_url)
        with session_scope(engine) as session:
            activate(session, build_id)
        engine.dispose()

    def _vectors(self, planted: dict[int, np.ndarray], seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        vecs = rng.standard_normal((len(self.tiles), self.net.config.descriptor_dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for i, v in planted.items():
            vecs[i] = v
        return vecs

    def _tile_row(self, build_id: int, t: TileSpec) -> dict[str, Any]:
        west, south, east, north = t.bbox
        return dict(
            build_id=build_id,
            source=str(self.raster),
            col_off=float(t.col * TILE_PX),
            row_off=float(t.row * TILE_PX),
            width=float(TILE_PX),
            height=float(TILE_PX),
            crs=f"EPSG:{EPSG}",
            gsd_m=GSD_M,
            size_m=TILE_PX * GSD_M,
            lat=t.lat,
            lon=t.lon,
            west=west,
            south=south,
            east=east,
            north=north,
            footprint=json.dumps(t.footprint),
        )


def write_index(folder: Path, ids: list[int], vectors: np.ndarray, sha: str, build_id: int) -> None:
    """index.faiss (flat inner product, ids = tile ids) and index_meta.json, as the indexer writes."""
    folder.mkdir(parents=True, exist_ok=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
    faiss.write_index(index, str(folder / "index.faiss"))
    meta = {
        "factory": "IDMap2,Flat",
        "d": int(vectors.shape[1]),
        "metric": "inner_product",
        "ntotal": int(index.ntotal),
        "weights_sha256": sha,
        "build_id": build_id,
    }
    (folder / "index_meta.json").write_text(json.dumps(meta))


def write_raster(path: Path) -> list[TileSpec]:
    """A GRID x GRID mosaic of solid-colour tiles in UTM 33N; returns each tile's geography."""
    size = GRID * TILE_PX
    pixels = np.zeros((3, size, size), dtype=np.uint8)
    for r in range(GRID):
        for c in range(GRID):
            block = np.asarray(tile_colour(r, c), dtype=np.uint8)[:, None, None]
            pixels[:, r * TILE_PX : (r + 1) * TILE_PX, c * TILE_PX : (c + 1) * TILE_PX] = block
    transform = Affine(GSD_M, 0.0, ORIGIN[0], 0.0, -GSD_M, ORIGIN[1])  # north-up, top-left origin
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=f"EPSG:{EPSG}",
        transform=transform,
    ) as dst:
        dst.write(pixels)
    to_wgs84 = Transformer.from_crs(EPSG, 4326, always_xy=True)
    specs = []
    side = TILE_PX * GSD_M
    for r in range(GRID):
        for c in range(GRID):
            x0, y1 = ORIGIN[0] + c * side, ORIGIN[1] - r * side  # west, north edges in metres
            corners = [(x0, y1 - side), (x0 + side, y1 - side), (x0 + side, y1), (x0, y1)]
            lonlat = [to_wgs84.transform(x, y) for x, y in corners]
            lon, lat = to_wgs84.transform(x0 + side / 2, y1 - side / 2)
            lons, lats = [p[0] for p in lonlat], [p[1] for p in lonlat]
            ring = [list(p) for p in lonlat] + [list(lonlat[0])]
            specs.append(
                TileSpec(
                    r,
                    c,
                    lat,
                    lon,
                    (min(lons), min(lats), max(lons), max(lats)),
                    {"type": "Polygon", "coordinates": [ring]},
                )
            )
    return specs


def calibrate_batchnorm(net: CVMNet) -> None:
    """Fill BatchNorm running stats from noise: at init they are identity and a random network maps
    every image to nearly the same descriptor (cosine ~0.99), too close to tell queries apart."""
    g = torch.Generator().manual_seed(0)
    height, width = net.config.preprocessing.grd_size
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.embed_ground(torch.randn(8, 3, height, width, generator=g) * 60.0)
    net.eval()


def make_world(root: Path) -> World:
    """Checkpoint, raster and an empty migrated catalogue under `root` (no build yet)."""
    torch.manual_seed(0)
    net = build_model(preset_config("cvm-net-i", "cpu"))
    calibrate_batchnorm(net)
    weights = root / "weights.pt"
    save_checkpoint(weights, net)
    raster = root / "ortho.tif"
    tiles = write_raster(raster)
    db_url = f"sqlite:///{root / 'cvm.db'}"
    upgrade(db_url)
    return World(root, net, weights, raster, tiles, db_url, root / "indexes")


def planted_world(root: Path) -> World:
    """make_world plus one active build in which tile PANO_TILE holds the descriptor of
    `panorama_bytes()` and tile PHOTO_TILE that of `photo_bytes()`."""
    world = make_world(root)
    planted = {
        PANO_TILE: world.descriptor(panorama_bytes(), "panorama"),
        PHOTO_TILE: world.descriptor(photo_bytes(), "photo"),
    }
    world.add_build(planted)
    return world
