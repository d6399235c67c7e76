"""The location estimate of POST /localize and `cvm localize` over planted builds with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pyproj import Geod

from model.transforms import load_image_rgb, prepare_ground
from model.views import ground_view, view_transforms
from service.calibration import Calibration, Logistic, sidecar_path
from service.familiarity import BLOCKS, UNFAMILIAR_REASON, fit_familiarity
from service.main import create_app
from tests.support.service_world import GRID, PANO_TILE, World, panorama_bytes

GEOD = Geod(ellps="WGS84")
CORNERS = (0, GRID - 1, GRID * GRID - 1)  # three tiles far apart (in tile sizes)


def post(client: TestClient, **params: object):  # type: ignore[no-untyped-def]
    files = {"image": ("q.png", panorama_bytes(), "image/png")}
    resp = client.post("/localize", files=files, params=params)
    assert resp.status_code == 200, resp.text
    return resp


def stride_m(world: World) -> float:
    """Ground distance between horizontally neighbouring tile centres (pyproj)."""
    a, b = world.tiles[PANO_TILE], world.tiles[PANO_TILE + 1]
    return float(GEOD.inv(a.lon, a.lat, b.lon, b.lat)[2])


def test_estimate_is_the_planted_tile(client: TestClient, world: World) -> None:
    est = post(client, k=3).json()["estimate"]
    expected = world.tiles[PANO_TILE]
    assert est["lat"] == pytest.approx(expected.lat, abs=2e-7)
    assert est["lon"] == pytest.approx(expected.lon, abs=2e-7)
    # One tile holds all the mass: no spread, so the radius is the smallest, one stride.
    assert est["radius_m"] == pytest.approx(stride_m(world), abs=0.06)
    # The test weights have no calibration sidecar: the confidence is the raw share (all of it).
    assert est["confidence"] == pytest.approx(1.0, abs=1e-3)
    assert est["confident"] is True and est["note"] is None


def test_geojson_has_candidates_then_the_estimate(client: TestClient, world: World) -> None:
    body = post(client, k=4, format="geojson").json()
    features = body["features"]
    assert len(features) == 4 + 1
    assert [f["properties"]["role"] for f in features] == ["candidate"] * 4 + ["estimate"]
    assert [f["properties"]["rank"] for f in features[:4]] == [1, 2, 3, 4]
    est = features[-1]
    expected = world.tiles[PANO_TILE]
    assert est["geometry"]["type"] == "Point"
    assert est["geometry"]["coordinates"] == pytest.approx([expected.lon, expected.lat], abs=2e-7)
    assert set(est["properties"]) == {"role", "radius_m", "confidence", "confident", "note", "reason"}
    assert est["properties"]["reason"] is None
    assert est["properties"]["confident"] is True
    assert "estimate" not in body  # the estimate is a feature, not a foreign member


def test_ambiguous_answer_is_no_confident_match(fresh_world: World) -> None:
    """The query's descriptor planted at three far-apart tiles: three groups of a third each."""
    q = fresh_world.descriptor(panorama_bytes(), "panorama")
    build = fresh_world.add_build({i: q for i in CORNERS})
    with TestClient(create_app(fresh_world.settings())) as client:
        body = post(client, k=5).json()
    est = body["estimate"]
    assert est["confidence"] == pytest.approx(1 / 3, abs=1e-3)
    assert est["confident"] is False and est["note"] == "no confident match"
    winner = body["candidates"][0]["tile_id"]
    tile = fresh_world.tiles[fresh_world.builds[build]["tile_ids"].index(winner)]
    assert (est["lat"], est["lon"]) == pytest.approx((tile.lat, tile.lon), abs=2e-7)


def test_service_loads_the_calibration_beside_the_weights(fresh_world: World) -> None:
    q = fresh_world.descriptor(panorama_bytes(), "panorama")
    fresh_world.add_build({i: q for i in CORNERS})
    # p = sigmoid(-1 + logit(mass)); confident from 0.1 on.
    model = Logistic(coef=(1.0, 0.0, 0.0, 0.0), intercept=-1.0, mean=(0.0,) * 4, scale=(1.0,) * 4)
    Calibration({"panorama": model}, fresh_world.weights_sha256, threshold=0.1).save(
        sidecar_path(fresh_world.weights)
    )
    with TestClient(create_app(fresh_world.settings())) as client:
        est = post(client).json()["estimate"]
    expected = 1 / (1 + math.exp(-(-1.0 + math.log(0.5))))  # mass 1/3: logit = log(1/2)
    assert est["confidence"] == pytest.approx(expected, abs=1e-3)
    assert est["confident"] is True and est["note"] is None


