"""Schema through Alembic (upgrade, downgrade, equality with the models) and catalogue helpers,
on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError

from indexer.build import BuildContext, shard_tasks
from storage import catalog
from storage.db import downgrade, make_engine, session_scope, upgrade
from storage.errors import BuildNotFound, DatabaseError
from storage.models import Base, Build


def _build(**kw: object) -> Build:
    fields = dict(
        status="complete",
        is_active=False,
        weights_path="/w.pt",
        weights_sha256="0" * 64,
        model_arch="cvm-net-i",
        embed_dim=16,
        index_path="/idx",
        params={},
        counts={},
        timings={},
        stats={},
        n_tiles=0,
    )
    fields.update(kw)
    return Build(**fields)


def _tile(build_id: int, i: int) -> dict[str, object]:
    ring = [[10.0 + i, 50.0], [10.1 + i, 50.0], [10.1 + i, 50.1], [10.0 + i, 50.1], [10.0 + i, 50.0]]
    return dict(
        build_id=build_id,
        source=f"/data/{i}.tif",
        size_m=70.0,
        lat=50.05,
        lon=10.05 + i,
        west=10.0 + i,
        south=50.0,
        east=10.1 + i,
        north=50.1,
        footprint=json.dumps({"type": "Polygon", "coordinates": [ring]}),
    )


Rows = Callable[[int], list[dict[str, object]]]


def _catalogue_with_tiles(url: str, rows: Rows) -> tuple[Engine, int, list[int]]:
    """A migrated catalogue at `url` with one build holding rows(build id): (engine, build id, tile ids)."""
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        b = _build()
        s.add(b)
        s.flush()
        return engine, b.id, catalog.insert_tiles(s, rows(b.id))


def test_upgrade_creates_schema_equal_to_models(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_removes_tables_and_upgrade_restores_them(db_url: str) -> None:
    upgrade(db_url)
    downgrade(db_url, "base")
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(db_url)
    assert {"builds", "tiles"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_insert_tiles_returns_ids_in_input_order(db_url: str) -> None:
    engine, _, ids = _catalogue_with_tiles(db_url, lambda b: [_tile(b, i) for i in range(7)])
    with session_scope(engine) as s:
        tiles = catalog.get_tiles(s, [*ids, -1, 10**9])
        assert sorted(tiles) == sorted(ids)
        # row i was inserted with lon 10.05 + i: the returned ids map to the right rows
        assert [round(tiles[i].lon - 10.05) for i in ids] == list(range(7))
        assert catalog.get_tile(s, ids[3]).source == "/data/3.tif"
        assert catalog.get_tile(s, 10**9) is None
    engine.dispose()


def test_insert_tiles_mixes_raster_and_pre_cut_rows(db_url: str) -> None:
    window = dict(col_off=1.5, row_off=2.5, width=127.3, height=127.3, crs="EPSG:32633", gsd_m=0.55)
    # raster tiles carry pixel-window columns, pre-cut tiles of the same build do not
    engine, _, ids = _catalogue_with_tiles(
        db_url, lambda b: [{**_tile(b, 0), **window}, _tile(b, 1), {**_tile(b, 2), **window}]
    )
    with session_scope(engine) as s:
        tiles = catalog.get_tiles(s, ids)
        assert [tiles[i].source for i in ids] == ["/data/0.tif", "/data/1.tif", "/data/2.tif"]
        assert [tiles[i].col_off for i in ids] == [1.5, None, 1.5]
        assert tiles[ids[2]].crs == "EPSG:32633" and tiles[ids[1]].crs is None
    engine.dispose()


def test_activate_switches_the_single_active_build(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        old, new, unfinished = _build(), _build(), _build(status="building", index_path=None)
        s.add_all([old, new, unfinished])
        s.flush()
        ids = (old.id, new.id, unfinished.id)
        catalog.activate(s, old.id)
    with session_scope(engine) as s:
        assert catalog.get_active_build(s).id == ids[0]
        catalog.activate(s, ids[1])
    with session_scope(engine) as s:
        assert catalog.get_active_build(s).id == ids[1]
        assert catalog.get_build(s, ids[0]).is_active is False
    with pytest.raises(BuildNotFound, match=f"build {ids[2]} is 'building'"), session_scope(engine) as s:
        catalog.activate(s, ids[2])
    engine.dispose()


def test_database_refuses_two_active_builds(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add_all([_build(is_active=True), _build(is_active=True)])
    engine.dispose()


def test_deleting_a_build_cascades_to_its_tiles(db_url: str) -> None:
    engine, build_id, _ = _catalogue_with_tiles(db_url, lambda b: [_tile(b, 0)])
    with session_scope(engine) as s:
        s.delete(catalog.get_build(s, build_id))
    with session_scope(engine) as s:
        assert catalog.count_tiles(s, build_id) == 0
    engine.dispose()


def test_upgrade_unreachable_database_names_it() -> None:
    with pytest.raises(DatabaseError, match="cannot reach the database") as info:
        upgrade("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "127.0.0.1:1/none" in str(info.value) and "secret" not in str(info.value)


def test_shard_tasks_page_through_every_tile_in_id_order(tmp_path: Path) -> None:
    # 2,500 tiles: three pages of up to 1,000; pre-cut rows (no window) among raster rows
    window = dict(col_off=1.0, row_off=2.0, width=3.0, height=4.0)
    engine, build_id, ids = _catalogue_with_tiles(
        f"sqlite:///{tmp_path / 'c.db'}",
        lambda b: [{**_tile(b, i), **(window if i % 3 else {})} for i in range(2500)],
    )
    ctx = BuildContext(engine, tmp_path, None, "", torch.device("cpu"), build_id=build_id)  # type: ignore[arg-type]
    shards = list(shard_tasks(ctx, 700))
    engine.dispose()
    assert [len(sh) for sh in shards] == [700, 700, 700, 400]
    tasks = [t for sh in shards for t in sh]
    assert [t.id for t in tasks] == ids
    assert [t.window for t in tasks[:3]] == [None, (1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0)]
    assert tasks[5].source == "/data/5.tif"


def test_the_read_only_sqlite_engine_serves_many_threads_at_once(tmp_path: Path) -> None:
    """The service reads the catalogue from many threads. Its read-only SQLite engine pools
    connections as any SQLite file engine does (QueuePool): the pool of a "sqlite://" URL
    (SingletonThreadPool) closes other threads' connections once more than five threads used it,
    which crashed the process mid-query."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text
    from sqlalchemy.pool import QueuePool

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    writer = make_engine(url)
    with session_scope(writer) as s:
        s.add_all([_build(is_active=(i == 7)) for i in range(20)])
    writer.dispose()
    engine = make_engine(url, read_only=True)
    assert isinstance(engine.pool, QueuePool)

    def read(i: int) -> tuple[int, int]:
        with session_scope(engine) as s:
            active = catalog.get_active_build(s)
            count = s.execute(text("SELECT count(*) FROM builds")).scalar_one()
        assert active is not None
        return active.id, count

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(read, range(2000)))
    engine.dispose()
    assert set(results) == {(8, 20)}
