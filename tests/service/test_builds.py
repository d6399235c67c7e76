"""GET /builds/active, /builds/{id}/overview.png, /builds/{id}/coverage, /favicon.ico, and
POST /localize?heat=N: what the map page draws."""

from __future__ import annotations

import io
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from pyproj import Transformer

from service.main import create_app
from storage.overview import OVERVIEW_JSON, OVERVIEW_PNG
from tests.support.service_world import GRID, PANO_TILE, World, panorama_bytes, tile_colour


def _inside(point: tuple[float, float], ring: list[list[float]]) -> bool:
    """Even-odd rule."""
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def test_active_build_names_its_overview_and_coverage(client: TestClient, world: World) -> None:
    build = next(iter(world.builds))
    body = client.get("/builds/active").json()
    assert body["build_id"] == build and body["n_tiles"] == GRID * GRID
    west = min(t.bbox[0] for t in world.tiles)
    north = max(t.bbox[3] for t in world.tiles)
    assert body["bbox"][0] == round(west, 7) and body["bbox"][3] == round(north, 7)
    assert body["coverage_url"] == f"/builds/{build}/coverage"
    overview = body["overview"]
    assert overview["url"] == f"/builds/{build}/overview.png"
    png = client.get(overview["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.content)))
    assert image.shape == (overview["height"], overview["width"], 4)
    # Each tile's centre, placed by the answered bounds in Web Mercator, has the tile's colour.
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    w, s, e, n = overview["bounds"]
    (x0, y0), (x1, y1) = to_merc.transform(w, n), to_merc.transform(e, s)
    for t in world.tiles:
        x, y = to_merc.transform(t.lon, t.lat)
        col = int((x - x0) / (x1 - x0) * image.shape[1])
        row = int((y0 - y) / (y0 - y1) * image.shape[0])
        assert tuple(image[row, col]) == (*tile_colour(t.row, t.col), 255)


def test_coverage_is_the_tiles_area(client: TestClient, world: World) -> None:
    build = next(iter(world.builds))
    resp = client.get(f"/builds/{build}/coverage")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/geo+json"
    feature = resp.json()
    assert feature["type"] == "Feature" and feature["properties"]["n_tiles"] == GRID * GRID
    polygons = feature["geometry"]["coordinates"]
    assert feature["geometry"]["type"] == "MultiPolygon" and len(polygons) == 1
    ring = polygons[0][0]
    assert len(ring) == 5  # the 4 x 4 tiles merge into one rectangle
    for t in world.tiles:
        assert _inside((t.lon, t.lat), ring)
    west, south, east, north = feature["bbox"]
    assert not _inside((west - (east - west) * 0.05, (south + north) / 2), ring)


def test_coverage_traces_holes_counterclockwise_exteriors(fresh_world: World) -> None:
    from service.coverage import coverage_of

    boxes = np.array([t.bbox for i, t in enumerate(fresh_world.tiles) if i != PANO_TILE])
    geometry = coverage_of(boxes).geometry
    ((outer, hole),) = geometry["coordinates"]

    def area(ring: list[list[float]]) -> float:
        return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False)) / 2

    assert area(outer) > 0 > area(hole)  # RFC 7946: exterior counterclockwise, holes clockwise
    missing = fresh_world.tiles[PANO_TILE]
    assert _inside((missing.lon, missing.lat), hole)
    assert all(not _inside((t.lon, t.lat), hole) for t in fresh_world.tiles if t is not missing)


def test_unknown_build_and_build_without_overview(fresh_world: World) -> None:
    second = fresh_world.add_build({}, activate_it=False, seed=3)
    folder = fresh_world.builds[second]["folder"]
    (folder / OVERVIEW_PNG).unlink()
    (folder / OVERVIEW_JSON).unlink()
    with TestClient(create_app(fresh_world.settings())) as client:
        assert client.get("/builds/999/coverage").status_code == 404
        assert client.get("/builds/999/overview.png").json()["detail"] == "no build with id 999"
        missing = client.get(f"/builds/{second}/overview.png")
        assert missing.status_code == 404 and "no overview" in missing.json()["detail"]
        assert client.get(f"/builds/{second}/coverage").json()["properties"]["build_id"] == second
        assert client.get("/builds/2147483648/coverage").status_code == 422
        fresh_world.activate(second)
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["build_id"] != second and time.monotonic() < deadline:
            time.sleep(0.05)
        body = client.get("/builds/active").json()
        assert body["build_id"] == second and body["overview"] is None


def test_favicon(client: TestClient) -> None:
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(resp.content)).format == "ICO"


def test_localize_heat_is_the_same_search_best_first(client: TestClient, world: World) -> None:
    files = {"image": ("pano.png", panorama_bytes(), "image/png")}
    plain = client.post("/localize", files=files).json()
    assert plain["heat"] == []
    body = client.post("/localize?k=3&heat=10", files=files).json()
    heat = body["heat"]
    assert len(heat) == 10 and len(body["candidates"]) == 3
    scores = [p[2] for p in heat]
    assert scores == sorted(scores, reverse=True)
    for c, (lon, lat, score) in zip(body["candidates"], heat, strict=False):
        assert (lon, lat) == (round(c["lon"], 7), round(c["lat"], 7)) and score == round(c["score"], 6)
    best = world.tiles[PANO_TILE]
    assert heat[0][:2] == [round(best.lon, 7), round(best.lat, 7)] and heat[0][2] > 0.999
    everything = client.post("/localize?heat=2000", files=files).json()["heat"]
    assert len(everything) == GRID * GRID  # the whole index when N exceeds it
    geo = client.post("/localize?heat=4&format=geojson", files=files).json()
    assert geo["type"] == "FeatureCollection" and geo["heat"] == heat[:4]
    assert client.post("/localize?heat=2001", files=files).status_code == 422
