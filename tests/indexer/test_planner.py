"""The planner never hangs: tiles stream into the catalogue, rasters too coarse for the tile size
are skipped by name, `--dry-run` counts and estimates without writing, progress shows at once."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from indexer.cli import main
from indexer.sources import RasterInfo, inspect_raster
from indexer.tiles import MIN_TILE_PX, check_resolution, count_raster, plan_raster
from model.checkpoint import load_checkpoint
from storage import catalog
from storage.db import make_engine, session_scope, upgrade
from storage.faiss_index import choose_spec, estimate_memory
from storage.models import Build, Tile
from tests.indexer.test_db import _build, _tile


def _cli(tmp_path: Path, weights: Path, *args: str) -> int:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    return main(["--database-url", url, "--index-dir", str(idx), "build", "--weights", str(weights), *args])


def _builds(tmp_path: Path) -> list[Build]:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with session_scope(engine) as s:
        builds = catalog.list_builds(s)
        for b in builds:
            s.expunge(b)
    engine.dispose()
    return builds


def test_cogeo_and_rgb_byte_together_index_the_cog_and_skip_the_coarse_raster(
    tmp_path: Path,
    tiny_weights: Path,
    mercator_cog: Path,
    utm_nodata_raster: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's "Your own imagery" step with stand-ins of both rasters at the default 70 m."""
    code = _cli(tmp_path, tiny_weights, "--imagery", str(mercator_cog), str(utm_nodata_raster))
    out, err = capsys.readouterr()
    assert code == 3  # partial: one input rejected, the other indexed and published
    # the 300 m raster is named with the reason; planning showed progress on stderr
    line = next(x for x in err.splitlines() if x.startswith("rejected:"))
    assert (
        str(utm_nodata_raster.resolve()) in line and "too coarse" in line and "pixels across a tile" in line
    )
    assert "planning" in err and "144/144" in err
    (b,) = _builds(tmp_path)
    assert b.status == "partial" and b.is_active and b.n_tiles == 144
    assert b.counts["planned"] == 144 and [r[0] for r in b.counts["rejected"]] == [
        str(utm_nodata_raster.resolve())
    ]
    assert "build 1: partial" in out


