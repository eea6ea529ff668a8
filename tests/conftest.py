"""Test fixtures: a real PostgreSQL server, and a fresh database for every test.

The server is ``PMTA_PIPE_TEST_DSN`` when set (any database on it: the tests create
their own), else an embedded PostgreSQL started once per session in a temporary
folder. Migrations are applied once to a template database; every test gets
``CREATE DATABASE … TEMPLATE`` of it, which is fast and fully isolated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pmta_pipe.migrate import apply_migrations
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data" / "pmta-samples.txt"  # verbatim public sample lines


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A DSN of a database on the test server, for creating and dropping databases."""
    given = os.environ.get("PMTA_PIPE_TEST_DSN")
    if given:
        yield given
        return
    from pmta_pipe import embedded

    folder = Path(tempfile.mkdtemp(prefix="pmta-pipe-test-"))
    folder.chmod(0o755)
    data = folder / "pg"
    uri = embedded.start(data)
    try:
        yield make_conninfo(uri, dbname="postgres")
    finally:
        embedded.stop(data)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    name = f"pmta_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(make_conninfo(admin_dsn, dbname=name), autocommit=True) as conn:
        apply_migrations(conn)
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_database(admin_dsn: str, template: str) -> tuple[str, str]:
    name = f"pmta_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, make_conninfo(admin_dsn, dbname=name)


@pytest.fixture
def dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database with the pmta schema, for this test only."""
    name, conninfo = _new_database(admin_dsn, template_db)
    yield conninfo
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database without the pmta schema."""
    name, conninfo = _new_database(admin_dsn, "template0")
    yield conninfo
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def cli_env(dsn: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the ``pmta-pipe`` console script against the test database."""
    env = clean_env()
    env.update(
        PMTA_PIPE_DSN=dsn,
        PMTA_PIPE_SPOOL_DIR=str(tmp_path / "spool"),
        PMTA_PIPE_SOURCE="test-host",
        PMTA_PIPE_BATCH_SECONDS="0.2",
    )
    return env


def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    input: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m pmta_pipe ARGS`` in a subprocess, as PowerMTA would."""
    return subprocess.run(
        [sys.executable, "-m", "pmta_pipe", *args],
        input=input,
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def count(conn: psycopg.Connection[tuple[object, ...]], sql: str, *params: object) -> int:
    row = conn.execute(sql, params or None).fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]
