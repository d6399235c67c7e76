"""Search priors (`near` + `radius_m`, `bbox`): parsing, tile selection, restricted search on every
index type (equal to an exhaustive search filtered afterwards), `/localize` and `cvm localize`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cli import localize as cli_localize
from model.metrics import EARTH_RADIUS_M
from service.errors import BadPrior
from service.flat_search import FlatView
from service.prior import MAX_RADIUS_M, Prior, great_circle_m, parse_prior
from service.snapshot import IndexSnapshot
from tests.support.service_world import PANO_TILE, World, panorama_bytes
from tests.support.vectors import random_places

# ---------------------------------------------------------------------------------------- parsing


def test_parse_near_and_bbox() -> None:
    assert parse_prior(None, None, None) is None
    p = parse_prior(" 45.5, 15.25", 1200.0, None)
    assert p == Prior(near=(45.5, 15.25), radius_m=1200.0)
    assert parse_prior(None, None, "15,45,15.5,45.5") == Prior(bbox=(15.0, 45.0, 15.5, 45.5))


@pytest.mark.parametrize(
    ("near", "radius", "bbox", "message"),
    [
        ("91,15", 100.0, None, "near latitude 91 is out of range"),
        ("45,-180.5", 100.0, None, "near longitude -180.5 is out of range"),
        ("45,15", 0.0, None, "radius_m must be > 0"),
        ("45,15", -3.0, None, "radius_m must be > 0"),
        ("45,15", 3e7, None, "radius_m must be > 0 and at most 20015114"),
        ("45,15", float("nan"), None, "radius_m must be > 0"),
        ("45,15", None, None, "near needs radius_m"),
        ("45", 100.0, None, "near must be LAT,LON"),
        ("45,15,3", 100.0, None, "near must be LAT,LON"),
        ("nan,15", 100.0, None, "near must be LAT,LON"),
        (None, 100.0, None, "radius_m is given without near"),
        (None, None, "16,45,15,46", "bbox west (16) must be less than east (15)"),
        (None, None, "15,46,16,45", "bbox south (46) must be less than north (45)"),
        (None, None, "15,45,15,46", "must be less than east"),
        (None, None, "15,-91,16,45", "bbox south -91 is out of range"),
        (None, None, "15,45,190,46", "bbox east 190 is out of range"),
        (None, None, "15,45,16", "bbox must be W,S,E,N"),
        (None, 10.0, "15,45,16,46", "radius_m goes with near"),
        ("45,15", 100.0, "15,45,16,46", "not both"),
    ],
)
def test_bad_priors_are_refused_with_a_clear_message(
    near: str | None, radius: float | None, bbox: str | None, message: str
) -> None:
    with pytest.raises(BadPrior, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prior(near, radius, bbox)


def test_great_circle_distance() -> None:
    # one degree of latitude on the mean-radius sphere; the antipode at half the circumference
    d = great_circle_m(0.0, 0.0, np.array([1.0, 0.0]), np.array([0.0, 180.0]))
    np.testing.assert_allclose(d, [111_195.08, MAX_RADIUS_M], rtol=1e-6)


# ---------------------------------------------------------------------- restricted search, by index


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _snapshot(
    kind: str, n: int = 3000, d: int = 32, two_pass: bool = False
) -> tuple[IndexSnapshot, np.ndarray]:
    rng = np.random.default_rng({"flat": 0, "hnsw": 1, "ivfpq": 2}[kind])
    xb = _unit(rng, n, d)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) + 1  # ids in no particular order
    factory = {"flat": "IDMap2,Flat", "hnsw": "IDMap2,HNSW16", "ivfpq": "IVF32,PQ8x6"}[kind]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add_with_ids(xb, ids)
    if kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = 2  # a served IVF index probes a few lists only
    flat = FlatView.of(index, min_values_two_pass=0 if two_pass else 10**12) if kind == "flat" else None
    assert kind != "flat" or (flat is not None and (flat.int8 is not None) == two_pass)
    snap = IndexSnapshot(
        build_id=1, index=index, meta={}, tiles=random_places(n, rng, ids), index_dir=Path("."), flat=flat
    )
    queries = np.concatenate([_unit(rng, 4, d), xb[[7, 99]] + 0.05 * _unit(rng, 2, d)])
    return snap, queries


def _exhaustive_filtered(
    snap: IndexSnapshot, kind: str, q: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[Any, Any]:
    """Every tile ranked, then those outside the prior taken out; ties by id (IVF) or row order."""
    n = snap.ntotal
    if kind == "ivfpq":
        ivf = faiss.extract_index_ivf(snap.index)
        params = faiss.SearchParametersIVF()
        params.nprobe = ivf.nlist  # exhaustive: every list
        scores, ids = snap.index.search(q, n, params=params)
    else:  # exact inner products of every stored vector
        ids_all = np.array(sorted(snap.tiles), dtype=np.int64)
        vectors = np.stack([snap.index.reconstruct(int(i)) for i in ids_all])
        brute = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        brute.add_with_ids(vectors, ids_all)
        scores, ids = brute.search(q, n)
    out_s, out_i = [], []
    for s, i in zip(scores, ids, strict=True):
        keep = np.isin(i, allowed) & (i >= 0)
        s, i = s[keep], i[keep]
        order = np.lexsort((i, -s)) if kind == "ivfpq" else np.argsort(-s, kind="stable")
        out_s.append(s[order][:k])
        out_i.append(i[order][:k])
    return out_s, out_i


@pytest.mark.parametrize(
    ("kind", "two_pass"), [("flat", False), ("flat", True), ("hnsw", False), ("ivfpq", False)]
)
@pytest.mark.parametrize("box", [(14.2, 44.3, 14.6, 44.7), (14.0, 44.0, 15.5, 45.6)])  # ~4 %, ~56 %
def test_restricted_search_equals_exhaustive_search_filtered(
    kind: str, two_pass: bool, box: tuple[float, float, float, float]
) -> None:
    snap, queries = _snapshot(kind, two_pass=two_pass)
    prior = Prior(bbox=box)
    allowed = snap.select(prior)
    inside = {i for i, t in snap.tiles.items() if box[0] <= t.lon <= box[2] and box[1] <= t.lat <= box[3]}
    assert set(allowed.tolist()) == inside and 50 < len(inside) < len(snap.tiles)
    for k in (1, 10, 40):
        scores, ids = snap.search(queries, k, allowed)
        want_s, want_i = _exhaustive_filtered(snap, kind, queries, k, allowed)
        for r in range(len(queries)):
            assert set(ids[r].tolist()) <= inside  # only tiles inside the prior
            np.testing.assert_array_equal(ids[r], want_i[r])
            np.testing.assert_allclose(scores[r], want_s[r], rtol=1e-5, atol=1e-5)
    # without the prior the same queries find tiles outside it (the restriction did something)
    _, free = snap.search(queries, 10)
    assert not set(free.ravel().tolist()) <= inside


def test_restricted_search_to_fewer_tiles_than_k_pads_with_empty_slots() -> None:
    snap, queries = _snapshot("ivfpq")
    some = np.array(sorted(snap.tiles)[:3], dtype=np.int64)
    scores, ids = snap.search(queries[:1], 5, some)
    assert sorted(ids[0, :3].tolist()) == some.tolist() and ids[0, 3:].tolist() == [-1, -1]
    assert (scores[0, 3:] < -1e30).all()
    snap, queries = _snapshot("flat")
    some = np.array(sorted(snap.tiles)[:3], dtype=np.int64)
    _, ids = snap.search(queries[:1], 5, some)
    assert sorted(ids[0, :3].tolist()) == some.tolist() and ids[0, 3:].tolist() == [-1, -1]


def test_snapshot_keeps_centres_as_arrays_and_refuses_an_empty_prior() -> None:
    snap, _ = _snapshot("flat", n=200)
    c = snap.centres
    assert c.ids.dtype == np.int64 and (np.diff(c.ids) > 0).all() and len(c.lats) == len(c.lons) == 200
    assert c.lats[5] == snap.tiles[int(c.ids[5])].lat
    near = Prior(near=(45.0, 15.0), radius_m=30_000.0)
    picked = snap.select(near)
    dist = {
        i: great_circle_m(45.0, 15.0, np.array([t.lat]), np.array([t.lon]))[0] for i, t in snap.tiles.items()
    }
    assert set(picked.tolist()) == {i for i, m in dist.items() if m <= 30_000.0} != set()
    with pytest.raises(BadPrior, match="no tile of build 1 lies within the prior"):
        snap.select(Prior(bbox=(100.0, 10.0, 101.0, 11.0)))


# ---------------------------------------------------------------------------------- /localize, CLI


def _post(client: TestClient, **params: object) -> Any:
    files = {"image": ("q.png", panorama_bytes(), "application/octet-stream")}
    return client.post("/localize", params=params, files=files)


def test_localize_near_ranks_only_tiles_inside(client: TestClient, world: World) -> None:
    pano = world.tiles[PANO_TILE]
    free = _post(client, k=16).json()
    build = free["build_id"]
    pano_id = world.builds[build]["tile_ids"][PANO_TILE]
    # a small circle around the planted tile: it alone
    body = _post(client, k=5, near=f"{pano.lat},{pano.lon}", radius_m=5.0).json()
    assert [c["tile_id"] for c in body["candidates"]] == [pano_id]
    # a box of the other tiles: the planted one is gone, the rest keep their order and scores
    other = [t for i, t in enumerate(world.tiles) if i != PANO_TILE and t.lon > pano.lon + 1e-9]
    assert other
    w = min(t.lon for t in other) - 1e-7
    bbox = f"{w},-90,180,90"
    body = _post(client, k=16, bbox=bbox).json()
    got = [(c["tile_id"], c["score"]) for c in body["candidates"]]
    want = [(c["tile_id"], c["score"]) for c in free["candidates"] if c["lon"] >= w]
    assert got == want and pano_id not in {i for i, _ in got} and len(got) == len(other)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"near": "95,15", "radius_m": 100}, "near latitude 95 is out of range"),
        ({"near": "45,15", "radius_m": 0}, "radius_m"),
        ({"near": "45,15", "radius_m": 1e9}, "radius_m"),
        ({"near": "45,15"}, "near needs radius_m"),
        ({"bbox": "16,45,15,46"}, "bbox west (16) must be less than east (15)"),
        ({"bbox": "15,45,16"}, "bbox"),
        ({"near": "45,15", "radius_m": 10, "bbox": "15,45,16,46"}, "not both"),
        ({"bbox": "100,10,101,11"}, "no tile of build"),
        ({"near": "0,0", "radius_m": 1000}, "no tile of build"),
    ],
)
def test_localize_bad_prior_is_422_with_a_clear_message(
    client: TestClient, params: dict[str, object], message: str
) -> None:
    resp = _post(client, **params)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == {"detail"} and message in body["detail"]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_localize.add_arguments(parser)
    return int(cli_localize.run(parser.parse_args(argv)))


def test_localize_cli_prior(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    for key, value in (
        ("CVM_DATA_DIR", str(world.root)),
        ("CVM_DATABASE_URL", world.db_url),
        ("CVM_INDEX_DIR", str(world.index_dir)),
        ("CVM_WEIGHTS", str(world.weights)),
    ):
        monkeypatch.setenv(key, value)
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    pano = world.tiles[PANO_TILE]
    assert _cli([str(photo), "--json", "--near", f"{pano.lat},{pano.lon}", "--radius-m", "5"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [c["lat"] for c in body["candidates"]] == [pytest.approx(pano.lat, abs=1e-9)]
    assert _cli([str(photo), "--bbox", "16,45,15,46"]) == 2
    assert "bbox west (16) must be less than east (15)" in capsys.readouterr().err
    assert _cli([str(photo), "--bbox", "100,10,101,11"]) == 2
    assert "no tile of build" in capsys.readouterr().err


def test_prior_search_on_hnsw_keeps_no_int8_copy() -> None:
    """An HNSW index chosen under a memory budget is sized without the int8 copy the flat index's
    two-pass search keeps, so prior searches over its vectors must not build one, even at a size
    (2,100 x 4,096 values) where a flat index would."""
    snap, queries = _snapshot("hnsw", n=2100, d=4096)
    allowed = np.sort(np.array(list(snap.tiles))[:50])
    scores, ids = snap.search(queries, 5, allowed)
    assert np.isin(ids[ids >= 0], allowed).all()
    exact = snap.parts[0]._exact
    assert exact is not None and exact.int8 is None


def test_selecting_a_prior_by_latitude_band_equals_testing_every_tile() -> None:
    """`TileCentres.inside` tests only the prior's band of latitude: the same tiles as testing all,
    for small and huge circles (past a pole), boxes, and points on the band's edge."""
    from service.snapshot import TileCentres

    rng = np.random.default_rng(8)
    n = 20_000
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    lats = np.concatenate([rng.uniform(-90, 90, n - 200), np.full(200, 45.0)])
    lons = rng.uniform(-180, 180, n)
    centres = TileCentres(np.sort(ids), lats[np.argsort(ids)], lons[np.argsort(ids)])
    priors = [Prior(bbox=(-10.0, 44.0, 10.0, 45.0)), Prior(bbox=(100.0, -90.0, 120.0, 90.0))]
    for radius in (1.0, 5_000.0, 300_000.0, 3_000_000.0, MAX_RADIUS_M):
        for lat in (45.0, 89.9, -89.0, 0.0):
            priors.append(Prior(near=(lat, 7.0), radius_m=radius))
    # a circle whose edge passes exactly through the 200 tiles on the 45th parallel
    priors.append(
        Prior(
            near=(44.0, lons[-1]),
            radius_m=float(great_circle_m(44.0, lons[-1], np.array([45.0]), lons[-1:])[0]),
        )
    )
    for prior in priors:
        want = np.sort(centres.ids[prior.contains(centres.lats, centres.lons)])
        np.testing.assert_array_equal(centres.inside(prior), want)
    assert len(centres.inside(priors[-1])) >= 1


