"""Create and upgrade the ``pmta`` schema from the numbered files in ``sql/``.

* ``sql/migrations/NNNN_description.sql``: applied in order, each in its own
  transaction, recorded in ``pmta.schema_migrations`` (version, name, checksum).
  A released migration is never edited: a changed checksum is an error.
* ``sql/views/*.sql``: re-applied (``CREATE OR REPLACE``) after the migrations
  whenever their combined checksum differs from the one recorded.

Runs are serialized by a session advisory lock, so any number of processes may
call ``apply_migrations`` at once; a second run changes nothing. A database whose
schema is newer than this code is refused rather than written to.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

from pmta_pipe.errors import MigrationError

log = logging.getLogger(__name__)

_LOCK_KEY = 0x706D7461  # 'pmta'
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """The ``sql/`` folder: inside the installed package, or beside it in a source tree."""
    packaged = resources.files("pmta_pipe").joinpath("sql")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Read the migration files, checking their names and numbering."""
    folder = (folder or sql_dir()) / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.fullmatch(path.name)
        if not m:
            raise MigrationError(f"bad migration file name {path.name}", "use NNNN_description.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration {mig.version:04d} is out of sequence")
    return found


def load_views(folder: Path | None = None) -> list[tuple[str, str]]:
    """The view files, in name order, as ``(name, sql)``."""
    folder = (folder or sql_dir()) / "views"
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.sql"))]


def code_version() -> int:
    return len(load_migrations())


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The highest applied migration, or ``None`` when the schema does not exist."""
    row = conn.execute("SELECT to_regclass('pmta.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    got = conn.execute("SELECT coalesce(max(version), 0) FROM pmta.schema_migrations").fetchone()
    return int(got[0]) if got else 0


def apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Bring the schema up to date; return what was applied (empty when nothing was)."""
    migrations = load_migrations()
    views = load_views()
    views_sum = hashlib.sha256("".join(n + s for n, s in views).encode()).hexdigest()
    applied: list[str] = []
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute("SET client_min_messages = warning")
        # IF NOT EXISTS alone still needs CREATE on the database: a pmta_writer login
        # (deploy/roles.sql) may run ingest against a schema its owner made
        row = conn.execute("SELECT to_regnamespace('pmta') IS NULL").fetchone()
        if row and row[0]:
            conn.execute("CREATE SCHEMA pmta")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS pmta.schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            int(v): (str(n), str(c))
            for v, n, c in conn.execute(
                "SELECT version, name, checksum FROM pmta.schema_migrations"
            ).fetchall()
        }
        newest = max(done, default=0)
        if newest > len(migrations):
            raise MigrationError(
                f"the database schema is at version {newest}, newer than this pmta-pipe "
                f"({len(migrations)})",
                "upgrade pmta-pipe on this host",
            )
        for mig in migrations:
            if mig.version in done:
                if done[mig.version][1] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} differs from the one applied",
                        "released migrations are immutable; add a new one",
                    )
                continue
            with conn.transaction():
                conn.execute(mig.sql.encode())
                conn.execute(
                    "INSERT INTO pmta.schema_migrations (version, name, checksum)"
                    " VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            applied.append(f"{mig.version:04d}_{mig.name}")
            log.info("applied migration %04d_%s", mig.version, mig.name)
        row = conn.execute(
            "SELECT checksum FROM pmta.schema_migrations WHERE version = 0"
        ).fetchone()
        if views and (row is None or row[0] != views_sum):
            with conn.transaction():
                for _name, sql in views:
                    conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO pmta.schema_migrations (version, name, checksum)"
                    " VALUES (0, 'views', %s)"
                    " ON CONFLICT (version) DO UPDATE SET checksum = excluded.checksum,"
                    " applied_at = now()",
                    (views_sum,),
                )
            applied.append("views")
            log.info("applied %d view files", len(views))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
