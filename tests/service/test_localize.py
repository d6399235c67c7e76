"""POST /localize: ranking, kinds, k, timings, GeoJSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import service.flat_search
from service.main import create_app
from tests.support.service_world import PANO_TILE, PHOTO_TILE, World, panorama_bytes, photo_bytes

STAGES = {"decode", "preprocess", "queue", "forward", "search", "database", "total"}


def post(client: TestClient, data: bytes, name: str = "q.png", **params: object):
    return client.post("/localize", params=params, files={"image": (name, data, "application/octet-stream")})


def test_localize_panorama_ranks_planted_tile_first(client: TestClient, world: World) -> None:
    resp = post(client, panorama_bytes())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = world.tiles[PANO_TILE]
    top = body["candidates"][0]
    assert body["kind"] == "panorama"
    assert top["rank"] == 1
    assert top["tile_id"] == world.builds[body["build_id"]]["tile_ids"][PANO_TILE]
    # The planted vector is the query's own descriptor: cosine 1.
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    # lat/lon named explicitly and not swapped (the world is at ~45 N, 15 E).
    assert top["lat"] == pytest.approx(expected.lat, abs=1e-9)
    assert top["lon"] == pytest.approx(expected.lon, abs=1e-9)
    assert top["bbox"] == pytest.approx(list(expected.bbox), abs=1e-9)


def test_localize_photo_detected_from_aspect_ratio(client: TestClient, world: World) -> None:
    body = post(client, photo_bytes(), "q.jpg").json()
    assert body["kind"] == "photo"
    assert body["candidates"][0]["tile_id"] == world.builds[body["build_id"]]["tile_ids"][PHOTO_TILE]


def test_localize_kind_override_changes_preprocessing(client: TestClient, world: World) -> None:
    auto = post(client, photo_bytes(), "q.jpg").json()
    forced = post(client, photo_bytes(), "q.jpg", kind="panorama").json()
    assert forced["kind"] == "panorama"
    # As a stretched panorama the photo no longer yields the planted descriptor exactly.
    assert forced["candidates"][0]["score"] < auto["candidates"][0]["score"] - 1e-3


def test_localize_returns_k_sorted_candidates(client: TestClient, world: World) -> None:
    body = post(client, panorama_bytes(), k=7).json()
    cands = body["candidates"]
    assert body["k"] == 7
    assert [c["rank"] for c in cands] == list(range(1, 8))
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert len({c["tile_id"] for c in cands}) == 7


def test_localize_k_larger_than_index_returns_every_tile(client: TestClient, world: World) -> None:
    body = post(client, panorama_bytes(), k=100).json()
    assert len(body["candidates"]) == len(world.tiles)


def test_localize_reports_every_stage_time(client: TestClient) -> None:
    timings = post(client, panorama_bytes()).json()["timings_ms"]
    assert set(timings) == STAGES
    assert all(v >= 0 for v in timings.values())
    assert timings["forward"] > 0
    parts = sum(v for k, v in timings.items() if k != "total")
    assert timings["total"] >= parts * 0.99


def test_localize_bbox_is_west_south_east_north(client: TestClient) -> None:
    candidates = post(client, panorama_bytes()).json()["candidates"]
    assert candidates  # an empty answer would check nothing
    for c in candidates:
        west, south, east, north = c["bbox"]
        assert west < c["lon"] < east
        assert south < c["lat"] < north


@pytest.mark.parametrize("how", ["accept", "query"])
def test_localize_geojson_points_are_lon_lat(client: TestClient, world: World, how: str) -> None:
    files = {"image": ("q.png", panorama_bytes(), "image/png")}
    if how == "accept":
        resp = client.post("/localize", files=files, headers={"Accept": "application/geo+json"})
    else:
        resp = client.post("/localize", files=files, params={"format": "geojson"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/geo+json")
    body = resp.json()
    assert body["type"] == "FeatureCollection"
    first = body["features"][0]
    expected = world.tiles[PANO_TILE]
    assert first["type"] == "Feature"
    assert first["geometry"]["type"] == "Point"
    assert first["geometry"]["coordinates"] == pytest.approx([expected.lon, expected.lat], abs=1e-9)
    assert first["properties"]["rank"] == 1
    assert set(first["properties"]) >= {"rank", "tile_id", "lat", "lon", "score", "bbox"}
    assert body["build_id"] == post(client, panorama_bytes()).json()["build_id"]


def test_localize_json_format_wins_over_accept(client: TestClient) -> None:
    files = {"image": ("q.png", panorama_bytes(), "image/png")}
    resp = client.post("/localize?format=json", files=files, headers={"Accept": "application/geo+json"})
    assert resp.headers["content-type"].startswith("application/json")
    assert "candidates" in resp.json()


def test_localize_answers_the_same_with_the_two_pass_search(monkeypatch, world: World) -> None:
    narrowed: list[int] = []  # candidates the int8 pass left, per query
    first_pass = service.flat_search.FlatView._candidates

    def spy(view: service.flat_search.FlatView, q, k: int):
        out = first_pass(view, q, k)
        narrowed.extend(len(rows) for rows in out if rows is not None)
        return out

    monkeypatch.setattr(service.flat_search.FlatView, "_candidates", spy)
    answers: dict[str, list[list[tuple[int, float]]]] = {}
    for least in (2**62, 0):  # one float32 pass; int8 first pass + float32 candidates
        monkeypatch.setattr(service.flat_search, "MIN_VALUES_TWO_PASS", least)
        with TestClient(create_app(world.settings())) as app_client:
            assert app_client.get("/readyz").status_code == 200
            assert (app_client.app.state.cvm.store.require().flat.int8 is not None) == (least == 0)
            for name, data in (("q.png", panorama_bytes()), ("q.jpg", photo_bytes())):
                cands = post(app_client, data, name, k=3).json()["candidates"]
                answers.setdefault(name, []).append([(c["tile_id"], c["score"]) for c in cands])
    # The service searches the estimate's pool, more tiles than this 16-tile world holds, so the
    # int8 pass cannot narrow here (FlatView's narrowing is tested in test_flat_search.py); the
    # answers must be the same either way.
    assert all(n <= len(world.tiles) for n in narrowed)
    for one, two in answers.values():
        assert [t for t, _ in two] == [t for t, _ in one]
        assert [s for _, s in two] == pytest.approx([s for _, s in one], abs=1e-6)
