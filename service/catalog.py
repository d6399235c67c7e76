"""Read-only access to the catalogue (builds and tiles tables of `storage.models`).

Rows are copied into frozen dataclasses so nothing outside this module holds a session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.errors import CatalogUnavailable
from storage.catalog import get_active_build
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


class Catalog:
    """Queries the service needs: the active build, one tile, all tiles of a build, a ping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def active_build(self) -> BuildInfo | None:
        """The build with is_active = True, or None."""
        with _reachable(), Session(self.engine) as session:
            row = get_active_build(session)
            return _build_info(row) if row is not None else None

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
        """Raise if the database cannot be reached."""
        with _reachable(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
