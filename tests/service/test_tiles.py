"""GET /tiles/{id} and /tiles/{id}/image."""

from __future__ import annotations

import io
import json
import shutil

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from storage.db import make_engine, session_scope
from storage.models import Tile
from tests.support.service_world import EPSG, GSD_M, TILE_PX, World, tile_colour


def _tile_id(world: World, index: int) -> int:
    return world.builds[next(iter(world.builds))]["tile_ids"][index]


def test_get_tile_metadata(client: TestClient, world: World) -> None:
    spec = world.tiles[6]
    resp = client.get(f"/tiles/{_tile_id(world, 6)}")
    assert resp.status_code == 200
    body = resp.json()
    assert body["lat"] == pytest.approx(spec.lat, abs=1e-9)
    assert body["lon"] == pytest.approx(spec.lon, abs=1e-9)
    assert body["bbox"] == pytest.approx(list(spec.bbox), abs=1e-9)
    assert body["footprint"] == spec.footprint
    assert body["crs"] == f"EPSG:{EPSG}"
    assert body["gsd_m"] == GSD_M
    assert body["size_m"] == TILE_PX * GSD_M
    assert body["window"] == [spec.col * TILE_PX, spec.row * TILE_PX, TILE_PX, TILE_PX]
    assert body["build_id"] == next(iter(world.builds))
    assert body["image_url"] == f"/tiles/{body['tile_id']}/image"
    # The file's name, never the server's folders.
    assert body["source"] == world.raster.name


@pytest.mark.parametrize("index", [0, 6, 9, 15])
def test_get_tile_image_is_its_window(client: TestClient, world: World, index: int) -> None:
    spec = world.tiles[index]
    resp = client.get(f"/tiles/{_tile_id(world, index)}/image")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    assert img.shape == (256, 256, 3)
    # Each tile of the raster is one solid colour, asymmetric in row/col: a wrong or transposed
    # window would show another colour.
    assert np.abs(img.reshape(-1, 3).mean(axis=0) - tile_colour(spec.row, spec.col)).max() < 1.0


def test_get_tile_image_of_precut_tile(fresh_world: World, tmp_path) -> None:
    world = fresh_world
    tile_id = _tile_id(world, 3)
    path = tmp_path / "precut.png"
    cv2.imwrite(str(path), np.full((70, 70, 3), (30, 60, 90), np.uint8))  # BGR on disk
    engine = make_engine(world.db_url)
    with session_scope(engine) as session:
        tile = session.get(Tile, tile_id)
        tile.source, tile.col_off, tile.row_off, tile.width, tile.height = str(path), None, None, None, None
    engine.dispose()
    with TestClient(create_app(world.settings(tile_image_px=64))) as client:
        meta = client.get(f"/tiles/{tile_id}").json()
        img = np.asarray(Image.open(io.BytesIO(client.get(f"/tiles/{tile_id}/image").content)).convert("RGB"))
    assert meta["window"] is None
    assert img.shape == (64, 64, 3)
    assert tuple(img[32, 32]) == (90, 60, 30)  # RGB


def test_get_tile_image_missing_source_is_404(fresh_world: World) -> None:
    world = fresh_world
    with TestClient(create_app(world.settings())) as client:
        shutil.move(world.raster, world.root / "moved.tif")
        resp = client.get(f"/tiles/{_tile_id(world, 0)}/image")
        healthy = client.get("/healthz").status_code
    assert resp.status_code == 404
    assert "no longer exists" in resp.json()["detail"]
    assert world.raster.name in resp.json()["detail"]
    assert str(world.raster.parent) not in resp.json()["detail"]
    assert healthy == 200


def test_get_tile_of_inactive_build_from_catalogue(fresh_world: World) -> None:
    world = fresh_world
    first = next(iter(world.builds))
    second = world.add_build({}, activate_it=True, seed=3)
    with TestClient(create_app(world.settings())) as client:
        old_id = world.builds[first]["tile_ids"][4]
        body = client.get(f"/tiles/{old_id}").json()
    assert body["build_id"] == first
    assert second != first
    assert json.dumps(body["footprint"]) == json.dumps(world.tiles[4].footprint)


@pytest.mark.parametrize("path", ["/tiles/{}", "/tiles/{}/image"])
@pytest.mark.parametrize("tile_id", [2**63, 2**64 + 5, 10**30])
def test_ids_beyond_64_bits_are_a_clear_422(client: TestClient, path: str, tile_id: int) -> None:
    resp = client.get(path.format(tile_id))
    assert resp.status_code == 422
    assert "tile_id" in resp.json()["detail"]


def test_largest_64_bit_id_is_a_404(client: TestClient) -> None:
    resp = client.get(f"/tiles/{2**63 - 1}")
    assert resp.status_code == 404 and "no tile with id" in resp.json()["detail"]


@pytest.mark.parametrize("raw", ["9%C2%85", "%D9%A3", "+5", "%205"])
def test_ids_that_are_not_ascii_digits_are_a_422(client: TestClient, raw: str) -> None:
    # Python's int() reads "9\x85" as 9 and "٣" as 3: such ids must not reach a tile.
    for path in (f"/tiles/{raw}", f"/tiles/{raw}/image"):
        resp = client.get(path)
        assert resp.status_code == 422, (path, resp.text)
        assert "0-9" in resp.json()["detail"]
