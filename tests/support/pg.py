"""A throw-away PostgreSQL 15 server for tests.

The `postgres_server` fixture (session scope) starts one with initdb + pg_ctl in a temporary folder (as the
`postgres` user when the tests run as root, since initdb refuses root) on a free port, and stops
and deletes it when the session ends. `postgres_url` gives each test a fresh, empty database on
it. Set CVM_TEST_DATABASE_URL (a PostgreSQL URL whose role may CREATE DATABASE) to use an existing
server instead. Without the binaries (CVM_PG_BIN, else /usr/lib/postgresql/15/bin, else PATH) the
tests that use these fixtures are skipped with the reason.

The fixtures themselves are defined in tests/conftest.py on top of `find_pg_bin`/`start_postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy.engine import URL, make_url

DEFAULT_BIN = Path("/usr/lib/postgresql/15/bin")


def find_pg_bin() -> Path | None:
    """The folder holding initdb, postgres and pg_ctl, or None when PostgreSQL is not installed."""
    candidates = [os.environ.get("CVM_PG_BIN"), str(DEFAULT_BIN)]
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for cand in candidates:
        if cand and all((Path(cand) / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(cand)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running server: `admin_url` reaches its maintenance database; `create_database()` a new one."""

    def __init__(self, admin_url: URL, pg_bin: Path | None = None, root: Path | None = None) -> None:
        self.admin_url = admin_url
        self.pg_bin = pg_bin
        self.root = root

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy (psycopg 3) URL."""
        import psycopg

        name = f"cvm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._libpq(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def stop(self) -> None:
        """Stop a server this module started and delete its folder (no-op for an external one)."""
        if self.root is None or self.pg_bin is None:
            return
        _as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _libpq(url: URL) -> str:
        return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    # initdb and postgres refuse to run as root; drop to the postgres user in that case.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def start_postgres(pg_bin: Path) -> PostgresServer:
    """initdb a temporary cluster, start it on a free port; raise RuntimeError with its log on failure."""
    root = Path(tempfile.mkdtemp(prefix="cvm-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    data, log = root / "data", root / "server.log"
    init = _as_postgres(
        [str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    start = _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"])
    if start.returncode != 0:
        text = log.read_text() if log.exists() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {text.strip()[-2000:]}")
    url = make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
    return PostgresServer(url, pg_bin, root)