def test_only_a_coarse_raster_exits_2_naming_it(
    tmp_path: Path, tiny_weights: Path, utm_nodata_raster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(tmp_path, tiny_weights, "--no-progress", "--imagery", str(utm_nodata_raster)) == 2
    err = capsys.readouterr().err
    assert str(utm_nodata_raster.resolve()) in err and "too coarse" in err
    (b,) = _builds(tmp_path)
    assert b.status == "failed" and not b.is_active  # never left as "building"
    # a tile size of 32 pixels or more indexes it
    assert (
        _cli(
            tmp_path,
            tiny_weights,
            "--no-progress",
            "--imagery",
            str(utm_nodata_raster),
            "--tile-size-m",
            "9700",
        )
        == 0
    )


def test_resolution_threshold_is_32_pixels(make_raster: Callable[..., Path]) -> None:
    # 2 m pixels in UTM 33N at its central meridian: 2 / 0.9996 ground metres each
    info = inspect_raster(str(make_raster("r.tif", size=(100, 100), gsd=2.0, origin=(500000.0, 5000000.0))))
    check_resolution(info, 65.0)  # 32.5 pixels: kept
    with pytest.raises(Exception, match=r"r\.tif: pixels of 2 m are too coarse for 64 m tiles"):
        check_resolution(info, 64.0)  # 31.99 pixels
    assert MIN_TILE_PX == 32


def test_dry_run_counts_and_estimates_and_writes_nothing(
    tmp_path: Path,
    tiny_weights: Path,
    mercator_cog: Path,
    utm_nodata_raster: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = set(tmp_path.iterdir())
    code = _cli(tmp_path, tiny_weights, "--dry-run", "--imagery", str(mercator_cog), str(utm_nodata_raster))
    out, err = capsys.readouterr()
    assert code == 3  # what the build would exit with
    assert set(tmp_path.iterdir()) == before  # no database file, no index folder
    lines = out.splitlines()
    assert f"144 tiles  {mercator_cog.resolve()}" in out
    assert any(x.strip().startswith("144 tiles  total (1 inputs, 1 rejected)") for x in lines)
    assert str(utm_nodata_raster.resolve()) in err and "too coarse" in err and "planning" in err
    embed = next(x for x in lines if "embedding:" in x)
    assert "an estimate" in embed and "ms per tile" in embed
    index = next(x for x in lines if "index:" in x)
    d = load_checkpoint(tiny_weights).config.descriptor_dim
    spec = choose_spec("auto", 144, d)
    expected = estimate_memory(spec, 144, d)
    assert expected.per_vector == 4 * d + 8
    assert (
        f"{spec.kind} ({spec.factory})" in index
        and f"{expected.per_vector:,.0f} bytes per vector x 144" in index
    )
    # the count is the build's: planning the same inputs gives the same number of tiles
    assert _cli(tmp_path, tiny_weights, "--no-progress", "--imagery", str(mercator_cog)) == 0
    assert _builds(tmp_path)[0].counts["planned"] == 144


def test_dry_run_with_nothing_usable_exits_2(
    tmp_path: Path, tiny_weights: Path, utm_nodata_raster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _cli(tmp_path, tiny_weights, "--dry-run", "--no-progress", "--imagery", str(utm_nodata_raster)) == 2
    )
    assert "nothing to index" in capsys.readouterr().out
    assert not (tmp_path / "c.db").exists() and not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    ("raster", "size_m"),
    [
        ("mercator_cog", 70.0),
        ("mercator_cog", 33.0),
        ("utm_nodata_raster", 20000.0),
        ("degrees_raster", 2.6e6),
    ],
)
def test_count_equals_the_planned_tiles(raster: str, size_m: float, request: pytest.FixtureRequest) -> None:
    info = inspect_raster(str(request.getfixturevalue(raster)))
    rows: list[int] = []
    n = count_raster(info, size_m, size_m / 2, on_row=rows.append)
    assert n == len(list(plan_raster(info, size_m, size_m / 2))) == sum(rows) > 0


def test_counting_a_huge_grid_holds_no_tiles() -> None:
    """A 1,000 x 1,000 tile grid (a 35 km square of 0.5 m pixels): counted in constant memory."""
    info = RasterInfo(
        path="/virtual.tif",
        crs="EPSG:32633",
        width=70_000,
        height=70_000,
        transform=(0.5, 0.0, 480000.0, 0.0, -0.5, 5_000_000.0),
        bands=(1, 2, 3),
        stretch=None,
    )
    tracemalloc.start()
    try:
        n = count_raster(info, 70.0, 35.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 995_000 <= n <= 1_001_000  # ~999 x 999 (ground metres differ from UTM metres)
    assert peak < 1 << 20  # under 1 MiB: a list of a million tiles would take hundreds
    # the planner is a generator: its first tiles come without laying out the rest
    first = next(iter(plan_raster(info, 70.0, 35.0)))
    assert first["col_off"] == pytest.approx(0, abs=1e-3) and first["row_off"] == pytest.approx(0, abs=1e-3)


def test_tile_rows_are_inserted_while_the_planner_still_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    seen: list[int] = []
    with session_scope(engine) as s:
        b = _build()
        s.add(b)
        s.flush()

        def rows() -> Iterator[dict[str, Any]]:
            for i in range(2 * catalog.CHUNK + 3):
                if i == catalog.CHUNK + 1:  # one chunk and a row later
                    seen.append(s.scalar(select(func.count()).select_from(Tile)) or 0)
                yield _tile(b.id, i)

        assert catalog.insert_tile_stream(s, rows()) == 2 * catalog.CHUNK + 3
        assert s.scalar(select(func.count()).select_from(Tile)) == 2 * catalog.CHUNK + 3
    engine.dispose()
    assert seen == [catalog.CHUNK]  # the first chunk was written before the rest was planned


def test_dry_run_applies_the_memory_budget(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A budget that the flat index of 144 tiles fits is shown as that index; one that nothing
    fits is refused before any embedding, naming the option, with nothing written."""
    d = load_checkpoint(tiny_weights).config.descriptor_dim
    flat_bytes = 144 * (4 * d + 8)
    args = ("--dry-run", "--no-progress", "--imagery", str(mercator_cog))
    assert _cli(tmp_path, tiny_weights, *args, "--memory-budget", str(100 * flat_bytes)) == 0
    index = next(x for x in capsys.readouterr().out.splitlines() if "index:" in x)
    assert "flat" in index
    assert _cli(tmp_path, tiny_weights, *args, "--memory-budget", str(flat_bytes // 100)) == 2
    out, err = capsys.readouterr()
    assert "--memory-budget" in out + err
    assert not (tmp_path / "c.db").exists() and not (tmp_path / "idx").exists()
