"""CVUSA / Vo & Hays datasets on tiny generated trees: layouts, bad files, augmentation."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.config import CAFFE_BGR_MEAN, Preprocessing
from model.data import (
    CVUSADataset,
    DatasetError,
    SampleFailure,
    VoHaysDataset,
    collate_pairs,
    random_photo_crop,
    report_failures,
)

PREP = Preprocessing(sat_size=32, grd_size=(16, 64))
COLOURS = [(200, 30, 40), (20, 180, 60), (40, 50, 220), (250, 250, 0), (0, 120, 120)]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """PNG bytes under the given (.jpg) name: lossless, so pixel values are exact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    path.write_bytes(buf.tobytes())


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.asarray(rgb, dtype=np.uint8), (h, w, 1))


def make_cvusa(root: Path, n: int = 5, doubled: bool = False) -> list[str]:
    """n solid-colour pairs (pair i in colour i), ids 0000001.., all in train and val."""
    sat_dir = root / ("bingmap/bingmap/19" if doubled else "bingmap/19")
    pano_dir = root / ("streetview/streetview/panos" if doubled else "streetview/panos")
    split_dir = root / ("splits/splits" if doubled else "splits")
    ids = [f"{i + 1:07d}" for i in range(n)]
    for i, key in enumerate(ids):
        _write_png(sat_dir / f"{key}.jpg", _solid(40, 40, COLOURS[i % len(COLOURS)]))
        _write_png(pano_dir / f"{key}.jpg", _solid(20, 110, COLOURS[i % len(COLOURS)]))
    lines = "".join(
        f"bingmap/19/{k}.jpg,streetview/panos/{k}.jpg,streetview/annotations/{k}.png\n" for k in ids
    )
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train-19zl.csv").write_text(lines)
    (split_dir / "val-19zl.csv").write_text(lines)
    return ids


def _expected_bgr(rgb: tuple[int, int, int]) -> list[float]:
    """Channel values after BGR reordering and Caffe mean subtraction, computed by hand."""
    b, g, r = rgb[2], rgb[1], rgb[0]
    return [b - CAFFE_BGR_MEAN[0], g - CAFFE_BGR_MEAN[1], r - CAFFE_BGR_MEAN[2]]


@pytest.mark.parametrize("doubled", [False, True])
def test_cvusa_dataset_reads_both_layouts(tmp_path: Path, doubled: bool) -> None:
    make_cvusa(tmp_path, n=3, doubled=doubled)
    ds = CVUSADataset(tmp_path, "val", prep=PREP)
    assert len(ds) == 3
    grd, sat, index = ds[1]
    assert index == 1
    assert tuple(grd.shape) == (3, 16, 64) and tuple(sat.shape) == (3, 32, 32)
    expected = torch.tensor(_expected_bgr(COLOURS[1]))
    assert torch.allclose(sat[:, 5, 7], expected, atol=1e-4)
    assert torch.allclose(grd[:, 3, 50], expected, atol=1e-4)


def test_cvusa_dataset_drops_missing_files_with_warning(tmp_path: Path, caplog) -> None:
    make_cvusa(tmp_path, n=4)
    gone = tmp_path / "streetview/panos/0000002.jpg"
    gone.unlink()
    with caplog.at_level(logging.WARNING):
        ds = CVUSADataset(tmp_path, "train", prep=PREP)
    assert len(ds) == 3
    assert ds.missing == [gone]
    assert str(gone) in caplog.text
    assert [r.key for r in ds.records] == ["0000001", "0000003", "0000004"]


def test_corrupt_file_is_skipped_and_reported_once(tmp_path: Path, caplog) -> None:
    make_cvusa(tmp_path, n=4)
    bad = tmp_path / "bingmap/19/0000003.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    ds = CVUSADataset(tmp_path, "train", prep=PREP)
    failure = ds[2]
    assert isinstance(failure, SampleFailure) and failure.path == str(bad)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_pairs)
    batches = list(loader) + list(loader)  # two "epochs"
    assert [len(b) for b in batches] == [3, 3]
    assert batches[0].index.tolist() == [0, 1, 3]
    with caplog.at_level(logging.WARNING):
        skipped = sum(report_failures(b.failures) for b in batches)
    assert skipped == 2
    assert len(caplog.records) == 1 and str(bad) in caplog.records[0].getMessage()


def test_collate_of_only_failures_is_empty() -> None:
    batch = collate_pairs([SampleFailure(0, "a.jpg", "broken"), SampleFailure(1, "b.jpg", "broken")])
    assert len(batch) == 0 and len(batch.failures) == 2


