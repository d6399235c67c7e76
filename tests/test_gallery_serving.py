"""Serving a dataset's gallery end to end: `cvm gallery` on VIGOR and CVACT folders (fixture trees
with the real sample pairs linked in), `cvm-index build --tiles-csv`, the catalogue's tile centres
and footprints against values computed here, and `cvm localize` (the service's pipeline) answering
with tiles of that gallery."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cli.main import main as cvm_main
from indexer.cli import main as index_main
from storage import catalog
from storage.db import make_engine, session_scope
from tests.support.dataset_trees import CVACT_IDS, CVACT_UTM, VIGOR_CENTRES, cvact_tree, vigor_tree
from tests.support.geo_reference import CVACT_AUTHOR_GSD, SLICEMATCH_M_PER_PX, snyder_utm_inverse
from tests.support.tiny import tiny_checkpoint


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * r * math.asin(math.sqrt(h))


def build_and_read(tmp_path: Path, csv_path: Path, weights: Path) -> tuple[str, Path, int, list]:
    url, index_dir = f"sqlite:///{tmp_path / 'cvm.db'}", tmp_path / "indexes"
    args = ["--database-url", url, "--index-dir", str(index_dir), "build", "--no-progress"]
    assert index_main([*args, "--weights", str(weights), "--tiles-csv", str(csv_path)]) == 0
    engine = make_engine(url)
    with session_scope(engine) as s:
        build = catalog.get_active_build(s)
        assert build is not None
        build_id = build.id
        tiles = [
            (t.lat, t.lon, t.size_m, t.west, t.east, t.south, t.north, t.source)
            for t in catalog.iter_tiles(s, build_id)
        ]
    engine.dispose()
    return url, index_dir, build_id, tiles


def localize(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    index_dir: Path,
    weights: Path,
    pano: Path,
    k: int,
) -> dict:
    monkeypatch.setenv("CVM_DATABASE_URL", url)
    monkeypatch.setenv("CVM_INDEX_DIR", str(index_dir))
    monkeypatch.setenv("CVM_WEIGHTS", str(weights))
    capsys.readouterr()
    assert cvm_main(["localize", str(pano), "--kind", "panorama", "--k", str(k), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def check_footprint(tile: tuple) -> None:
    """The stored footprint is a north-up square of side size_m around the centre."""
    lat, lon, size_m, west, east, south, north, _ = tile
    assert west < lon < east and south < lat < north
    assert haversine_m(lat, west, lat, east) == pytest.approx(size_m, rel=5e-3)
    assert haversine_m(south, lon, north, lon) == pytest.approx(size_m, rel=5e-3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt", sat_size=32)


def test_vigor_gallery_served(
    tmp_path: Path,
    weights: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = shared_data / "realpairs/HC-Net/figure/VIGOR_exp"
    lat0, lon0 = VIGOR_CENTRES["NewYork"][0]
    pano_name = f"te_NewYork,{lat0},{lon0},.jpg"
    link = {f"satellite_{lat0}_{lon0}.png": real / "sat.png", pano_name: real / "pano.png"}
    root = vigor_tree(tmp_path / "VIGOR", link=link)
    csv_path = tmp_path / "vigor.csv"
    assert cvm_main(["gallery", "--data", str(root), "--out", str(csv_path)]) == 0

    url, index_dir, build_id, tiles = build_and_read(tmp_path, csv_path, weights)
    expected = {
        (lat, lon): (city, root / city / "satellite" / f"satellite_{lat}_{lon}.png")
        for city, places in VIGOR_CENTRES.items()
        for lat, lon in places
    }
    assert sorted((t[0], t[1]) for t in tiles) == sorted(expected)  # exactly the names' centres
    for tile in tiles:
        city, path = expected[(tile[0], tile[1])]
        assert Path(tile[7]) == path.resolve()
        assert tile[2] == pytest.approx(640 * SLICEMATCH_M_PER_PX[city], rel=3e-3)
        check_footprint(tile)

    answer = localize(monkeypatch, capsys, url, index_dir, weights, root / "NewYork/panorama" / pano_name, 5)
    assert answer["build_id"] == build_id and answer["kind"] == "panorama"
    assert len(answer["candidates"]) == 5
    assert {(c["lat"], c["lon"]) for c in answer["candidates"]} <= set(expected)


def test_cvact_gallery_served(
    tmp_path: Path,
    weights: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = shared_data / "realpairs/OriCNN"
    link = {
        f"{CVACT_IDS[0]}_grdView.jpg": real / "pano_img.png",
        f"{CVACT_IDS[0]}_satView_polish.jpg": real / "sat_img.png",
    }
    root = cvact_tree(tmp_path / "CVACT", link=link)
    csv_path = tmp_path / "cvact.csv"
    assert cvm_main(["gallery", "--data", str(root), "--split", "test", "--out", str(csv_path)]) == 0

    url, index_dir, build_id, tiles = build_and_read(tmp_path, csv_path, weights)
    assert len(tiles) == len(CVACT_IDS)
    gsd, lat_ref = CVACT_AUTHOR_GSD
    # the indexer stores each file's resolved path (the real sample's, for the linked pair)
    by_source = {Path(t[7]): t for t in tiles}
    sat_dir = root / "ANU_data_test/satview_polish"
    expected = set()
    for pid, (easting, northing) in zip(CVACT_IDS, CVACT_UTM, strict=True):
        lat, lon = snyder_utm_inverse(easting, northing, 55, south=True)
        tile = by_source[(sat_dir / f"{pid}_satView_polish.jpg").resolve()]
        assert tile[0] == pytest.approx(lat, abs=2e-7) and tile[1] == pytest.approx(lon, abs=2e-7)
        size = 1200 * gsd * math.cos(math.radians(lat)) / math.cos(math.radians(lat_ref))
        assert tile[2] == pytest.approx(size, rel=2e-3)
        check_footprint(tile)
        expected.add((tile[0], tile[1]))
    assert (real / "sat_img.png").resolve() in by_source

    pano = root / "ANU_data_test/streetview" / f"{CVACT_IDS[0]}_grdView.jpg"
    answer = localize(monkeypatch, capsys, url, index_dir, weights, pano, 3)
    assert answer["build_id"] == build_id and len(answer["candidates"]) == 3
    assert {(c["lat"], c["lon"]) for c in answer["candidates"]} <= expected