def _counting(contains: Any, tested: list[int]) -> Any:
    def wrapped(self: Prior, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
        tested.append(len(lats))
        return contains(self, lats, lons)

    return wrapped


def test_a_circle_window_of_longitude_keeps_every_tile_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense tiles around circles at several latitudes, across the antimeridian, and on each
    circle's east- and west-most points (where the window of longitude is tight): `inside` gives
    what testing every tile gives, and the window does cut most of the band."""
    from service.snapshot import TileCentres

    rng = np.random.default_rng(9)
    for lat0, lon0, radius in ((45.0, 7.0, 5_000.0), (-60.0, 179.99, 20_000.0), (80.0, -179.95, 50_000.0)):
        angle = radius / EARTH_RADIUS_M
        span = np.degrees(angle) * 3
        lats = lat0 + rng.uniform(-span, span, 20_000)
        lons = (lon0 + rng.uniform(-span, span, 20_000) / np.cos(np.radians(lat0)) + 180) % 360 - 180
        # the circle's tangent points: latitude asin(sin lat0 / cos d), longitude lon0 +- the window
        t_lat = np.degrees(np.arcsin(np.sin(np.radians(lat0)) / np.cos(angle)))
        t_dlon = np.degrees(np.arcsin(np.sin(angle) / np.cos(np.radians(lat0))))
        edge_lons = (lon0 + np.array([t_dlon, -t_dlon]) + 180) % 360 - 180
        lats, lons = np.r_[lats, t_lat, t_lat], np.r_[lons, edge_lons]
        # a band of tiles all around the parallel, which the window leaves out
        lats = np.r_[lats, np.full(5000, lat0)]
        lons = np.r_[lons, np.linspace(-180, 180, 5000, endpoint=False)]
        ids = np.arange(1, len(lats) + 1, dtype=np.int64)
        centres = TileCentres(ids, lats, lons)
        prior = Prior(near=(lat0, lon0), radius_m=radius)
        want = ids[prior.contains(lats, lons)]
        tested: list[int] = []
        with monkeypatch.context() as m:
            m.setattr(Prior, "contains", _counting(Prior.contains, tested))
            np.testing.assert_array_equal(centres.inside(prior), want)
        distances = great_circle_m(lat0, lon0, lats[-5002:-5000], lons[-5002:-5000])
        assert np.allclose(distances, radius, rtol=1e-9)  # the tangent points lie on the circle
        assert tested[0] < len(ids) - 4900  # the parallel's tiles outside the window: not tested
    assert Prior(near=(89.0, 0.0), radius_m=200_000.0).lon_window() is None  # around the pole
    assert Prior(bbox=(0.0, 0.0, 1.0, 1.0)).lon_window() is None
