"""Same seed -> same bytes (whatever the worker count); different seeds -> different worlds; CLI errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cli.main import main as cvm_main
from synth import SynthOptions, SynthResult, synthesize
from tests.support.synth_world import SMALL


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_with_two_workers(small_world: SynthResult, tmp_path: Path) -> None:
    again = synthesize(SynthOptions(seed=7, out=tmp_path / "again", workers=2, **SMALL))  # type: ignore[arg-type]
    first, second = digests(small_world.out), digests(again.out)
    assert len(first) == 3 + 4 * 12 + 3  # ortho, ground.csv, world.json; 4 images a pair; 3 CVUSA CSVs
    assert first == second


def test_different_seed_gives_a_different_world(small_world: SynthResult, tmp_path: Path) -> None:
    other = synthesize(SynthOptions(seed=8, out=tmp_path / "other", workers=1, **SMALL))  # type: ignore[arg-type]
    first, second = digests(small_world.out), digests(other.out)
    assert first["ortho.tif"] != second["ortho.tif"]
    panos = [k for k in first if k.startswith("ground/")]
    assert sum(first[k] != second[k] for k in panos) == len(panos)
    assert (small_world.out / "ground.csv").read_text() != (other.out / "ground.csv").read_text()


def test_cli_rejects_bad_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cvm_main(["synth", "--seed", "1", "--out", str(tmp_path / "w"), "--origin", "nowhere"])
    assert rc == 2
    assert "--origin must be LAT,LON" in capsys.readouterr().err


def test_cli_refuses_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    rc = cvm_main(["synth", "--seed", "1", "--out", str(tmp_path), "--extent-m", "300", "--pairs", "2"])
    assert rc == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--extent-m", "50"], "--extent-m"),
        (["--pairs", "0"], "--pairs"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--gsd-m", "5"], "--gsd-m"),
    ],
)
def test_cli_rejects_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    rc = cvm_main(["synth", "--seed", "1", "--out", str(tmp_path / "w"), *flags])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_writes_a_world_with_all_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    rc = cvm_main(
        [
            "synth",
            "--seed",
            "3",
            "--out",
            str(out),
            "--extent-m",
            "200",
            "--pairs",
            "3",
            "--val-fraction",
            "1",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    assert "3 pairs (0 train, 3 val)" in capsys.readouterr().out
    assert (out / "cvusa/splits/train-19zl.csv").read_text() == ""
    assert len((out / "cvusa/splits/val-19zl.csv").read_text().splitlines()) == 3


def test_overwrite_replaces_earlier_outputs_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "w"
    small = {"extent_m": 200.0, "val_fraction": 1.0, "workers": 1}
    synthesize(SynthOptions(seed=3, out=out, pairs=3, **small))  # type: ignore[arg-type]
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty"):
        synthesize(SynthOptions(seed=3, out=out, pairs=2, **small))  # type: ignore[arg-type]
    synthesize(SynthOptions(seed=3, out=out, pairs=2, overwrite=True, **small))  # type: ignore[arg-type]
    assert sorted(p.name for p in (out / "ground").iterdir()) == ["0000001.jpg", "0000002.jpg"]
    assert len(list((out / "cvusa/bingmap/19").iterdir())) == 2
    assert len((out / "ground.csv").read_text().splitlines()) == 3  # header and two pairs
    assert (out / "notes.txt").read_text() == "keep me"
