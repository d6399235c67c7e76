"""Read-only access to the catalogue (builds and tiles tables of `storage.models`).

Rows are copied into frozen dataclasses so nothing outside this module holds a session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.errors import CatalogUnavailable
from storage.catalog import get_active_build
from storage.db import is_missing_catalogue
from storage.models import Build, Tile


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The fields of a `Build` row the service uses."""

    id: int
    status: str
    index_path: str | None
    weights_sha256: str
    embed_dim: int
    n_tiles: int


@dataclass(frozen=True, slots=True)
class TilePlace:
    """What a search hit needs: id, centre (lat/lon) and bbox [W, S, E, N], degrees.

    Kept compact (about 250 bytes each) because a snapshot holds one per tile of the build.
    """

    id: int
    lat: float
    lon: float
    west: float
    south: float
    east: float
    north: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """[west, south, east, north] in degrees."""
        return (self.west, self.south, self.east, self.north)


@dataclass(frozen=True, slots=True)
class TileRecord:
    """One tile: centre (lat/lon, degrees), bbox [W, S, E, N] (degrees) and provenance."""

    id: int
    build_id: int
    lat: float
    lon: float
    west: float
    south: float
    east: float
    north: float
    source: str
    col_off: float | None
    row_off: float | None
    width: float | None
    height: float | None
    crs: str | None
    gsd_m: float | None
    size_m: float
    footprint: str

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """[west, south, east, north] in degrees."""
        return (self.west, self.south, self.east, self.north)

    @property
    def is_precut(self) -> bool:
        """True when `source` is an image file of the tile alone (no pixel window)."""
        return self.col_off is None or self.width is None


# Plain column selects: loading a million tiles through ORM objects would be several times slower.
_TILE_COLUMNS = tuple(getattr(Tile, name) for name in TileRecord.__slots__)  # type: ignore[attr-defined]
_PLACE_COLUMNS = tuple(getattr(Tile, name) for name in TilePlace.__slots__)  # type: ignore[attr-defined]


def _build_info(row: Build) -> BuildInfo:
    return BuildInfo(
        id=row.id,
        status=row.status,
        index_path=row.index_path,
        weights_sha256=row.weights_sha256,
        embed_dim=row.embed_dim,
        n_tiles=row.n_tiles,
    )


@contextmanager
def _reachable() -> Iterator[None]:
    """Database failures become CatalogUnavailable (503), with the driver's one-line reason."""
    try:
        yield
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CatalogUnavailable(f"catalogue database not reachable: {reason}") from exc


# How long a request waits for the database before answering 503: a hung database server (one
# that accepts connections but never answers) must not hang /readyz or /tiles with it.
DB_TIMEOUT_S = 2.0
# Build statuses whose tiles and index files are final.
FINISHED = ("complete", "partial")

T = TypeVar("T")


class Catalog:
    """Queries the service needs: the active build, one tile, all tiles of a build, a ping."""

    def __init__(self, engine: Engine, timeout_s: float = DB_TIMEOUT_S) -> None:
        self.engine = engine
        self.timeout_s = timeout_s

    async def run(self, query: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """`query(*args)` in a worker thread, given up after `timeout_s` (default: the catalogue's)
        with CatalogUnavailable.

        A query that never returns keeps its worker thread; the request is answered regardless.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(query, *args), limit)
        except TimeoutError:
            raise CatalogUnavailable(
                f"catalogue database not reachable: no answer within {limit:g} s"
            ) from None

    def active_build(self) -> BuildInfo | None:
        """The build with is_active = True, or None (also when no catalogue was written yet)."""
        try:
            with Session(self.engine) as session:
                row = get_active_build(session)
                return _build_info(row) if row is not None else None
        except SQLAlchemyError as exc:
            if is_missing_catalogue(exc):
                return None
            with _reachable():
                raise

    def finished_builds(self, weights_sha256: str) -> list[BuildInfo]:
        """Finished builds with an index, made with these weights, newest first: the candidates
        to serve when the active build cannot be loaded."""
        stmt = (
            select(Build)
            .where(
                Build.status.in_(FINISHED),
                Build.index_path.is_not(None),
                Build.weights_sha256 == weights_sha256,
            )
            .order_by(Build.id.desc())
        )
        with _reachable(), Session(self.engine) as session:
            return [_build_info(row) for row in session.scalars(stmt)]

    def build(self, build_id: int) -> BuildInfo | None:
        """The build with this id, or None."""
        with _reachable(), Session(self.engine) as session:
            row = session.get(Build, build_id)
            return _build_info(row) if row is not None else None

    def tile_bounds(self, build_id: int) -> np.ndarray:
        """(n, 4) float64 bbox [W, S, E, N] of every tile of a build (degrees)."""
        cols = (Tile.west, Tile.south, Tile.east, Tile.north)
        with _reachable(), self.engine.connect() as conn:
            rows = conn.execute(select(*cols).where(Tile.build_id == build_id)).all()
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

    def tile(self, tile_id: int) -> TileRecord | None:
        """The tile with this id (of any build), or None."""
        with _reachable(), self.engine.connect() as conn:
            row = conn.execute(select(*_TILE_COLUMNS).where(Tile.id == tile_id)).first()
            return TileRecord(*row) if row is not None else None

    def places_of_build(self, build_id: int) -> dict[int, TilePlace]:
        """Centre and bbox of every tile of a build, keyed by id (= FAISS id)."""
        with _reachable(), self.engine.connect() as conn:
            rows = conn.execute(select(*_PLACE_COLUMNS).where(Tile.build_id == build_id))
            return {row[0]: TilePlace(*row) for row in rows}

    def ping(self) -> None:
        """Raise if the database cannot be reached. A catalogue not written yet is reachable: the
        missing build is reported as such, not as a database fault."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            if is_missing_catalogue(exc):
                return
            with _reachable():
                raise
