"""Inference options stored with the weights: photo headings (`photo_headings`) and test-time views."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.checkpoint import save_checkpoint
from model.transforms import load_image_rgb, prepare_photo
from model.views import set_inference_options
from service.main import create_app
from service.pipeline import Query, best_per_tile, run_batch
from tests.support.service_world import make_world, panorama_bytes, photo_bytes

TURNED_TILE = 7  # the planted tile: the photo's descriptor at heading step 2 of 4, or the panorama's


def test_best_per_tile_keeps_each_tile_at_its_best_score() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        m, k = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        # m rows of k' = k + 2 distinct ids from 0..9 (or -1 for empty slots), scores descending.
        ids = np.array([rng.choice(np.arange(-1, 10), size=k + 2, replace=False) for _ in range(m)])
        scores = -np.sort(-rng.random((m, k + 2)).astype(np.float32), axis=1)
        got_ids, got_scores = best_per_tile(ids, scores, k)
        best: dict[int, float] = {}
        for i, s in zip(ids.ravel().tolist(), scores.ravel().tolist(), strict=True):
            if i >= 0 or m == 1:
                best[i] = max(best.get(i, -np.inf), s)
        want = sorted(best.items(), key=lambda t: -t[1])[:k]
        assert got_ids.tolist() == [i for i, _ in want]
        assert got_scores.tolist() == pytest.approx([s for _, s in want])


def _world_with_headings(root: Path, headings: int):
    """A service world whose weights ask for `headings` photo headings; tile TURNED_TILE holds the
    photo's descriptor at heading step 2 of 4 (its canvas turned by half the panorama width)."""
    world = make_world(root)
    set_inference_options(world.net, photo_headings=headings)
    save_checkpoint(world.weights, world.net)
    prep = world.net.config.preprocessing
    canvas = prepare_photo(load_image_rgb(photo_bytes()), prep)
    with torch.inference_mode():
        turned = world.net.embed_ground(torch.roll(canvas, prep.grd_size[1] // 2, dims=-1)[None])[0]
        unturned = world.net.embed_ground(canvas[None])[0]
    assert float(turned @ unturned) < 0.999  # the heading matters to the descriptor
    world.add_build({TURNED_TILE: turned.numpy().astype(np.float32)})
    return world


@pytest.mark.parametrize("headings", [4, 1])
def test_photo_is_tried_at_the_weights_headings(tmp_path: Path, headings: int) -> None:
    world = _world_with_headings(tmp_path, headings)
    with TestClient(create_app(world.settings())) as client:
        resp = client.post("/localize", params={"k": 3}, files={"image": ("q.jpg", photo_bytes())})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pano = client.post("/localize", files={"image": ("p.png", panorama_bytes())}).json()
    top = body["candidates"][0]
    planted = world.builds[body["build_id"]]["tile_ids"][TURNED_TILE]
    ids = [c["tile_id"] for c in body["candidates"]]
    assert body["kind"] == "photo" and len(ids) == len(set(ids)) == 3
    if headings == 4:
        # Heading step 2 is among the four tried: the planted descriptor is met exactly.
        assert top["tile_id"] == planted and top["score"] == pytest.approx(1.0, abs=1e-4)
    else:
        assert top["tile_id"] != planted or top["score"] < 0.999
    assert pano["kind"] == "panorama" and len(pano["candidates"]) == 5  # panoramas: one input


def test_batched_photo_headings_give_the_lone_answer(tmp_path: Path) -> None:
    world = _world_with_headings(tmp_path, 4)
    images = [("p.png", panorama_bytes()), ("q.jpg", photo_bytes())] * 4
    with TestClient(create_app(world.settings(batch_window_ms=200.0, max_batch=16))) as client:

        def ask(item: tuple[str, bytes]) -> dict:
            resp = client.post("/localize", params={"k": 4}, files={"image": item})
            assert resp.status_code == 200, resp.text
            return resp.json()

        alone = [ask(item) for item in images[:2]]
        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            together = list(pool.map(ask, images))
    assert max(r["batch_size"] for r in together) > 1
    for i, got in enumerate(together):
        want = alone[i % 2]
        assert [c["tile_id"] for c in got["candidates"]] == [c["tile_id"] for c in want["candidates"]]
        assert [c["score"] for c in got["candidates"]] == pytest.approx(
            [c["score"] for c in want["candidates"]], abs=1e-5
        )


def test_panorama_under_test_time_views(tmp_path: Path) -> None:
    """Weights with 4 views: the service compares 4 x 16 = 64-d descriptors, built like the
    indexer's (`describe_ground`), and finds the tile holding the query's own descriptor."""
    world = make_world(tmp_path)
    set_inference_options(world.net, views=4)
    save_checkpoint(world.weights, world.net)
    assert world.net.config.descriptor_dim == 4 * world.net.out_dim
    planted = world.descriptor(panorama_bytes(), "panorama")
    assert planted.shape == (world.net.config.descriptor_dim,)
    world.add_build({TURNED_TILE: planted})
    with TestClient(create_app(world.settings())) as client:
        body = client.post("/localize", files={"image": ("p.png", panorama_bytes())}).json()
    top = body["candidates"][0]
    assert top["tile_id"] == world.builds[body["build_id"]]["tile_ids"][TURNED_TILE]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_batch_marks_photo_inputs_for_their_own_centring() -> None:
    """run_batch tells the model which rows are photos' canvases (`photo_center`), row by row."""
    seen: list[torch.Tensor] = []

    class Recorder:
        def embed(self, x: torch.Tensor, photo: torch.Tensor | None = None) -> np.ndarray:
            assert photo is not None
            seen.append(photo)
            return np.zeros((len(x), 4), dtype=np.float32)

    class Snapshot:
        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros((len(q), k), dtype=np.float32), np.tile(np.arange(k), (len(q), 1))

    snap = Snapshot()
    queries = [
        Query(torch.zeros(1, 3, 4, 8), snap, 1),  # type: ignore[arg-type]
        Query(torch.zeros(3, 3, 4, 8), snap, 1, photo=True),  # type: ignore[arg-type]
        Query(torch.zeros(1, 3, 4, 8), snap, 1, photo=False),  # type: ignore[arg-type]
    ]
    run_batch(Recorder(), queries)  # type: ignore[arg-type]
    assert seen[0].tolist() == [False, True, True, True, False]
