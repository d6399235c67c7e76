"""CVACT: ACT_data.mat on fixture trees (v5 and v7.3), the image layouts, the real sample pair, and
the protocol figures on planted descriptors."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from cli.main import main as cvm_main
from model.config import Preprocessing
from model.cvact import CVACTDataset, neighbours_within, read_act_data
from model.cvm_net import build_model
from model.data import DatasetError
from model.evaluate import open_eval_dataset
from model.geodata import open_protocol_dataset
from model.metrics import rank_gallery
from model.protocols import cvact_figures, evaluate_protocol
from model.train import make_train_config, train
from tests.support.tiny import TINY, tiny_checkpoint

PREP = Preprocessing(sat_size=32, grd_size=(16, 64))
IDS = ["__-DFIFxvZBCn1873qkqXA", "__-HLmaxPZ3bHbiNhPzi0w", "__0GfgYPzGYvz-yEi0DDdg", "__0Y7ByQ93HhK2HePuNZ-g"]
UTM = np.array([[692000.0, 6091000.0], [692003.0, 6091004.0], [692100.0, 6091000.0], [692500.0, 6091500.0]])


def write_act_data(path: Path, ids: list[str], utm: np.ndarray, **sets: list[int]) -> None:
    """ACT_data.mat with the real variable names: panoIds, utm, <x>Set.<x>Ind (1-based columns)."""
    content: dict[str, object] = {"panoIds": np.array(ids), "utm": utm}
    for struct, (field, rows) in {
        "trainSet": ("trainInd", sets.get("train")),
        "valSet": ("valInd", sets.get("val")),
        "valSetAll": ("valInd", sets.get("test")),
    }.items():
        if rows is not None:
            content[struct] = {field: np.array(rows, dtype=np.float64).reshape(-1, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), content)


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    path.write_bytes(buf.tobytes())


def banded_pano(h: int = 40, w: int = 80) -> np.ndarray:
    """Top quarter red, middle half green, bottom quarter blue."""
    pano = np.zeros((h, w, 3), np.uint8)
    pano[: h // 4] = (255, 0, 0)
    pano[h // 4 : 3 * h // 4] = (0, 255, 0)
    pano[3 * h // 4 :] = (0, 0, 255)
    return pano


def make_cvact(root: Path, folder: str = "ANU_data_small", ids: list[str] = IDS) -> Path:
    write_act_data(root / "ACT_data.mat", ids, UTM[: len(ids)], train=[1, 3], val=[4, 2], test=[1, 2, 3, 4])
    rng = np.random.default_rng(0)
    for pid in ids:
        write_image(root / folder / "streetview" / f"{pid}_grdView.jpg", banded_pano())
        sat = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        write_image(root / folder / "satview_polish" / f"{pid}_satView_polish.jpg", sat)
    return root


def test_read_act_data_converts_one_based_indices(tmp_path: Path) -> None:
    write_act_data(tmp_path / "ACT_data.mat", IDS, UTM, train=[1, 3], val=[4, 2])
    meta = read_act_data(tmp_path / "ACT_data.mat")
    assert meta.pano_ids == IDS
    np.testing.assert_array_equal(meta.utm, UTM)
    assert meta.splits["train"].tolist() == [0, 2]
    assert meta.splits["val"].tolist() == [3, 1]
    assert "test" not in meta.splits


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val": [0, 2]}, "indices outside 1..4"),
        ({"val": [5]}, "indices outside 1..4"),
        ({"utm": UTM[:3]}, "utm has shape"),
    ],
)
def test_bad_act_data_is_reported_by_name(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "ACT_data.mat"
    write_act_data(path, IDS, change.get("utm", UTM), val=change.get("val", [1]))
    with pytest.raises(DatasetError, match=message) as err:
        read_act_data(path)
    assert str(path) in str(err.value)


def test_missing_variable_and_unreadable_file(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "ACT_data.mat"), {"panoIds": np.array(IDS)})
    with pytest.raises(DatasetError, match="no 'utm' variable"):
        read_act_data(tmp_path / "ACT_data.mat")
    (tmp_path / "ACT_data.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DatasetError, match="cannot read"):
        read_act_data(tmp_path / "ACT_data.mat")


def test_v73_hdf5_file_is_read(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "ACT_data.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        # MATLAB stores arrays transposed: a char matrix as (length, n) uint16, utm as (2, n).
        f["panoIds"] = np.array([[ord(c) for c in pid] for pid in IDS], dtype=np.uint16).T
        f["utm"] = UTM.T
        f.create_group("valSet")["valInd"] = np.array([[2.0, 4.0]])
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    )
    with path.open("r+b") as fh:
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")
    meta = read_act_data(path)
    assert meta.pano_ids == IDS
    np.testing.assert_array_equal(meta.utm, UTM)
    assert meta.splits["val"].tolist() == [1, 3]


def test_dataset_val_split_order_positions_and_middle_rows(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "CVACT")
    ds = CVACTDataset(root, "val", PREP)
    assert [r.key for r in ds.records] == [IDS[3], IDS[1]]
    assert ds.records[0].grd == root / "ANU_data_small/streetview" / f"{IDS[3]}_grdView.jpg"
    assert ds.records[0].sat == root / "ANU_data_small/satview_polish" / f"{IDS[3]}_satView_polish.jpg"
    np.testing.assert_array_equal(ds.utm, UTM[[3, 1]])
    grd, sat = ds.load_rgb(0)
    assert grd.shape == (20, 80, 3) and sat.shape == (48, 48, 3)
    assert (grd == (0, 255, 0)).all()  # only the horizon band: no red top, no blue bottom
    g, s, index = ds[1]
    assert g.shape == (3, 16, 64) and s.shape == (3, 32, 32) and index == 1


def test_test_split_reads_anu_data_test_and_flat_layout(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "CVACT", folder="ANU_data_test")
    ds = CVACTDataset(root, "test", PREP)
    assert len(ds) == 4 and ds.records[0].grd.parent == root / "ANU_data_test/streetview"
    flat = make_cvact(tmp_path / "flat", folder="")
    assert CVACTDataset(flat, "train", PREP).records[1].sat.parent == flat / "satview_polish"


def test_missing_images_are_listed_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_cvact(tmp_path / "CVACT")
    gone = root / "ANU_data_small/satview_polish" / f"{IDS[1]}_satView_polish.jpg"
    gone.unlink()
    with caplog.at_level(logging.WARNING):
        ds = CVACTDataset(root, "val", PREP)
    assert ds.missing == [gone] and [r.key for r in ds.records] == [IDS[3]]
    assert str(gone) in caplog.text
    np.testing.assert_array_equal(ds.utm, UTM[[3]])  # positions stay with their pairs


def test_unknown_or_absent_split(tmp_path: Path) -> None:
    root = tmp_path / "CVACT"
    write_act_data(root / "ACT_data.mat", IDS, UTM, val=[1])
    with pytest.raises(DatasetError, match="valSetAll.valInd"):
        CVACTDataset(root, "test", PREP)
    with pytest.raises(DatasetError, match="unknown CVACT split"):
        CVACTDataset(root, "holdout", PREP)


def test_data_detection(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "CVACT")
    assert isinstance(open_eval_dataset(root, PREP, "val"), CVACTDataset)
    assert isinstance(open_protocol_dataset(str(root), "train", PREP, augment=True), CVACTDataset)
    with pytest.raises(DatasetError, match="applies to VIGOR"):
        open_protocol_dataset(f"{root}@cross-area", "val", PREP)
    assert open_protocol_dataset(tmp_path, "val", PREP) is None


def test_real_oricnn_pair(shared_data: Path, tmp_path: Path) -> None:
    real = shared_data / "realpairs/OriCNN"
    root = tmp_path / "CVACT"
    write_act_data(root / "ACT_data.mat", IDS[:1], UTM[:1], val=[1])
    for rel, src in (
        (f"streetview/{IDS[0]}_grdView.jpg", real / "pano_img.png"),
        (f"satview_polish/{IDS[0]}_satView_polish.jpg", real / "sat_img.png"),
    ):
        (root / "ANU_data_small" / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, root / "ANU_data_small" / rel)
    ds = CVACTDataset(root, "val", PREP)
    grd, sat = ds.load_rgb(0)
    assert grd.shape == (416, 1664, 3)  # middle half of the 1664 x 832 sphere
    assert sat.shape == (1200, 1200, 3)
    full = cv2.cvtColor(cv2.imread(str(real / "pano_img.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(grd, full[208:624])
    g, s, _ = ds[0]
    assert g.shape == (3, 16, 64) and s.shape == (3, 32, 32) and torch.isfinite(g).all()


# --- protocol figures on planted answers ------------------------------------------------------

# Positions along a line (metres): pair 2 is 3 m from pair 1; the others are far apart.
PLANTED_UTM = np.array([[0.0, 0.0], [100.0, 0.0], [103.0, 0.0], [140.0, 0.0]])


def planted() -> tuple[np.ndarray, np.ndarray]:
    """Tiles e_j; query i ranks tile TOP[i] first, its own tile second (or first when equal)."""
    top = [0, 2, 3, 0]
    sat = np.eye(4)
    grd = np.stack([np.eye(4)[t] + (0.5 * np.eye(4)[i] if t != i else 0) for i, t in enumerate(top)])
    return grd, sat


def test_neighbours_within_radius() -> None:
    near = neighbours_within(PLANTED_UTM, 5.0)
    assert [a.tolist() for a in near] == [[], [2], [1], []]
    pts = np.array([[0.0, 0.0], [4.99, 0.0], [5.01, 0.0], [3.0, 4.0]])  # 5.01 m is out, (3, 4) is 5 m
    assert [a.tolist() for a in neighbours_within(pts, 5.0)] == [[1, 3], [0, 2, 3], [1, 3], [0, 1, 2]]


def test_cvact_figures_on_planted_answers() -> None:
    grd, sat = planted()
    rep = cvact_figures(grd, sat, PLANTED_UTM, "val")
    # exact-match ranks: 0, 1, 1, 1
    assert rep.retrieval.r1 == 25.0 and rep.retrieval.r5 == 100.0 and rep.retrieval.k1pct == 1
    # within 5 m: query 1's top-1 (tile 2, 3 m away) counts; query 2's (tile 3) does not
    assert rep.accepted["r1"] == 50.0 and rep.accepted["r5"] == 100.0
    # errors to the top-1 tile centre: 0, 3, 37, 140 m
    m = rep.metres
    assert (m.within_1m, m.within_5m, m.within_10m, m.within_25m, m.within_50m) == (
        25.0,
        50.0,
        50.0,
        50.0,
        75.0,
    )
    assert m.median_m == pytest.approx(20.0)
    assert rep.queries == rep.gallery == 4


def test_rank_gallery_ties_count_for_the_query() -> None:
    sat = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    grd = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = rank_gallery(grd, sat, np.array([1, 0]), np.array([[-1], [2]]))
    assert r.ranks.tolist() == [0, 1] and r.top1.tolist() == [1, 2]
    assert r.accepted_ranks is not None and r.accepted_ranks.tolist() == [0, 0]
    with pytest.raises(ValueError, match="indices into 3"):
        rank_gallery(grd, sat, np.array([0, 3]))


def test_evaluate_and_eval_command_on_fixture_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cvact(tmp_path / "CVACT", folder="ANU_data_test")
    net = build_model(TINY)
    rep = evaluate_protocol(net, CVACTDataset(root, "test", TINY.preprocessing), batch_size=3)
    assert rep.dataset == "CVACT" and rep.queries == 4 and rep.skipped_queries == 0
    assert 0 <= rep.metres.within_1m <= rep.metres.within_50m <= 100
    weights = tiny_checkpoint(tmp_path / "w.pt")
    code = cvm_main(["eval", "--weights", str(weights), "--data", str(root), "--split", "test", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    import json

    report = json.loads(out)
    assert report["protocol"]["dataset"] == "CVACT" and report["pairs"] == 4
    assert set(report["protocol"]["metres"]) >= {"within_1m", "within_50m", "median_m"}


def test_train_runs_on_cvact(tmp_path: Path) -> None:
    root = make_cvact(tmp_path / "CVACT", ids=IDS)
    base = make_train_config(
        [str(root)],
        str(tmp_path / "out"),
        preset="cpu",
        batch_size=2,
        epochs=1,
        workers=0,
        threads=1,
        checkpoint_minutes=60.0,
        model_config=TINY.to_dict(),
    )
    result = train(replace(base, augment=False))
    assert result.epochs_done == 1 and result.step == 1  # 2 train pairs, batch 2
    assert result.history[-1]["val"]["n"] == 2  # validated on CVACT_val
