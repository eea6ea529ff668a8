"""Migrations: numbering, idempotence, concurrency, and refusing a newer schema."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pmta_pipe import migrate
from pmta_pipe.errors import MigrationError
from pmta_pipe.fields import EVENT_COLUMNS
from tests.conftest import count, run_cli


def test_migration_files_are_named_and_numbered() -> None:
    files = sorted(p.name for p in (migrate.sql_dir() / "migrations").glob("*"))
    assert files, "no migrations found"
    for i, name in enumerate(files, start=1):
        assert name.startswith(f"{i:04d}_") and name.endswith(".sql"), name
    assert migrate.code_version() == len(files)


def test_events_table_has_exactly_the_parser_columns(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pmta.events'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
    ]
    assert tuple(cols) == EVENT_COLUMNS


def test_second_run_changes_nothing(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        first = migrate.apply_migrations(conn)
        assert first[0] == "0001_events"
        rows = conn.execute(
            "SELECT version, checksum, applied_at FROM pmta.schema_migrations"
        ).fetchall()
        assert migrate.apply_migrations(conn) == []
        again = conn.execute(
            "SELECT version, checksum, applied_at FROM pmta.schema_migrations"
        ).fetchall()
        assert sorted(rows) == sorted(again)


def test_concurrent_runs_apply_once(empty_dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                results.append(migrate.apply_migrations(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for r in results if r) == 1
    with psycopg.connect(empty_dsn) as conn:
        assert count(conn, "SELECT count(*) FROM pmta.schema_migrations WHERE version > 0") == (
            migrate.code_version()
        )


def test_refuses_a_newer_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "INSERT INTO pmta.schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
    )
    with pytest.raises(MigrationError, match="newer than this pmta-pipe"):
        migrate.apply_migrations(conn)


def test_refuses_an_edited_migration(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("UPDATE pmta.schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="differs from the one applied"):
        migrate.apply_migrations(conn)


def test_migrate_command(cli_env: dict[str, str], empty_dsn: str) -> None:
    env = dict(cli_env, PMTA_PIPE_DSN=empty_dsn)
    first = run_cli(["migrate"], env)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().startswith("applied: 0001_events")
    second = run_cli(["migrate"], env)
    assert second.returncode == 0
    assert second.stdout.decode() == f"schema is up to date (version {migrate.code_version()})\n"


def test_packaged_sql_dir_exists_in_source_tree() -> None:
    assert (migrate.sql_dir() / "migrations" / "0001_events.sql").is_file()
    assert Path(migrate.sql_dir()).name == "sql"


def test_rollups_count_events_loaded_before_they_existed(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade from schema 1: the reports migration rolls up the events already there."""
    from datetime import datetime, timezone

    from pmta_pipe.load import Loader
    from pmta_pipe.parse import RecordParser
    from tests.helpers import stream, type_counts

    first = migrate.load_migrations()[0]
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA pmta")
        conn.execute(first.sql.encode())
        conn.execute(
            "CREATE TABLE pmta.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO pmta.schema_migrations VALUES (1, %s, %s)", (first.name, first.checksum)
        )
    data = stream(2000, days=2, seed=3)
    parser = RecordParser("old-host")
    # the loader of schema 1 had no pruned days to respect (nor had it rollups to keep:
    # neither has today's, which only logs hours, in the pipeline's bookkeeping)

    def partitions_only(self: Loader, conn: psycopg.Connection[Any], days: set[Any]) -> None:
        conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (sorted(days),))
        conn.commit()

    monkeypatch.setattr(Loader, "_ensure_partitions", partitions_only)
    loader = Loader(empty_dsn)
    loader.load(parser.parse(data.splitlines(), datetime.now(timezone.utc)), parser.header_line)
    loader.close()
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        applied = migrate.apply_migrations(conn)
        assert applied and "0001_events" not in applied
        expected = type_counts(data)
        got = dict(
            conn.execute("SELECT record_type, sum(n) FROM pmta.rollup_daily GROUP BY 1").fetchall()
        )
        assert {k: int(v) for k, v in got.items()} == dict(expected)
