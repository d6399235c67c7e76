"""The tile catalogue: read helpers (used by the service) and the indexer's bulk writes.

Tile primary keys are the FAISS ids of their build's index; nothing here relies on row order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage.errors import BuildNotFound
from storage.models import Build, Tile

# Keeps each statement's parameter list well below SQLite's and PostgreSQL's limits.
CHUNK = 5000


def get_active_build(session: Session) -> Build | None:
    """The build the service searches, or None when no build was activated yet."""
    return session.scalars(select(Build).where(Build.is_active.is_(True))).first()


def get_build(session: Session, build_id: int) -> Build | None:
    """The build with this id, or None."""
    return session.get(Build, build_id)


def get_tile(session: Session, tile_id: int) -> Tile | None:
    """The tile with this id (= its FAISS id), or None."""
    return session.get(Tile, tile_id)


def get_tiles(session: Session, ids: Sequence[int]) -> dict[int, Tile]:
    """Tiles by id (FAISS search results); ids without a row (e.g. -1 padding) are absent."""
    wanted = sorted({int(i) for i in ids if int(i) >= 0})
    found: dict[int, Tile] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        for tile in session.scalars(select(Tile).where(Tile.id.in_(chunk))):
            found[tile.id] = tile
    return found


def resolve_build(session: Session, build_id: int | None) -> Build:
    """The build `build_id`, or the active one when None; BuildNotFound says which is missing."""
    build = get_active_build(session) if build_id is None else get_build(session, build_id)
    if build is None:
        raise BuildNotFound("no active build" if build_id is None else f"no build with id {build_id}")
    return build


def list_builds(session: Session) -> list[Build]:
    """Every build, newest first."""
    return list(session.scalars(select(Build).order_by(Build.id.desc())))


def count_tiles(session: Session, build_id: int) -> int:
    """Number of tile rows of a build."""
    return int(session.scalar(select(func.count()).select_from(Tile).where(Tile.build_id == build_id)) or 0)


def insert_tiles(session: Session, rows: Iterable[dict[str, Any]]) -> list[int]:
    """Bulk-insert tile rows (dicts of Tile columns, without id); ids returned in input order."""
    return [i for ids in _insert_chunks(session, rows) for i in ids]


def insert_tile_stream(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Bulk-insert tile rows as `insert_tiles`, consuming `rows` lazily a CHUNK at a time and
    keeping no id: returns how many were inserted (a build of millions of tiles holds one chunk)."""
    return sum(len(ids) for ids in _insert_chunks(session, rows))


def _insert_chunks(session: Session, rows: Iterable[dict[str, Any]]) -> Iterator[list[int]]:
    """Insert `rows` CHUNK at a time, yielding each chunk's ids in input order."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            yield _insert_batch(session, batch)
            batch = []
    if batch:
        yield _insert_batch(session, batch)


def _insert_batch(session: Session, batch: list[dict[str, Any]]) -> list[int]:
    # A Core executemany (a third cheaper per row than the ORM's bulk insert) wants every row
    # with the same keys: pre-cut tiles lack the pixel-window columns that raster tiles have.
    keys = batch[0].keys()
    if any(row.keys() != keys for row in batch):
        batch = [{col: row.get(col) for col in _TILE_COLUMNS} for row in batch]
    stmt = insert(_TILES).returning(_TILES.c.id, sort_by_parameter_order=True)
    return [int(i) for i in session.execute(stmt, batch).scalars()]


_TILES = Tile.metadata.tables[Tile.__tablename__]
_TILE_COLUMNS = [c.key for c in _TILES.columns if c.key != "id"]


def tile_page(session: Session, build_id: int, after_id: int, limit: int) -> list[Tile]:
    """Up to `limit` tiles of a build with id > after_id, in id order (keyset pagination)."""
    stmt = select(Tile).where(Tile.build_id == build_id, Tile.id > after_id).order_by(Tile.id).limit(limit)
    return list(session.scalars(stmt))


def window_page(session: Session, build_id: int, after_id: int, limit: int) -> list[Any]:
    """As tile_page, but only (id, source, col_off, row_off, width, height) rows: what reading a
    tile needs, without building an ORM object per tile (a third of the cost)."""
    cols = (Tile.id, Tile.source, Tile.col_off, Tile.row_off, Tile.width, Tile.height)
    stmt = select(*cols).where(Tile.build_id == build_id, Tile.id > after_id).order_by(Tile.id).limit(limit)
    return list(session.execute(stmt).all())


def iter_tiles(session: Session, build_id: int, batch: int = CHUNK) -> Iterator[Tile]:
    """The tiles of a build in id order, fetched in pages."""
    last = -1
    while page := tile_page(session, build_id, last, batch):
        yield from page
        last = page[-1].id


def delete_tiles(session: Session, ids: Sequence[int]) -> None:
    """Delete tile rows by id (tiles dropped before the index is written)."""
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        session.execute(delete(Tile).where(Tile.id.in_(ids[start : start + CHUNK])))


def activate(session: Session, build_id: int) -> Build:
    """Make `build_id` the served build, in the caller's transaction (old active -> false first).

    Only a complete (or partial) build with an index can be activated.
    """
    build = resolve_build(session, build_id)
    if build.status not in ("complete", "partial") or not build.index_path:
        raise BuildNotFound(f"build {build_id} is {build.status!r}, not a finished build; cannot activate")
    session.execute(
        update(Build).where(Build.is_active.is_(True), Build.id != build_id).values(is_active=False)
    )
    session.flush()
    build.is_active = True
    build.activated_at = datetime.now(UTC)
    return build