def test_cvusa_locations_follow_ids(tmp_path: Path) -> None:
    make_cvusa(tmp_path, n=3)
    (tmp_path / "bingmap/19/0000001.jpg").unlink()
    loc_dir = tmp_path / "split_locations"
    loc_dir.mkdir()
    (loc_dir / "all.csv").write_text("10,20,10.5,20.5,0\n11,21,11.5,21.5,0\n12,22,12.5,22.5,0\n")
    ds = CVUSADataset(tmp_path, "val", prep=PREP)
    loc = ds.locations()
    assert loc is not None
    assert loc.tolist() == [[11, 21, 11.5, 21.5], [12, 22, 12.5, 22.5]]


def test_cvusa_without_locations_file(tmp_path: Path) -> None:
    make_cvusa(tmp_path, n=2)
    assert CVUSADataset(tmp_path, "val", prep=PREP).locations() is None


def test_cvusa_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        CVUSADataset(tmp_path / "nowhere", "val", prep=PREP)
    with pytest.raises(DatasetError, match="val-19zl.csv"):
        CVUSADataset(tmp_path, "val", prep=PREP)
    make_cvusa(tmp_path, n=2)
    (tmp_path / "splits/val-19zl.csv").write_text("only-one-column.jpg\n")
    with pytest.raises(DatasetError, match=r"val-19zl.csv:1"):
        CVUSADataset(tmp_path, "val", prep=PREP)
    with pytest.raises(DatasetError, match="unknown split"):
        CVUSADataset(tmp_path, "test", prep=PREP)


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    make_cvusa(tmp_path, n=2)
    # A satellite image that changes under rotation: a horizontal gradient.
    grad = np.tile(np.linspace(0, 255, 40).astype(np.uint8)[None, :, None], (40, 1, 3))
    _write_png(tmp_path / "bingmap/19/0000001.jpg", grad)
    ds = CVUSADataset(tmp_path, "train", prep=PREP, augment=True, seed=7)
    first = ds[0][1]
    assert torch.equal(first, CVUSADataset(tmp_path, "train", prep=PREP, augment=True, seed=7)[0][1])
    variants = set()
    for epoch in range(12):
        ds.epoch = epoch
        variants.add(ds[0][1].numpy().tobytes())
    assert len(variants) > 1


def test_photo_fraction_one_replaces_panorama_by_photo_crop(tmp_path: Path) -> None:
    make_cvusa(tmp_path, n=2)
    plain = CVUSADataset(tmp_path, "train", prep=PREP)[0][0]
    photo = CVUSADataset(tmp_path, "train", prep=PREP, augment=True, photo_fraction=1.0)[0][0]
    # A 60-90 degree crop covers at most 16 of the 64 columns; the rest is the zero canvas.
    assert torch.count_nonzero(plain[:, :, -1]) == 3 * 16
    assert torch.count_nonzero(photo[:, :, 16:]) == 0
    assert torch.count_nonzero(photo[:, :, 0]) > 0


