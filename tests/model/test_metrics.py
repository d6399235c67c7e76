"""Retrieval metrics on hand-made descriptor matrices whose ranks are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import Geod

from model.metrics import (
    EARTH_RADIUS_M,
    haversine_m,
    metrics_from_ranks,
    rank_queries,
    retrieval_metrics,
    top1pct_k,
)


def _scalar_descriptors(sat_values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """1-D descriptors: every ground is 1, so sim(i, j) = sat_values[j] for every query."""
    n = len(sat_values)
    return np.ones((n, 1)), np.asarray(sat_values, dtype=np.float64)[:, None]


def test_rank_queries_identity_all_first() -> None:
    eye = np.eye(6, dtype=np.float32)
    ranks, top1 = rank_queries(eye, eye)
    assert ranks.tolist() == [0] * 6
    assert top1.tolist() == list(range(6))


def test_rank_queries_known_ranks() -> None:
    # sat values 5,4,3,2,1: query i's true satellite has i satellites with larger value.
    grd, sat = _scalar_descriptors([5, 4, 3, 2, 1])
    ranks, top1 = rank_queries(grd, sat)
    assert ranks.tolist() == [0, 1, 2, 3, 4]
    assert top1.tolist() == [0, 0, 0, 0, 0]


def test_rank_queries_ties_count_for_query() -> None:
    grd, sat = _scalar_descriptors([3, 3, 1])
    ranks, top1 = rank_queries(grd, sat)
    # query 1 ties with satellite 0: nobody is strictly closer, so rank 0 and itself first.
    assert ranks.tolist() == [0, 0, 2]
    assert top1.tolist() == [0, 1, 0]


def test_rank_queries_blocks_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    grd = rng.normal(size=(37, 8)).astype(np.float32)
    sat = grd + 0.8 * rng.normal(size=(37, 8)).astype(np.float32)
    expected = []
    for i in range(37):
        dist = [2 - 2 * float(np.dot(grd[i].astype(float), sat[j].astype(float))) for j in range(37)]
        expected.append(sum(1 for j in range(37) if dist[j] < dist[i] - 1e-12))
    for block in (1, 5, 37, None):
        ranks, _ = rank_queries(grd, sat, block_rows=block)
        assert ranks.tolist() == expected


def test_top1pct_k_conventions() -> None:
    assert top1pct_k(8884) == (88, 89)  # CVUSA val: SAFA convention 88, CVM-Net 89
    assert top1pct_k(50) == (1, 1)
    assert top1pct_k(100) == (1, 2)
    assert top1pct_k(250) == (2, 3)


def test_retrieval_metrics_recalls_and_median() -> None:
    n = 250
    grd, sat = _scalar_descriptors(list(np.linspace(1.0, 0.0, n)))  # ranks 0..249
    m = retrieval_metrics(grd, sat)
    assert m.n == 250
    assert m.r1 == pytest.approx(100 * 1 / 250)
    assert m.r5 == pytest.approx(100 * 5 / 250)
    assert m.r10 == pytest.approx(100 * 10 / 250)
    assert (m.k1pct, m.k1pct_cvm) == (2, 3)
    assert m.r1pct == pytest.approx(100 * 2 / 250)
    assert m.r1pct_cvm == pytest.approx(100 * 3 / 250)
    assert m.median_rank == pytest.approx(124.5)
    assert m.median_error_m is None and m.p90_error_m is None


def test_haversine_matches_spherical_geod() -> None:
    geod = Geod(a=EARTH_RADIUS_M, b=EARTH_RADIUS_M)
    lat1, lon1, lat2, lon2 = 47.37, 8.54, 40.71, -74.01
    _, _, expected = geod.inv(lon1, lat1, lon2, lat2)
    assert float(haversine_m(np.array(lat1), np.array(lon1), np.array(lat2), np.array(lon2))) == (
        pytest.approx(expected, rel=1e-9)
    )
    one_degree = float(haversine_m(np.array(0.0), np.array(0.0), np.array(1.0), np.array(0.0)))
    assert one_degree == pytest.approx(EARTH_RADIUS_M * math.pi / 180)


def test_metrics_location_errors() -> None:
    # Queries 0 and 1 retrieve their own satellite; query 2 retrieves satellite 0.
    refs = np.array([[0.0, 0.0], [0.0, 0.001], [0.001, 0.0]])
    ranks = np.array([0, 0, 1])
    top1 = np.array([0, 1, 0])
    m = metrics_from_ranks(ranks, top1, query_latlon=refs, ref_latlon=refs)
    d = EARTH_RADIUS_M * math.radians(0.001)  # 0.001 degree of latitude
    assert m.median_error_m == pytest.approx(0.0, abs=1e-9)
    # numpy's linear percentile of [0, 0, d] at 90 % lies 0.8 of the way from 0 to d.
    assert m.p90_error_m == pytest.approx(0.8 * d)


def test_retrieval_metrics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(np.zeros((3, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="locations"):
        metrics_from_ranks(np.zeros(3), np.zeros(3, dtype=int), np.zeros((2, 2)), np.zeros((3, 2)))


def test_rank_queries_takes_the_best_heading() -> None:
    # Unit vectors on a circle: satellite j at angle 60 j degrees. Query 0 tried at two headings:
    # 150 degrees (between satellites 2 and 3, its own satellite 0 last) and 2 degrees (next to
    # satellite 0): the best heading counts, rank 0. Query 1 at 100 and 110 degrees: both nearer
    # satellite 2 than its own satellite 1, rank 1 with satellite 2 first.
    ang = np.deg2rad(60.0 * np.arange(4))
    sat = np.stack([np.cos(ang), np.sin(ang)], axis=1)

    def at(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    rest = [at(120), at(180)]  # queries 2 and 3: exactly their satellites, at both headings
    grd = np.array([[at(150), at(100), *rest], [at(2), at(110), *rest]])
    ranks, top1 = rank_queries(grd, sat)
    assert ranks.tolist() == [0, 1, 0, 0]
    assert top1.tolist() == [0, 2, 2, 3]
    # One heading alone is the plain 2-D case.
    assert rank_queries(grd[0], sat)[0].tolist() == [3, 1, 0, 0]
    with pytest.raises(ValueError, match="descriptors"):
        rank_queries(grd[:, :3], sat)
