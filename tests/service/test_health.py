"""/healthz, /readyz, /metrics, /docs and the static page."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.main import create_app
from tests.support.service_world import World, make_world, panorama_bytes


def test_healthz_ok(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_readyz_reports_loaded_build(client: TestClient, world: World) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["build_id"] == next(iter(world.builds))
    assert body["ntotal"] == len(world.tiles)
    assert body["weights_sha256"] == world.weights_sha256


def test_readyz_503_without_active_build(tmp_path) -> None:
    world = make_world(tmp_path)  # catalogue migrated, no build
    with TestClient(create_app(world.settings())) as client:
        ready = client.get("/readyz")
        loc = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
        health = client.get("/healthz")
    assert ready.status_code == 503
    assert any("no active index build" in r for r in ready.json()["reasons"])
    assert loc.status_code == 503
    assert "no active index build" in loc.json()["detail"]
    assert health.status_code == 200


def test_readyz_503_when_database_unreachable(world: World) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    url = "postgresql+psycopg://cvm:secret@127.0.0.1:1/cvm?connect_timeout=2"
    with TestClient(create_app(world.settings(database_url=url))) as client:
        resp = client.get("/readyz")
        health = client.get("/healthz")
    assert resp.status_code == 503
    reasons = resp.json()["reasons"]
    assert any("catalogue database not reachable" in r for r in reasons), reasons
    assert all("secret" not in r for r in reasons)
    assert health.status_code == 200


def test_metrics_count_requests_and_stage_latency(client: TestClient, world: World) -> None:
    client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
    client.get("/tiles/987654")
    text = client.get("/metrics").text
    assert 'cvm_http_requests_total{method="POST",route="/localize",status="200"} 1.0' in text
    assert 'cvm_http_requests_total{method="GET",route="/tiles/{tile_id}",status="404"} 1.0' in text
    for stage in ("decode", "preprocess", "forward", "search", "database", "total"):
        assert f'cvm_localize_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert f"cvm_index_ntotal {float(len(world.tiles))}" in text
    assert f"cvm_active_build_id {float(next(iter(world.builds)))}" in text


def test_openapi_lists_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/localize", "/tiles/{tile_id}", "/tiles/{tile_id}/image", "/healthz", "/readyz"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_page_and_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
        assert asset in page.text
    # Everything is bundled: no absolute URL to another host.
    assert "http://" not in page.text.replace("http://www.w3.org", "")
    assert "https://" not in page.text


def test_readyz_on_an_empty_data_directory_says_no_build_and_creates_nothing(world: World, tmp_path) -> None:
    # A data directory where no build ever ran: no catalogue file at all. The service must not
    # create one there, and must say what is missing rather than a database error.
    empty = tmp_path / "empty"
    empty.mkdir()
    url = f"sqlite:///{empty / 'cvm.db'}"
    settings = world.settings(data_dir=empty, database_url=url, index_dir=empty / "indexes")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    reasons = ready.json()["reasons"]
    assert any("no active index build" in r for r in reasons), reasons
    assert not any("not reachable" in r or "no such table" in r for r in reasons), reasons
    assert list(empty.iterdir()) == []


def test_readyz_on_a_catalogue_without_tables_says_no_build(world: World, tmp_path) -> None:
    import sqlite3

    path = tmp_path / "blank.db"
    sqlite3.connect(path).close()  # a file, but no schema: nothing was ever indexed into it
    with TestClient(create_app(world.settings(database_url=f"sqlite:///{path}"))) as client:
        reasons = client.get("/readyz").json()["reasons"]
    assert any("no active index build" in r for r in reasons), reasons
