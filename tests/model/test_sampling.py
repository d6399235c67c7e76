"""Training as served: displaced aerial crops cut from the orthophoto, semi-positive masks from pair
positions (synthetic worlds, VIGOR, CVACT), look-alike batches, and exact resume with all three."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from pyproj import Transformer

from cli.main import main as cvm_main
from model.config import Preprocessing
from model.cvact import CVACTDataset
from model.data import DatasetError, set_epoch
from model.sampling import (
    EpochGeometry,
    ServedCropDataset,
    epoch_geometry,
    hard_negative_order,
    semi_positive_mask,
)
from model.train import TrainError, build_train_dataset, train
from model.vigor import VigorDataset
from synth import SynthOptions, synthesize
from tests.model.test_cvact import make_cvact
from tests.model.test_train import assert_same_weights, final_weights, make_colour_world, tiny_train_config
from tests.model.test_vigor import make_vigor
from tests.support.tiny import TINY

PREP = Preprocessing(sat_size=32, grd_size=(16, 64))
# Metres per degree of latitude on the mean sphere (R = 6,371,008.8 m), as model.metrics uses.
M_PER_DEG = 6371008.8 * math.pi / 180


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world, every pair in the train split."""
    out = tmp_path_factory.mktemp("served") / "world"
    synthesize(SynthOptions(seed=11, out=out, extent_m=300.0, pairs=16, val_fraction=0.0, workers=1))
    return out


def bilinear(img: np.ndarray, x: float, y: float) -> np.ndarray:
    """Value of `img` at continuous pixel coordinates (x, y) whose pixel centres lie at +0.5."""
    u, v = x - 0.5, y - 0.5
    c0, r0 = math.floor(u), math.floor(v)
    fu, fv = u - c0, v - r0
    p = img.astype(np.float64)
    return (
        p[r0, c0] * (1 - fu) * (1 - fv)
        + p[r0, c0 + 1] * fu * (1 - fv)
        + p[r0 + 1, c0] * (1 - fu) * fv
        + p[r0 + 1, c0 + 1] * fu * fv
    )


def test_offset_crops_are_cut_around_the_drawn_centre(world: Path) -> None:
    meta = json.loads((world / "world.json").read_text())
    side_m, out_px = meta["aerial_m"], meta["aerial_px"]
    with rasterio.open(world / "ortho.tif") as src:
        ortho = src.read([1, 2, 3]).transpose(1, 2, 0)
        west, top, gsd = src.transform.c, src.transform.f, src.transform.a
        to_utm = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
    with (world / "ground.csv").open(newline="") as fh:
        cameras = {row["id"]: (float(row["lat"]), float(row["lon"])) for row in csv.DictReader(fh)}
    ds = ServedCropDataset(world, "train", PREP, 17.5, seed=4)
    ds.epoch = 3
    half, scale = side_m / gsd / 2, side_m / gsd / out_px  # orthophoto pixels
    grid = [(r, c) for r in range(0, out_px, 16) for c in range(3, out_px, 16)]

    def expected(cx: float, cy: float) -> np.ndarray:
        """The crop centred on pixel (cx, cy), sampled at `grid`, interpolated here by hand."""
        return np.array([bilinear(ortho, cx - half + (c + 0.5) * scale, cy - half + (r + 0.5) * scale)
                         for r, c in grid])  # fmt: skip

    checked, offsets = 0, []
    for i, rec in enumerate(ds.records):
        dx, dy = ds.offset(i)
        offsets.append((dx, dy))
        assert abs(dx) <= 17.5 and abs(dy) <= 17.5
        lat, lon = cameras[rec.key]
        east, north = to_utm.transform(lon, lat)
        cx, cy = (east + dx - west) / gsd, (top - (north + dy)) / gsd
        if not (half + 1 < cx < ortho.shape[1] - half - 1 and half + 1 < cy < ortho.shape[0] - half - 1):
            continue  # moved back inside the raster (next test)
        _, crop = ds.load_rgb(i)
        assert crop.shape == (out_px, out_px, 3)
        got = np.array([crop[r, c] for r, c in grid], dtype=np.float64)
        # OpenCV's bilinear weights are fixed-point: within a level or two of the exact value.
        assert np.abs(got - expected(cx, cy)).max() <= 2.0, i
        if math.hypot(dx, dy) > 3.0:
            # The crop around the camera itself is another image: the offset really is applied.
            assert np.abs(got - expected(cx - dx / gsd, cy + dy / gsd)).mean() > 4.0, i
        checked += 1
    assert checked >= 8
    # Uniform draws over the square: spread out, drawn anew in another epoch, the same again.
    assert np.array(offsets).std(axis=0).min() > 5.0
    ds.epoch = 4
    assert all(ds.offset(i) != offsets[i] for i in range(len(ds)))
    ds.epoch = 3
    assert [ds.offset(i) for i in range(len(ds))] == offsets