def block_moments(world: World, data: bytes) -> np.ndarray:
    """(1, dim) familiarity features of a panorama computed here from the network's blocks: per
    channel mean and std of VGG blocks `BLOCKS` of the ground branch, averaged over the views."""
    net = world.net
    prep = net.config.preprocessing
    x = prepare_ground(load_image_rgb(data), prep)[None]
    rows = []
    with torch.no_grad():
        for turns, mirror in view_transforms(prep.views):
            h = ground_view(x, turns, mirror)
            parts = []
            for b, block in enumerate(net.vgg_ground.blocks):
                h = block(h)
                if b in BLOCKS:
                    parts += [h.mean((2, 3)), h.std((2, 3))]
            rows.append(torch.cat(parts, 1).numpy())
    return np.mean(rows, axis=0)


def confident_calibration(world: World, centre: np.ndarray) -> Calibration:
    """A calibration whose panorama model is sure of a one-group answer (p ~ 1 at mass ~ 1) and
    whose familiarity model was fitted on points around `centre`."""
    rng = np.random.default_rng(0)
    points = centre + 0.01 * np.abs(centre).mean() * rng.normal(0.0, 1.0, (200, centre.shape[1]))
    model = Logistic(coef=(1.0, 0.0, 0.0, 0.0), intercept=0.0, mean=(0.0,) * 4, scale=(1.0,) * 4)
    return Calibration(
        {"panorama": model},
        world.weights_sha256,
        familiarity={"panorama": fit_familiarity(points, components=8, percentile=99.0)},
    )


def test_unfamiliar_query_is_no_confident_match(fresh_world: World) -> None:
    """The query planted at one tile (a sure answer), but the familiarity model was fitted on
    features far from the query's: confidence 0, "no confident match", and the reason."""
    q = fresh_world.descriptor(panorama_bytes(), "panorama")
    fresh_world.add_build({PANO_TILE: q})
    feats = block_moments(fresh_world, panorama_bytes())
    far = feats + 10.0 * (np.abs(feats).mean() + 1.0)
    confident_calibration(fresh_world, far).save(sidecar_path(fresh_world.weights))
    with TestClient(create_app(fresh_world.settings())) as client:
        est = post(client, k=3).json()["estimate"]
        geo = post(client, k=3, format="geojson").json()["features"][-1]["properties"]
    assert est["confidence"] == 0.0
    assert est["confident"] is False and est["note"] == "no confident match"
    assert est["reason"] == UNFAMILIAR_REASON
    assert (geo["confident"], geo["note"], geo["reason"]) == (False, "no confident match", UNFAMILIAR_REASON)
    # still the planted tile: the estimate is kept, only its confidence is withdrawn
    expected = fresh_world.tiles[PANO_TILE]
    assert (est["lat"], est["lon"]) == pytest.approx((expected.lat, expected.lon), abs=2e-7)


def test_familiar_query_keeps_its_confidence(fresh_world: World) -> None:
    """The same, with the familiarity model fitted around the query's own features."""
    q = fresh_world.descriptor(panorama_bytes(), "panorama")
    fresh_world.add_build({PANO_TILE: q})
    confident_calibration(fresh_world, block_moments(fresh_world, panorama_bytes())).save(
        sidecar_path(fresh_world.weights)
    )
    with TestClient(create_app(fresh_world.settings())) as client:
        est = post(client, k=3).json()["estimate"]
    # p = sigmoid(logit(mass)) = mass, the mass clipped at 1 - 1e-4 (service.calibration.EPS)
    assert est["confidence"] == pytest.approx(1 - 1e-4, abs=1e-4)
    assert est["confident"] is True and est["note"] is None and est["reason"] is None
