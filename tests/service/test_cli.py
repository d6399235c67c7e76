"""`cvm localize` and the start-up checks of `cvm serve` (no HTTP server is started)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cli import localize as cli_localize
from cli import serve as cli_serve
from tests.support.service_world import PANO_TILE, PHOTO_TILE, World, make_world, panorama_bytes, photo_bytes


def _env(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    monkeypatch.setenv("CVM_DATA_DIR", str(world.root))
    monkeypatch.setenv("CVM_DATABASE_URL", world.db_url)
    monkeypatch.setenv("CVM_INDEX_DIR", str(world.index_dir))
    monkeypatch.setenv("CVM_WEIGHTS", str(world.weights))


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_localize_cli_json_matches_planted_tile(monkeypatch, capsys, world: World, tmp_path: Path) -> None:
    _env(monkeypatch, world)
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    assert _run(cli_localize, [str(photo), "--k", "3", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    build = next(iter(world.builds))
    assert body["build_id"] == build and body["kind"] == "panorama"
    assert len(body["candidates"]) == 3
    assert body["candidates"][0]["tile_id"] == world.builds[build]["tile_ids"][PANO_TILE]
    assert body["candidates"][0]["lat"] == pytest.approx(world.tiles[PANO_TILE].lat, abs=1e-9)


def test_localize_cli_table(monkeypatch, capsys, world: World, tmp_path: Path) -> None:
    _env(monkeypatch, world)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes())
    assert _run(cli_localize, [str(photo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "kind photo" in lines[0]
    first = lines[2].split()
    build = next(iter(world.builds))
    assert first[:2] == ["1", str(world.builds[build]["tile_ids"][PHOTO_TILE])]
    assert float(first[2]) == pytest.approx(world.tiles[PHOTO_TILE].lat, abs=1e-6)
    assert float(first[3]) == pytest.approx(world.tiles[PHOTO_TILE].lon, abs=1e-6)
    assert len(lines) == 2 + 5 + 1  # header, 5 candidates, the estimate
    assert lines[-1].startswith("estimate ")


def test_localize_cli_missing_photo(monkeypatch, capsys, world: World, tmp_path: Path) -> None:
    _env(monkeypatch, world)
    assert _run(cli_localize, [str(tmp_path / "nope.jpg")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_localize_cli_not_an_image(monkeypatch, capsys, world: World, tmp_path: Path) -> None:
    _env(monkeypatch, world)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert _run(cli_localize, [str(bad)]) == 1
    err = capsys.readouterr().err
    assert "notes.jpg" in err and "not a JPEG, PNG or WebP" in err


def test_localize_cli_without_build(monkeypatch, capsys, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    _env(monkeypatch, world)
    photo = tmp_path / "p.png"
    photo.write_bytes(panorama_bytes())
    assert _run(cli_localize, [str(photo)]) == 1
    assert "no active index build" in capsys.readouterr().err


def test_localize_cli_rejects_k_out_of_range(capsys) -> None:
    with pytest.raises(SystemExit):
        _run(cli_localize, ["x.jpg", "--k", "0"])
    assert "k must be in 1..100" in capsys.readouterr().err


def test_serve_cli_reports_missing_weights(monkeypatch, capsys, world: World, tmp_path: Path) -> None:
    _env(monkeypatch, world)
    monkeypatch.setenv("CVM_WEIGHTS", str(tmp_path / "absent.pt"))
    assert _run(cli_serve, ["--port", "8765"]) == 1
    err = capsys.readouterr().err
    assert "absent.pt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,env,named",
    [(["--port", "99999"], {}, "CVM_PORT=99999"), ([], {"CVM_MAX_BATCH": "lots"}, "CVM_MAX_BATCH=lots")],
)
def test_serve_cli_names_an_invalid_setting_in_one_line(
    monkeypatch, capsys, world: World, argv: list[str], env: dict[str, str], named: str
) -> None:
    _env(monkeypatch, world)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _run(cli_serve, argv) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and "pydantic" not in err and "errors.pydantic.dev" not in err


def test_localize_cli_on_an_empty_data_dir_leaves_no_catalogue(
    monkeypatch, capsys, world: World, tmp_path
) -> None:
    _env(monkeypatch, world)
    empty = tmp_path / "nothing-here"
    monkeypatch.setenv("CVM_DATA_DIR", str(empty))
    monkeypatch.delenv("CVM_DATABASE_URL")
    monkeypatch.delenv("CVM_INDEX_DIR")
    photo = tmp_path / "p.png"
    photo.write_bytes(panorama_bytes())
    assert _run(cli_localize, [str(photo)]) == 1
    assert "no active index build" in capsys.readouterr().err
    assert not (empty / "cvm.db").exists()