def test_offset_centres_stay_inside_the_raster(world: Path) -> None:
    ds = ServedCropDataset(world, "train", PREP, 200.0, seed=1)  # far larger than the world allows
    half = ds.aerial_m / ds.gsd_m / 2
    for i in range(len(ds)):
        x, y = ds.tile_centre_px(i)
        assert half <= x <= ds.width - half and half <= y <= ds.height - half


def test_geometry_gives_tile_and_camera_positions(world: Path) -> None:
    ds = ServedCropDataset(world, "train", PREP, 17.5, seed=2)
    set_epoch(ds, 5)
    geo = epoch_geometry(ds)
    half = ds.aerial_m / ds.gsd_m / 2
    checked = 0
    for i in range(len(ds)):
        dx, dy = ds.offset(i)
        x, y = ds.ground_px[i, 0] + dx / ds.gsd_m, ds.ground_px[i, 1] - dy / ds.gsd_m
        if not (half <= x <= ds.width - half and half <= y <= ds.height - half):
            continue  # moved back inside the raster
        checked += 1
        tile_lat, tile_lon, grd_lat, grd_lon = geo.position[i]
        # The tile centre is the camera moved by the offset (UTM grid and true north differ by
        # well under a degree here, so metres east/north match to a few centimetres).
        north = (tile_lat - grd_lat) * M_PER_DEG
        east = (tile_lon - grd_lon) * M_PER_DEG * math.cos(math.radians(grd_lat))
        assert east == pytest.approx(dx, abs=0.3) and north == pytest.approx(dy, abs=0.3)
    assert checked >= 8


def test_offset_is_refused_for_data_without_an_orthophoto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cvusa = make_colour_world(tmp_path / "cvusa", n_train=8, n_val=2)
    code = cvm_main(["train", "--data", str(cvusa), "--out", str(tmp_path / "o"), "--offset-m", "17.5"])
    assert code == 2
    assert f"{cvusa} is a CVUSA root" in capsys.readouterr().err
    vigor = make_vigor(tmp_path / "vigor")
    with pytest.raises(DatasetError, match="applies to synthetic world folders"):
        build_train_dataset(tiny_train_config(vigor, tmp_path / "o2", offset_m=17.5), PREP)


def metres_north(lat0: float, metres: float) -> float:
    return lat0 + metres / M_PER_DEG


def test_semi_positive_mask_on_planted_positions() -> None:
    lat0, lon0 = 47.0, 8.0
    # pair 0: tile and camera at the origin; pair 1: camera 30 m north, its tile 60 m north;
    # pair 2: 500 m north; pair 3: at the origin but from another data folder (group).
    rows = [
        (lat0, lon0, lat0, lon0),
        (metres_north(lat0, 60), lon0, metres_north(lat0, 30), lon0),
        (metres_north(lat0, 500), lon0, metres_north(lat0, 500), lon0),
        (lat0, lon0, lat0, lon0),
    ]
    position = torch.tensor(rows, dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1])
    mask = semi_positive_mask(position, group, 35.0)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = True  # camera 1 is 30 m from tile 0's centre
    expected[1, 0] = False  # camera 0 is 60 m from tile 1's centre
    np.testing.assert_array_equal(mask.numpy(), expected)
    wider = semi_positive_mask(position, group, 65.0).numpy()
    assert wider[0, 1] and wider[1, 0] and not wider[0, 3] and not wider[2].any()
    unknown = position.clone()
    unknown[1] = float("nan")
    assert not semi_positive_mask(unknown, group, 65.0).numpy().any()


