"""Faults injected from outside: each asserts the documented behaviour (docs/service.md,
"Limits, timeouts and failures")."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.support.service_world import panorama_bytes


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung (stopped) database server."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hung_database_answers_503_within_the_timeout(world, silent_server: int) -> None:
    url = f"postgresql+psycopg://cvm:secret@127.0.0.1:{silent_server}/cvm"
    with TestClient(create_app(world.settings(database_url=url))) as client:
        started = time.monotonic()
        ready = client.get("/readyz")
        ready_s = time.monotonic() - started
        started = time.monotonic()
        tile = client.get("/tiles/1")
        tile_s = time.monotonic() - started
        health = client.get("/healthz")
    assert ready.status_code == 503 and ready_s < 4.0, (ready.status_code, ready_s)
    assert any("no answer within" in r for r in ready.json()["reasons"]), ready.json()
    assert tile.status_code == 503 and tile_s < 4.0, (tile.status_code, tile_s)
    assert "secret" not in tile.text
    assert health.status_code == 200


def _put_nan_into(folder: Path, row: int) -> None:
    index = faiss.read_index(str(folder / "index.faiss"))
    flat = faiss.downcast_index(faiss.downcast_index(index).index)
    faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)[row * flat.d] = np.nan
    faiss.write_index(index, str(folder / "index.faiss"))


def test_corrupt_active_build_at_start_serves_the_newest_good_build(fresh_world) -> None:
    world = fresh_world
    good = next(iter(world.builds))
    bad = world.add_build({}, activate_it=True, seed=5)
    _put_nan_into(world.builds[bad]["folder"], row=3)
    with TestClient(create_app(world.settings())) as client:
        ready = client.get("/readyz")
        loc = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
    body = ready.json()
    assert ready.status_code == 200 and body["build_id"] == good, body
    assert any(f"active build {bad} cannot be loaded" in w and "not finite" in w for w in body["warnings"])
    assert all(str(world.index_dir) not in w for w in body["warnings"])  # no server folders
    assert loc.status_code == 200 and loc.json()["build_id"] == good


def test_nan_in_the_only_build_is_503_naming_it_not_a_500(fresh_world) -> None:
    world = fresh_world
    only = next(iter(world.builds))
    _put_nan_into(world.builds[only]["folder"], row=0)
    with TestClient(create_app(world.settings())) as client:
        ready = client.get("/readyz")
        loc = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
    assert ready.status_code == 503
    assert any("not finite" in r for r in ready.json()["reasons"]), ready.json()
    assert loc.status_code == 503 and "not finite" in loc.json()["detail"]
    assert str(world.index_dir) not in loc.json()["detail"]


async def _echo_length(scope, receive, send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _drive(chunks_and_pauses: list[tuple[bytes, float]], timeout_s: float) -> tuple[list[dict], float]:
    """Send a body through UploadLimitMiddleware chunk by chunk, pausing after each as given."""
    import asyncio

    from service.upload_limit import UploadLimitMiddleware

    async def main() -> tuple[list[dict], float]:
        queue = list(chunks_and_pauses)
        sent: list[dict] = []

        async def receive() -> dict:
            if not queue:
                await asyncio.sleep(3600)  # a client that never disconnects
            chunk, pause = queue.pop(0)
            await asyncio.sleep(pause)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

        async def send(message: dict) -> None:
            sent.append(message)

        middleware = UploadLimitMiddleware(_echo_length, max_bytes=10_000, body_timeout_s=timeout_s)
        started = asyncio.get_running_loop().time()
        await middleware({"type": "http", "headers": []}, receive, send)
        return sent, asyncio.get_running_loop().time() - started

    return asyncio.run(main())


def test_a_body_trickling_in_is_cut_off_with_408() -> None:
    sent, took = _drive([(b"x", 0.0)] + [(b"x", 0.2)] * 50, timeout_s=0.5)
    assert sent[0]["status"] == 408 and took < 2.0, (sent, took)
    assert b"CVM_BODY_TIMEOUT_S" in sent[1]["body"]


def test_a_body_in_time_passes_whatever_its_chunks() -> None:
    sent, _ = _drive([(b"ab", 0.0), (b"cd", 0.05), (b"e", 0.05)], timeout_s=2.0)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"5"


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("width,height", [(1, 10000), (5, 200000), (200000, 5), (10, 10), (300, 6000)])
def test_strips_and_slivers_are_refused_from_the_header(client: TestClient, width: int, height: int) -> None:
    # A few KB each; before the cap, preparing them failed in cv2 (500) or doubled the process's memory.
    data = _png(width, height)
    assert len(data) < 20_000
    resp = client.post("/localize", files={"image": ("strip.png", data, "image/png")})
    assert resp.status_code == 422, resp.text
    assert f"{width}x{height}" in resp.json()["detail"] and "16" in resp.json()["detail"]


def test_the_most_elongated_accepted_shape_is_answered(client: TestClient) -> None:
    resp = client.post("/localize", files={"image": ("tall.png", _png(64, 1024), "image/png")})
    assert resp.status_code == 200, resp.text


def test_api_key_guards_every_route_but_probes_page_and_docs(world) -> None:
    settings = world.settings(api_key="s3cret-key")
    with TestClient(create_app(settings)) as client:
        image = {"image": ("p.png", panorama_bytes(), "image/png")}
        without = client.post("/localize", files=image)
        wrong = client.post("/localize", files=image, headers={"X-API-Key": "nope"})
        header = client.post("/localize", files=image, headers={"X-API-Key": "s3cret-key"})
        bearer = client.get("/tiles/1", headers={"Authorization": "Bearer s3cret-key"})
        cookie = client.get("/tiles/1", headers={"Cookie": "theme=dark; cvm_api_key=s3cret-key"})
        bad_cookie = client.get("/tiles/1", headers={"Cookie": "cvm_api_key=wrong"})
        tile_without = client.get("/tiles/1")
        open_paths = {p: client.get(p).status_code for p in ("/healthz", "/readyz", "/", "/openapi.json")}
        schema = client.get("/openapi.json").json()
    assert without.status_code == 401 and "X-API-Key" in without.json()["detail"]
    assert "s3cret" not in without.text
    assert wrong.status_code == 401
    assert header.status_code == 200
    assert bearer.status_code in (200, 404) and tile_without.status_code == 401
    assert cookie.status_code == bearer.status_code and bad_cookie.status_code == 401
    assert open_paths == {"/healthz": 200, "/readyz": 200, "/": 200, "/openapi.json": 200}
    localize_op = schema["paths"]["/localize"]["post"]
    assert "401" in localize_op["responses"] and {"ApiKey": []} in localize_op["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_no_api_key_by_default_and_no_cors_unless_configured(client: TestClient, world) -> None:
    resp = client.get("/tiles/1", headers={"Origin": "https://elsewhere.example"})
    assert resp.status_code in (200, 404)
    assert "access-control-allow-origin" not in resp.headers
    settings = world.settings(cors_origins=["https://maps.example.org"])
    with TestClient(create_app(settings)) as cors_client:
        allowed = cors_client.options(
            "/localize",
            headers={"Origin": "https://maps.example.org", "Access-Control-Request-Method": "POST"},
        )
        other = cors_client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://maps.example.org"
    assert "access-control-allow-origin" not in other.headers


def test_body_timeout_comes_from_the_settings(world) -> None:
    from service.upload_limit import UploadLimitMiddleware

    app = create_app(world.settings(body_timeout_s=7.5))
    found = [m for m in app.user_middleware if m.cls is UploadLimitMiddleware]
    assert found and found[0].kwargs["body_timeout_s"] == 7.5