def test_random_photo_crop_wraps_around() -> None:
    pano = np.zeros((4, 360, 3), dtype=np.uint8)
    pano[:, :, 0] = (np.arange(360) % 256).astype(np.uint8)
    pano[:, :, 1] = (np.arange(360) // 256).astype(np.uint8)
    for seed in range(20):
        crop, fov, start = random_photo_crop(pano, np.random.default_rng(seed))
        cols = crop[0, :, 0].astype(int) + 256 * crop[0, :, 1].astype(int)
        assert 60.0 <= fov <= 90.0
        assert crop.shape[1] == round(fov)  # one column per degree here
        assert cols[0] == start and np.all(np.diff(cols) % 360 == 1)


def test_heading_placement_puts_the_crop_where_it_was_cut(tmp_path: Path) -> None:
    # A panorama whose 110 columns are coloured by column: the placed crop must show, in every
    # canvas column it covers, the colour of the panorama column at the same heading.
    make_cvusa(tmp_path, n=1)
    pano = np.zeros((20, 110, 3), dtype=np.uint8)
    pano[:, :, 0] = np.arange(110, dtype=np.uint8) * 2
    _write_png(tmp_path / "streetview/panos/0000001.jpg", pano)
    for seed in range(5):
        ds = CVUSADataset(tmp_path, "train", prep=PREP, augment=True, photo_fraction=1.0, seed=seed)
        placed = CVUSADataset(
            tmp_path,
            "train",
            prep=PREP,
            augment=True,
            photo_fraction=1.0,
            seed=seed,
            photo_placement="heading",
        )
        at_zero, in_place = ds[0][0], placed[0][0]
        rng = ds.rng(0)
        rng.random()  # the photo_fraction draw
        _, _, start = random_photo_crop(pano, rng)  # the same crop the dataset cut
        shift = round(start * 64 / 110) % 64
        assert torch.equal(in_place, torch.roll(at_zero, shift, dims=2))
        # Red is channel 2 after BGR ordering; + the Caffe mean gives back the pixel value.
        red = in_place[2, 8] + CAFFE_BGR_MEAN[2]
        covered = torch.nonzero(torch.count_nonzero(in_place, dim=(0, 1))).flatten()
        for col in covered[1:-1].tolist():  # inner columns (the edges mix two columns)
            heading_col = (col + 0.5) * 110 / 64
            assert abs(float(red[col]) - 2 * heading_col) < 2 * 2.0
    with pytest.raises(ValueError, match="photo_placement"):
        CVUSADataset(tmp_path, "train", prep=PREP, photo_placement="north")


def test_vo_hays_lists_pair_by_line(tmp_path: Path) -> None:
    for i in range(3):
        _write_png(tmp_path / "street" / f"{i}.jpg", _solid(24, 24, COLOURS[i]))
        _write_png(tmp_path / "over" / f"{i}.jpg", _solid(30, 30, COLOURS[i]))
    (tmp_path / "train.streetview.txt").write_text("".join(f"street/{i}.jpg {i}\n" for i in range(3)))
    (tmp_path / "train.overhead.txt").write_text("".join(f"over/{i}.jpg {i}\n" for i in range(3)))
    ds = VoHaysDataset(tmp_path / "train.streetview.txt", tmp_path / "train.overhead.txt", PREP)
    assert len(ds) == 3
    grd, sat, _ = ds[2]
    expected = torch.tensor(_expected_bgr(COLOURS[2]))
    assert torch.allclose(sat[:, 0, 0], expected, atol=1e-4)
    assert torch.allclose(grd[:, 8, 0], expected, atol=1e-4)
    assert torch.count_nonzero(grd[:, :, 16:]) == 0  # a 90 degree photo spans 16 of 64 columns
    (tmp_path / "short.txt").write_text("over/0.jpg 0\n")
    with pytest.raises(DatasetError, match="short.txt"):
        VoHaysDataset(tmp_path / "train.streetview.txt", tmp_path / "short.txt", PREP)


def test_aligned_augmentation_turns_tile_and_panorama_together(tmp_path: Path) -> None:
    # One bright landmark due east in the tile, and the bright panorama column at azimuth 90:
    # in every sample the tile's landmark and the panorama's bright column must still agree.
    make_cvusa(tmp_path, n=1)
    sat = np.zeros((40, 40, 3), dtype=np.uint8)
    sat[18:22, 30:34] = 255
    pano = np.zeros((20, 128, 3), dtype=np.uint8)
    pano[:, 30:34] = 255  # columns 30-33 of 128: azimuth 84-96 degrees
    _write_png(tmp_path / "bingmap/19/0000001.jpg", sat)
    _write_png(tmp_path / "streetview/panos/0000001.jpg", pano)
    ds = CVUSADataset(tmp_path, "train", prep=PREP, augment=True, seed=3, aligned=True)
    seen = set()
    for epoch in range(24):
        ds.epoch = epoch
        grd, tile, _ = ds[0]
        rows, cols = np.nonzero(tile[0].numpy() > 0)
        centre = (PREP.sat_size - 1) / 2
        tile_az = np.degrees(np.arctan2(cols.mean() - centre, centre - rows.mean())) % 360
        pano_az = (np.argmax(grd[0, 8].numpy()) + 0.5) / grd.shape[2] * 360
        assert abs((pano_az - tile_az + 180) % 360 - 180) < 12, (epoch, pano_az, tile_az)
        seen.add(round(tile_az / 90) % 4)
    assert seen == {0, 1, 2, 3}  # the landmark went round: the turns are really applied


def test_large_ground_jpeg_is_decoded_reduced_as_the_service_does(tmp_path: Path) -> None:
    # PREP's panorama input is 64 x 16; a 520 x 130 JPEG fits it 8 times: decoded at 1/8, 65 x 17.
    make_cvusa(tmp_path, n=1)
    pano = np.tile(np.linspace(0, 255, 520, dtype=np.uint8)[None, :, None], (130, 1, 3))
    ok, buf = cv2.imencode(".jpg", pano)
    assert ok
    (tmp_path / "streetview/panos/0000001.jpg").write_bytes(buf.tobytes())
    ds = CVUSADataset(tmp_path, "train", PREP)
    grd_rgb, sat_rgb = ds.load_rgb(0)
    assert grd_rgb.shape == (17, 65, 3) and sat_rgb.shape == (40, 40, 3)
    grd, _, _ = ds[0]
    assert grd.shape == (3, 16, 64)