def test_vigor_semi_positives_are_masked_by_label(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "vigor")
    ds = VigorDataset(root, "train", "cross-area", PREP)
    geo = epoch_geometry(ds)
    assert geo.tiles is not None
    # Two queries per city (New York, then Seattle); each city's first query's positive tile is
    # the second one's last semi-positive, and the second's positive is the first's first one.
    np.testing.assert_array_equal(geo.group, [0, 0, 1, 1])
    # The positions are the tiles' centres and the panoramas' offsets (VigorDataset.query_latlon).
    np.testing.assert_allclose(geo.position[:, 2:], ds.query_latlon())
    np.testing.assert_allclose(geo.position[:, :2], ds.gallery_latlon[ds.positive])
    position, group, tiles = geo.take(torch.arange(4))
    by_label = semi_positive_mask(position, group, 1.0, tiles).numpy()
    expected = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(by_label, expected)
    # The tiles are ~67 m apart: by distance alone (36 m, half a tile) nothing is near.
    assert not semi_positive_mask(position, group, 36.0).numpy().any()


def test_cvact_positions_from_utm(tmp_path: Path) -> None:
    ds = CVACTDataset(make_cvact(tmp_path / "cvact", folder="ANU_data_test"), "test", PREP)
    geo = epoch_geometry(ds)
    position, group, _ = geo.take(torch.arange(len(ds)))
    # Pairs 0 and 1 are 5 m apart in UTM (3 m east, 4 m north), pair 2 100 m from pair 0.
    assert semi_positive_mask(position, group, 5.2).numpy()[0, 1]
    assert not semi_positive_mask(position, group, 4.8).numpy()[0, 1]
    assert not semi_positive_mask(position, group, 99.0).numpy()[0, 2]
    assert semi_positive_mask(position, group, 101.0).numpy()[0, 2]


def planted_geometry(n: int, near: tuple[int, int] | None = None) -> EpochGeometry:
    """Pairs 1 km apart along a meridian; `near` puts two of them 10 m apart."""
    lat = np.array([metres_north(47.0, 1000.0 * i) for i in range(n)])
    if near is not None:
        lat[near[1]] = metres_north(lat[near[0]], 10.0)
    pos = np.stack([lat, np.full(n, 8.0), lat, np.full(n, 8.0)], axis=1)
    return EpochGeometry(pos, np.zeros(n, dtype=np.int64))


