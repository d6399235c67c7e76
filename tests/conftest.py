"""Fixtures shared by every test package: the shared sample data and a throw-away PostgreSQL.

Importable helpers live in tests/support/; fixtures live in the conftests (see tests/support/__init__.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.paths import SHARED_DATA, require_shared_data
from tests.support.pg import PostgresServer, find_pg_bin, start_postgres


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: the real sample files. Without it the test is skipped, or fails under CI=true."""
    return require_shared_data(SHARED_DATA)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (external when CVM_TEST_DATABASE_URL is set)."""
    external = os.environ.get("CVM_TEST_DATABASE_URL")
    if external:
        yield PostgresServer(make_url(external))
        return
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL 15 binaries not found (install postgresql-15 or set CVM_TEST_DATABASE_URL)")
    server = start_postgres(pg_bin)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
