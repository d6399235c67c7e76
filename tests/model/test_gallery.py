"""`cvm gallery`: CVACT and VIGOR tiles with their true centres and ground sizes, checked against
values computed here without the code under test (a textbook inverse transverse Mercator for the
UTM positions, published resolutions for the tile sizes), and bad files reported by name."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as cvm_main
from model.data import DatasetError
from model.gallery import cvact_gallery, open_gallery, vigor_gallery
from tests.support.dataset_trees import CVACT_IDS, CVACT_UTM, VIGOR_CENTRES, cvact_tree, vigor_tree
from tests.support.geo_reference import CVACT_AUTHOR_GSD, SLICEMATCH_M_PER_PX, snyder_utm_inverse


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_snyder_reference_is_right_on_a_known_point() -> None:
    # The zone's central meridian on the equator maps to (500 km, 10,000 km) in the south.
    lat, lon = snyder_utm_inverse(500000.0, 10_000_000.0, 55, south=True)
    assert lat == pytest.approx(0.0, abs=1e-9) and lon == pytest.approx(147.0, abs=1e-9)
    # 1 degree of latitude south along the central meridian: 110,574.4 m of meridian arc x k0
    lat, lon = snyder_utm_inverse(500000.0, 10_000_000.0 - 0.9996 * 110574.389, 55, south=True)
    assert lat == pytest.approx(-1.0, abs=1e-6) and lon == pytest.approx(147.0, abs=1e-9)


def test_vigor_gallery_centres_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = vigor_tree(tmp_path / "VIGOR")
    out = tmp_path / "tiles.csv"
    assert cvm_main(["gallery", "--data", str(root), "--out", str(out)]) == 0
    assert "vigor: 7 of 7 tiles written" in capsys.readouterr().out
    rows = read_csv(out)
    expected = [(city, lat, lon) for city in sorted(VIGOR_CENTRES) for lat, lon in VIGOR_CENTRES[city]]
    assert [(r["name"].split("/")[0], float(r["lat"]), float(r["lon"])) for r in rows] == expected
    for row, (city, lat, lon) in zip(rows, expected, strict=True):
        assert Path(row["path"]) == root / city / "satellite" / f"satellite_{lat}_{lon}.png"
        assert Path(row["path"]).is_absolute()
        assert float(row["size_m"]) == pytest.approx(640 * SLICEMATCH_M_PER_PX[city], rel=3e-3)
    # the cities differ by latitude: Seattle's tiles are about 11 % smaller than New York's
    size = {r["name"].split("/")[0]: float(r["size_m"]) for r in rows}
    assert size["Seattle"] < 0.9 * size["NewYork"]


def test_vigor_one_city_and_bad_files_are_reported_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = vigor_tree(tmp_path / "VIGOR")
    gone = root / "NewYork/satellite" / "satellite_40.7136_-74.006.png"
    gone.unlink()
    broken = root / "NewYork/satellite" / "satellite_40.713_-74.0068.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "ny.csv"
    assert cvm_main(["gallery", "--data", str(root), "--city", "NewYork", "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert f"left out: {gone}: missing" in captured.err
    assert f"left out: {broken}: not a readable image" in captured.err
    assert "vigor: 1 of 3 tiles written, 2 left out" in captured.out
    assert [float(r["lat"]) for r in read_csv(out)] == [40.713]
    gallery = vigor_gallery(root, ["NewYork"], check_images=False)
    assert len(gallery.tiles) == 3 and gallery.problems == []  # unchecked: the indexer finds them
    with pytest.raises(DatasetError, match="no tile list for Boston"):
        vigor_gallery(root, ["Boston"])


def test_vigor_bad_tile_name_and_wrong_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = vigor_tree(tmp_path / "VIGOR", {"Chicago": [(41.8781, -87.6298)]})
    assert (
        cvm_main(["gallery", "--data", str(root), "--split", "test", "--out", str(tmp_path / "x.csv")]) == 2
    )
    assert "--split and --utm-epsg apply to CVACT folders" in capsys.readouterr().err
    (root / "splits/Chicago/satellite_list.txt").write_text("tile_without_centre.png\n")
    assert cvm_main(["gallery", "--data", str(root), "--out", str(tmp_path / "x.csv")]) == 2
    assert "tile name 'tile_without_centre.png' is not satellite_<lat>_<lon>" in capsys.readouterr().err
    assert cvm_main(["gallery", "--data", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert "is neither a CVACT folder" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(("split", "pairs"), [("val", [3, 1]), ("test", [0, 1, 2, 3])])
def test_cvact_gallery_centres_from_utm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], split: str, pairs: list[int]
) -> None:
    root = cvact_tree(tmp_path / "CVACT")
    out = tmp_path / "tiles.csv"
    args = ["gallery", "--data", str(root), "--out", str(out)] + (
        ["--split", split] if split != "val" else []
    )
    assert cvm_main(args) == 0
    assert f"cvact: {len(pairs)} of {len(pairs)} tiles written" in capsys.readouterr().out
    rows = read_csv(out)
    folder = "ANU_data_small" if split == "val" else "ANU_data_test"
    assert [r["name"] for r in rows] == [CVACT_IDS[i] for i in pairs]
    gsd, lat0 = CVACT_AUTHOR_GSD
    for row, i in zip(rows, pairs, strict=True):
        lat, lon = snyder_utm_inverse(CVACT_UTM[i][0], CVACT_UTM[i][1], 55, south=True)
        assert float(row["lat"]) == pytest.approx(lat, abs=2e-7)  # about 2 cm
        assert float(row["lon"]) == pytest.approx(lon, abs=2e-7)
        assert -35.5 < lat < -35.1 and 149.0 < lon < 149.2  # Canberra
        expected_size = 1200 * gsd * math.cos(math.radians(lat)) / math.cos(math.radians(lat0))
        assert float(row["size_m"]) == pytest.approx(expected_size, rel=2e-3)
        assert Path(row["path"]) == root / folder / "satview_polish" / f"{CVACT_IDS[i]}_satView_polish.jpg"


def test_cvact_neighbours_are_their_utm_distance_apart(tmp_path: Path) -> None:
    # pairs 1 and 2 are 73 m apart due east in UTM: their centres must be about that far apart
    gallery = cvact_gallery(cvact_tree(tmp_path / "CVACT"), "test")
    a, b = gallery.tiles[0], gallery.tiles[1]
    r = 6371008.8
    dlat, dlon = math.radians(b.lat - a.lat), math.radians(b.lon - a.lon)
    h = (
        math.sin(dlat / 2) ** 2
        + math.cos(math.radians(a.lat)) * math.cos(math.radians(b.lat)) * math.sin(dlon / 2) ** 2
    )
    distance = 2 * r * math.asin(math.sqrt(h))
    # UTM distances carry the zone's scale (about 0.99975 here); the sphere adds up to 0.5 %
    assert distance == pytest.approx(73.0, rel=6e-3)


def test_cvact_missing_tiles_other_epsg_and_bad_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = cvact_tree(tmp_path / "CVACT")
    gone = root / "ANU_data_small/satview_polish" / f"{CVACT_IDS[3]}_satView_polish.jpg"
    gone.unlink()
    out = tmp_path / "tiles.csv"
    assert cvm_main(["gallery", "--data", str(root), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert (
        f"left out: {gone}: missing" in captured.err
        and "cvact: 1 of 2 tiles written, 1 left out" in captured.out
    )
    # --utm-epsg is honoured: the same numbers read in zone 56 south lie about 6 degrees further east
    tile = open_gallery(root, split="test", utm_epsg=32756).tiles[0]
    lat, lon = snyder_utm_inverse(CVACT_UTM[0][0], CVACT_UTM[0][1], 56, south=True)
    assert (tile.lat, tile.lon) == (pytest.approx(lat, abs=2e-7), pytest.approx(lon, abs=2e-7))
    assert 154.0 < tile.lon < 156.0
    assert cvm_main(["gallery", "--data", str(root), "--utm-epsg", "4326", "--out", str(out)]) == 2
    assert "EPSG:4326 is not a projected CRS" in capsys.readouterr().err
    assert cvm_main(["gallery", "--data", str(root), "--city", "NewYork", "--out", str(out)]) == 2
    assert "--city applies to VIGOR folders" in capsys.readouterr().err
    latlon = np.array([[149.1, -35.3], [149.2, -35.2], [149.0, -35.1], [149.3, -35.4]])
    cvact_tree(tmp_path / "degrees", utm=latlon)
    assert cvm_main(["gallery", "--data", str(tmp_path / "degrees"), "--out", str(out)]) == 2
    assert "utm does not hold UTM eastings/northings in metres" in capsys.readouterr().err
