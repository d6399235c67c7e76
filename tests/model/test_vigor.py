"""VIGOR: split files on fixture trees (both protocols, both image layouts), bad files reported by
name, tile geometry, the real sample pair, and the protocol figures on planted descriptors."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.main import main as cvm_main
from model.config import Preprocessing
from model.cvm_net import build_model
from model.data import DatasetError
from model.geodata import open_protocol_dataset
from model.protocols import evaluate_protocol, vigor_figures
from model.vigor import VigorDataset, metres_per_pixel, offset_latlon, tile_centre
from tests.support.tiny import TINY, tiny_checkpoint

PREP = Preprocessing(sat_size=32, grd_size=(16, 64))
CITY_LAT = {"NewYork": 40.71, "Seattle": 47.60, "SanFrancisco": 37.77, "Chicago": 41.88}
CITY_LON = {"NewYork": -74.01, "Seattle": -122.33, "SanFrancisco": -122.42, "Chicago": -87.63}
# Metres per degree of latitude on the mean sphere (R = 6,371,008.8 m).
M_PER_DEG = 6371008.8 * math.pi / 180


def tiles_of(city: str) -> list[str]:
    lat, lon = CITY_LAT[city], CITY_LON[city]
    return [f"satellite_{lat + 0.0006 * i:.6f}_{lon:.6f}.png" for i in range(3)]


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    path.write_bytes(buf.tobytes())


def label_line(pano: str, tiles: list[str], offsets: list[tuple[float, float]]) -> str:
    return " ".join([pano] + [f"{t} {d0} {d1}" for t, (d0, d1) in zip(tiles, offsets, strict=True)]) + "\n"


OFFSETS = [(12.5, -30.0), (12.5, 610.0), (-627.5, -30.0), (-627.5, 610.0)]


def make_vigor(root: Path, layout: str = "original") -> Path:
    """Four cities of three tiles; per city a same-area train and test query and two cross-area ones."""
    rng = np.random.default_rng(0)
    for city in CITY_LAT:
        tiles = tiles_of(city)
        (root / "splits" / city).mkdir(parents=True)
        (root / "splits" / city / "satellite_list.txt").write_text("".join(t + "\n" for t in tiles))
        order = [tiles[0], tiles[1], tiles[2], tiles[1]]
        lines = {
            "same_area_balanced_train.txt": [
                label_line(f"tr_{city},{CITY_LAT[city]},{CITY_LON[city]},.jpg", order, OFFSETS)
            ],
            "same_area_balanced_test.txt": [label_line(f"te_{city},1,2,.jpg", order[::-1], OFFSETS)],
            "pano_label_balanced.txt": [
                label_line(f"all{k}_{city},1,2,.jpg", order[k:] + order[:k], OFFSETS) for k in range(2)
            ],
        }
        for name, text in lines.items():
            (root / "splits" / city / name).write_text("".join(text))
        sat_dir = root / city / "satellite" if layout == "original" else root / "satellite" / city
        pano_dir = root / city / "panorama" if layout == "original" else root / "ground" / city
        for t in tiles:
            write_image(sat_dir / t, rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        for text in lines.values():
            for line in text:
                write_image(pano_dir / line.split()[0], rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
    return root


def test_same_area_test_split(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "VIGOR")
    ds = VigorDataset(root, "test", "same-area", PREP)
    assert ds.cities == ("NewYork", "Seattle", "SanFrancisco", "Chicago")
    assert len(ds.gallery_paths) == 12 and len(ds) == 4
    assert ds.gallery_paths[3] == root / "Seattle/satellite" / tiles_of("Seattle")[0]
    # test lines list [t1, t2, t1, t0] (reversed order): positive t1 of each city
    assert ds.positive.tolist() == [1, 4, 7, 10]
    assert ds.semi_positive.tolist()[1] == [5, 4, 3]
    np.testing.assert_array_equal(ds.offsets[0], np.array(OFFSETS))
    assert ds.records[1].grd == root / "Seattle/panorama" / "te_Seattle,1,2,.jpg"
    assert ds.records[1].sat == ds.gallery_paths[4]
    lat, lon = tile_centre(tiles_of("Chicago")[2])
    assert (lat, lon) == (pytest.approx(41.8812), pytest.approx(-87.63))
    np.testing.assert_allclose(ds.gallery_latlon[11], [41.8812, -87.63])
    g, s, _ = ds[0]
    assert g.shape == (3, 16, 64) and s.shape == (3, 32, 32)


def test_cross_area_protocol_and_val_alias(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "VIGOR", layout="repacked")
    test = VigorDataset(root, "val", "cross-area", PREP)
    assert test.split == "test" and test.cities == ("SanFrancisco", "Chicago")
    assert len(test.gallery_paths) == 6 and len(test) == 4
    assert test.positive.tolist() == [0, 1, 3, 4]
    assert test.records[0].grd == root / "ground/SanFrancisco" / "all0_SanFrancisco,1,2,.jpg"
    train = VigorDataset(root, "train", "cross-area", PREP)
    assert train.cities == ("NewYork", "Seattle") and len(train) == 4
    same_train = open_protocol_dataset(str(root), "train", PREP, augment=True)
    assert (
        isinstance(same_train, VigorDataset) and same_train.protocol == "same-area" and len(same_train) == 4
    )
    cross = open_protocol_dataset(f"{root}@cross-area", "test", PREP)
    assert isinstance(cross, VigorDataset) and cross.protocol == "cross-area"


def test_bad_label_files_are_reported_by_name(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "VIGOR")
    labels = root / "splits/Seattle/same_area_balanced_test.txt"
    labels.write_text(label_line("p.jpg", ["satellite_1_2.png"] + tiles_of("Seattle")[:3], OFFSETS))
    with pytest.raises(DatasetError, match=r"same_area_balanced_test.txt:1: tile satellite_1_2.png is not"):
        VigorDataset(root, "test", "same-area", PREP)
    labels.write_text("p.jpg " + tiles_of("Seattle")[0] + " 1 2\n")
    with pytest.raises(DatasetError, match=r"test.txt:1: expected a panorama and 4 x"):
        VigorDataset(root, "test", "same-area", PREP)
    labels.unlink()
    with pytest.raises(DatasetError, match=str(labels)):
        VigorDataset(root, "test", "same-area", PREP)
    with pytest.raises(DatasetError, match="not satellite_<lat>_<lon>"):
        tile_centre("tile.png")


def test_missing_files_are_listed_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_vigor(tmp_path / "VIGOR")
    pano = root / "Chicago/panorama/te_Chicago,1,2,.jpg"
    pano.unlink()
    tile = root / "NewYork/satellite" / tiles_of("NewYork")[0]  # a semi-positive, in the gallery
    tile.unlink()
    with caplog.at_level(logging.WARNING):
        ds = VigorDataset(root, "test", "same-area", PREP)
    assert ds.missing == [pano] and len(ds) == 3 and str(pano) in caplog.text
    assert ds.gallery_missing == [tile]
    assert ds.positive.tolist() == [1, 4, 7]  # the remaining queries keep their labels


def test_ground_resolution_and_offsets() -> None:
    equator = 2 * math.pi * 6378137.0 / 256 / 2**20  # 0.1492910708... m
    assert metres_per_pixel(0.0) == pytest.approx(0.14929107, abs=1e-8)
    assert metres_per_pixel(60.0) == pytest.approx(equator / 2)
    lat, lon = 40.7, -74.0
    mpp = equator * math.cos(math.radians(lat))
    south = offset_latlon(np.array([lat]), np.array([lon]), np.array([100.0]), np.array([0.0]))[0]
    assert south[1] == pytest.approx(lon, abs=1e-12)
    assert (lat - south[0]) * M_PER_DEG == pytest.approx(100 * mpp, rel=3e-3)
    west = offset_latlon(np.array([lat]), np.array([lon]), np.array([0.0]), np.array([100.0]))[0]
    assert west[0] == pytest.approx(lat, abs=1e-12)
    assert (lon - west[1]) * M_PER_DEG * math.cos(math.radians(lat)) == pytest.approx(100 * mpp, rel=3e-3)


def test_vigor_figures_on_planted_answers() -> None:
    # Five tiles on a north-south line, 0.0006 deg (about 66.7 m) apart.
    lat0, lon = 40.7, -74.0
    gallery = np.array([[lat0 + 0.0006 * j, lon] for j in range(5)])
    sat = np.eye(5)
    # query 0: top-1 its positive 0; query 1: top-1 its semi-positive 2; query 2: top-1 tile 4,
    # neither its positive 3 nor a semi-positive.
    grd = np.stack([sat[0], sat[2] + 0.5 * sat[1], sat[4] + 0.5 * sat[3]])
    positive = np.array([0, 1, 3])
    semi = np.array([[1, 2, 3], [2, -1, -1], [2, 1, 0]])
    offsets_px = np.array([[30.0, 40.0], [0.0, 0.0], [0.0, 0.0]])
    query = offset_latlon(gallery[positive, 0], gallery[positive, 1], offsets_px[:, 0], offsets_px[:, 1])
    rep = vigor_figures(grd, sat, positive, semi, query, gallery)
    assert rep.retrieval.r1 == pytest.approx(100 / 3) and rep.retrieval.r5 == 100.0
    assert rep.retrieval.k1pct == 1 and rep.gallery == 5 and rep.queries == 3
    assert rep.accepted["hit_rate"] == pytest.approx(200 / 3)
    mpp = 2 * math.pi * 6378137.0 / 256 / 2**20 * math.cos(math.radians(lat0))
    step = 0.0006 * M_PER_DEG
    expected = sorted([50 * mpp, step, step])  # 30-40-50 px triangle; one tile step twice
    m = rep.metres
    assert m.median_m == pytest.approx(expected[1], rel=3e-3)
    within = [m.within_1m, m.within_5m, m.within_10m, m.within_25m, m.within_50m]
    assert within == pytest.approx([0.0, 0.0, 100 / 3, 100 / 3, 100 / 3])
    assert 50 * mpp == pytest.approx(5.66, abs=0.01)  # so the 5 m / 10 m split above is meaningful


def test_evaluate_and_eval_command_on_fixture_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_vigor(tmp_path / "VIGOR")
    bad = root / "SanFrancisco/satellite" / tiles_of("SanFrancisco")[0]
    bad.write_bytes(b"not a png")  # the positive of one SanFrancisco query, unreadable
    net = build_model(TINY)
    rep = evaluate_protocol(net, VigorDataset(root, "test", "cross-area", TINY.preprocessing), batch_size=4)
    assert rep.dataset == "VIGOR" and rep.protocol == "cross-area"
    assert rep.gallery == 5 and rep.skipped_tiles == 1 and rep.queries == 3 and rep.skipped_queries == 1
    weights = tiny_checkpoint(tmp_path / "w.pt")
    code = cvm_main(
        ["eval", "--weights", str(weights), "--data", f"{root}@cross-area", "--split", "test", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["protocol"]["gallery"] == 5 and "hit_rate" in report["protocol"]["accepted"]
    code = cvm_main(["eval", "--weights", str(weights), "--data", str(root), "--baseline", "random"])
    assert code == 2 and "gallery" in capsys.readouterr().err


def test_real_hcnet_pair(shared_data: Path, tmp_path: Path) -> None:
    real = shared_data / "realpairs/HC-Net/figure/VIGOR_exp"
    root = make_vigor(tmp_path / "VIGOR")
    ds = VigorDataset(root, "test", "same-area", PREP)
    ds.records[0].grd.unlink()
    ds.records[0].sat.unlink()
    os.symlink(real / "pano.png", ds.records[0].grd)
    os.symlink(real / "sat.png", ds.records[0].sat)
    grd, sat = ds.load_rgb(0)
    assert grd.shape == (1024, 2048, 3) and sat.shape == (640, 640, 3)  # 2:1 sphere, 640 px tile
    g, s, _ = ds[0]
    assert g.shape == (3, 16, 64) and s.shape == (3, 32, 32)