def clustered(n_clusters: int, size: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Descriptors in tight clusters of `size` around orthogonal directions, in a shuffled order;
    returns them and each row's cluster."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_clusters, 16)
    label = np.repeat(np.arange(n_clusters), size)
    order = np.random.default_rng(seed).permutation(len(label))
    label = label[order]
    desc = centres[torch.from_numpy(label)] + 0.01 * torch.randn(len(label), 16, generator=gen)
    return torch.nn.functional.normalize(desc, dim=1), label


def test_hard_negative_batches_are_neighbour_groups() -> None:
    desc, label = clustered(4, 6)
    n = len(label)
    geo = planted_geometry(n)
    order = hard_negative_order(desc, np.arange(n), n, geo, 35.0, 6, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(n))
    batches = order.view(-1, 6).numpy()
    # Every batch is one cluster: the look-alikes are trained against each other.
    assert all(len(set(label[b])) == 1 for b in batches)
    again = hard_negative_order(desc, np.arange(n), n, geo, 35.0, 6, seed=3, epoch=1)
    assert torch.equal(order, again)


def test_hard_negative_batches_keep_near_pairs_apart() -> None:
    desc, label = clustered(3, 4, seed=1)
    n = len(label)
    a, b = np.flatnonzero(label == 0)[:2]
    geo = planted_geometry(n, near=(int(a), int(b)))
    order = hard_negative_order(desc, np.arange(n), n, geo, 35.0, 4, seed=0, epoch=2).numpy()
    assert sorted(order.tolist()) == list(range(n))
    for s in range(0, n - n % 4, 4):
        batch = set(order[s : s + 4].tolist())
        assert not {int(a), int(b)} <= batch
    # Cluster 0 cannot fill a batch on its own now; every batch is still mostly look-alikes
    # (at least 3 of its 4 from one cluster), the rest taken from the next most similar.
    for s in range(0, n, 4):
        assert np.bincount(label[order[s : s + 4]]).max() >= 3


def test_rows_without_descriptors_still_appear_once() -> None:
    desc, label = clustered(2, 4)
    geo = planted_geometry(10)
    index = np.arange(8)  # rows 8 and 9 failed to load
    order = hard_negative_order(desc, index, 10, geo, 35.0, 4, seed=0, epoch=1)
    assert sorted(order.tolist()) == list(range(10))
    assert set(order[-2:].tolist()) == {8, 9}  # the short remainder goes last


def test_vigor_training_runs_with_semi_positives(tmp_path: Path) -> None:
    root = make_vigor(tmp_path / "vigor")
    out = tmp_path / "run"
    cfg = tiny_train_config(
        Path(f"{root}@cross-area"), out, batch_size=2, epochs=2, semi_positive_m=36.0, hard_negatives=True
    )
    result = train(cfg)
    assert result.step == 4 and len(result.history) == 2
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    # The command line reaches the same options.
    model_json = tmp_path / "tiny.json"
    model_json.write_text(json.dumps(TINY.to_dict()))
    argv = ["train", "--data", f"{root}@cross-area", "--out", str(tmp_path / "cli"), "--workers", "0",
            "--threads", "1", "--epochs", "1", "--batch-size", "2", "--model-config", str(model_json),
            "--semi-positive-m", "36", "--hard-negatives"]  # fmt: skip
    assert cvm_main(argv) == 0
    saved = json.loads((tmp_path / "cli" / "train_config.json").read_text())
    assert saved["semi_positive_m"] == 36.0 and saved["hard_negatives"] is True


def test_resume_with_the_new_options_equals_uninterrupted(world: Path, tmp_path: Path) -> None:
    options = {"offset_m": 17.5, "semi_positive_m": 35.0, "hard_negatives": True, "augment": True}
    ref = tmp_path / "ref"
    train(tiny_train_config(world, ref, **options))  # 16 pairs, batch 4: 4 steps per epoch

    class Crash(Exception):
        pass

    def crash(info: object) -> None:
        if getattr(info, "step", 0) == 6:  # in the middle of epoch 2, after mining its batches
            raise Crash

    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_train_config(world, out, **options), on_step=crash)
    train(tiny_train_config(world, out, **options))
    assert_same_weights(final_weights(out), final_weights(ref))
    # A run without the options is another run: resuming it with them is refused.
    with pytest.raises(TrainError, match="offset_m"):
        train(tiny_train_config(world, out, epochs=3, **{**options, "offset_m": 10.0}))


def test_several_folders_are_numbered_together(world: Path, tmp_path: Path) -> None:
    # Two folders: the second's pairs come after the first's in the epoch order, the geometry
    # and the mined batches (each folder its own group, so equal positions are not near).
    cfg = tiny_train_config(world, tmp_path / "run", epochs=1, offset_m=17.5, semi_positive_m=35.0,
                            hard_negatives=True, checkpoint_minutes=60.0)  # fmt: skip
    cfg = replace(cfg, data=(str(world), str(world)))
    dataset = build_train_dataset(cfg, TINY.preprocessing)
    set_epoch(dataset, 1)
    geo = epoch_geometry(dataset)
    n = len(dataset)
    assert n == 32 and sorted(set(geo.group.tolist())) == [0, 16]
    np.testing.assert_array_equal(geo.position[:16, 2:], geo.position[16:, 2:])  # same cameras

    class Stop(Exception):
        pass

    def stop(info: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(replace(cfg, checkpoint_minutes=0.0), on_step=stop)
    order = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state"]["permutation"]
    assert sorted(order.tolist()) == list(range(n))  # every pair of both folders, once
