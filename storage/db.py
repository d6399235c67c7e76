"""Database access: engines, transactional sessions, and schema upgrades through Alembic.

The schema is created and changed only by the migrations in `migrations/`; `upgrade(url)` runs
them programmatically against the same URL the caller then uses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from storage.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Seconds to open a PostgreSQL connection (unless the URL sets `connect_timeout`) and to wait
# for a free connection of the pool.
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for `url`; SQLite gets its parent folder created, foreign keys and a busy timeout.

    `read_only` is for the readers (the service, `cvm localize`): a SQLite file is opened without
    being created, so that pointing a reader at the wrong folder leaves nothing behind there.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() != "sqlite":
        # A server that accepts connections but never answers must not hang its caller forever.
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        return create_engine(
            parsed, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT_S, connect_args=connect_args
        )
    file_db = bool(parsed.database) and parsed.database != ":memory:"
    if file_db and read_only:
        path = Path(str(parsed.database)).expanduser().resolve()
        # QueuePool, as for any SQLite file: the pool "sqlite://" would get (SingletonThreadPool,
        # meant for :memory:) closes the connections of other threads once more than five threads
        # used it, even mid-query, which crashed a service answering from many threads
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                f"{path.as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False
            ),
            poolclass=QueuePool,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if file_db:
        Path(str(parsed.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def is_missing_catalogue(exc: BaseException) -> bool:
    """True when a database error only means that no catalogue was written there yet: the SQLite
    file does not exist, or the tables were never created (no build ever ran)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(marker in text for marker in _MISSING_CATALOGUE)


# SQLite's and PostgreSQL's words for a missing file or table (a missing PostgreSQL *database*
# is a configuration error and is not among them).
_MISSING_CATALOGUE = (
    "no such table",
    "unable to open database file",
    'relation "builds" does not exist',
    'relation "tiles" does not exist',
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite leaves foreign keys (hence ON DELETE CASCADE) off unless asked, per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back on any exception."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config pointing at `migrations/` (and at `url` when given), without an ini file."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the catalogue at `url` to `revision` (default: the newest) with Alembic."""
    _migrate(url, revision, up=True)


def downgrade(url: str, revision: str) -> None:
    """Step the catalogue at `url` back to `revision` ("base" removes every table)."""
    _migrate(url, revision, up=False)


def _migrate(url: str, revision: str, *, up: bool) -> None:
    from alembic import command

    if not MIGRATIONS_DIR.is_dir():
        raise DatabaseError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            (command.upgrade if up else command.downgrade)(cfg, revision)
    except OperationalError as exc:
        raise DatabaseError(f"cannot reach the database {_safe(url)}: {exc.orig}") from None
    finally:
        engine.dispose()


def _safe(url: str) -> str:
    """`url` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid url>"
