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
