"""A newly activated build is served without a restart and without failing requests in flight."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.support.service_world import PANO_TILE, World, panorama_bytes, write_index

NEW_TILE = 2  # tile index holding the panorama descriptor in the second build


def _ask(client: TestClient) -> dict:
    resp = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _wait_for_build(client: TestClient, build_id: int, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = _ask(client)
        if body["build_id"] == build_id:
            return body
        time.sleep(0.05)
    raise AssertionError(f"build {build_id} not served after {timeout_s} s")


def test_swap_to_new_active_build_while_requests_run(fresh_world: World) -> None:
    world = fresh_world
    first = next(iter(world.builds))
    pano = world.descriptor(panorama_bytes(), "panorama")
    with TestClient(create_app(world.settings(build_poll_s=0.05))) as client:
        assert _ask(client)["build_id"] == first
        failures: list[str] = []
        seen: set[int] = set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                resp = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
                if resp.status_code != 200:
                    failures.append(resp.text)
                else:
                    seen.add(resp.json()["build_id"])

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        second = world.add_build({NEW_TILE: pano}, activate_it=True, seed=1)
        body = _wait_for_build(client, second)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text

    assert failures == []
    assert seen == {first, second}
    assert body["candidates"][0]["tile_id"] == world.builds[second]["tile_ids"][NEW_TILE]
    assert body["candidates"][0]["tile_id"] != world.builds[first]["tile_ids"][PANO_TILE]
    assert ready["build_id"] == second
    assert f"cvm_active_build_id {float(second)}" in metrics


def test_in_flight_snapshot_stays_usable_after_swap(fresh_world: World) -> None:
    world = fresh_world
    first = next(iter(world.builds))
    with TestClient(create_app(world.settings(build_poll_s=60.0))) as client:
        store = client.app.state.cvm.store  # type: ignore[attr-defined]
        old = store.current
        second = world.add_build({}, activate_it=True, seed=2)
        assert store.refresh() is True
        assert store.current.build_id == second
        # A request that took the old snapshot still searches the old index and its own tiles.
        query = world.descriptor(panorama_bytes(), "panorama")[None]
        scores, ids = old.search(query, 1)
        assert old.build_id == first
        assert int(ids[0, 0]) == world.builds[first]["tile_ids"][PANO_TILE]
        assert old.lookup(ids[0])[0].lat == pytest.approx(world.tiles[PANO_TILE].lat, abs=1e-9)
        assert scores[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_keep_serving_when_new_build_does_not_match_weights(fresh_world: World) -> None:
    world = fresh_world
    first = next(iter(world.builds))
    with TestClient(create_app(world.settings(build_poll_s=0.05))) as client:
        second = world.add_build({}, activate_it=False)
        folder = world.builds[second]["folder"]
        vectors = np.eye(len(world.tiles), world.net.out_dim, dtype=np.float32)
        write_index(folder, world.builds[second]["tile_ids"], vectors, "0" * 64, second)
        world.activate(second)
        deadline = time.monotonic() + 5.0
        store = client.app.state.cvm.store  # type: ignore[attr-defined]
        while store.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ask(client)["build_id"] == first
        assert "rebuild the index with these weights" in (store.last_error or "")
        assert json.loads((folder / "index_meta.json").read_text())["weights_sha256"] == "0" * 64
