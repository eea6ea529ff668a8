"""Test fixtures: a real PostgreSQL server, and a fresh database for every test.

The server is ``PMTA_PIPE_TEST_DSN`` when set (any database on it: the tests create
their own), else an embedded PostgreSQL started once per session in a temporary
folder. Migrations are applied once to a template database; every test gets
``CREATE DATABASE … TEMPLATE`` of it, which is fast and fully isolated (made ahead
of the test and dropped after it in a thread: ``_Databases``).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pmta_pipe.migrate import apply_migrations
from tests.helpers import clean_env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``server`` every test that uses the PostgreSQL server (its fixtures all start
    from ``admin_dsn``): ``.ci/run`` runs the others once, since they cannot differ from
    one server to another."""
    for item in items:
        if "admin_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


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


class _Databases:
    """Fresh databases from the template, made ahead of the tests that take them and
    dropped after them, in a thread of its own with its own connection: ``CREATE
    DATABASE … TEMPLATE`` and ``DROP DATABASE`` cost about 0.4 s a test, which the
    tests' own waiting hides this way. A database is still used by one test only."""

    AHEAD = 2  # databases made before they are asked for

    def __init__(self, admin_dsn: str, template: str) -> None:
        self.admin_dsn, self.template = admin_dsn, template
        self.ready: queue.Queue[str | BaseException] = queue.Queue()
        self.jobs: queue.Queue[str | None] = queue.Queue()  # "" = make one, else drop it
        self.thread = threading.Thread(target=self._run, name="test-databases", daemon=True)
        self.thread.start()
        for _ in range(self.AHEAD):
            self.jobs.put("")

    def take(self) -> str:
        self.jobs.put("")  # the next test's, made while this one runs
        got = self.ready.get(timeout=120)
        if isinstance(got, BaseException):
            raise got
        return got

    def give_back(self, name: str) -> None:
        self.jobs.put(name)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=120)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while not self.ready.empty():
                left = self.ready.get()
                if isinstance(left, str):
                    conn.execute(f'DROP DATABASE IF EXISTS "{left}" WITH (FORCE)')

    def _run(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while (job := self.jobs.get()) is not None:
                try:
                    if job:
                        conn.execute(f'DROP DATABASE IF EXISTS "{job}" WITH (FORCE)')
                    else:
                        name = f"pmta_test_{uuid.uuid4().hex[:10]}"
                        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
                        self.ready.put(name)
                except BaseException as exc:  # handed to the test that waits for it
                    if not job:
                        self.ready.put(exc)


@pytest.fixture(scope="session")
def databases(admin_dsn: str, template_db: str) -> Iterator[_Databases]:
    pool = _Databases(admin_dsn, template_db)
    yield pool
    pool.close()


@pytest.fixture
def dsn(admin_dsn: str, databases: _Databases) -> Iterator[str]:
    """A fresh database with the pmta schema, for this test only."""
    name = databases.take()
    yield make_conninfo(admin_dsn, dbname=name)
    databases.give_back(name)


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
