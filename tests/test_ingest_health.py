"""``pmta.ingest_health`` and the batch ledger behind it, number by number, for every route."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]

HEALTH = (
    "SELECT last_committed_at IS NOT NULL, last_time_logged, data_lag = now() - last_time_logged,"
    " batches_last_hour, records_last_hour, inserted_last_hour, rejected_last_hour,"
    " rejected_by_database_last_hour, last_any_commit_at IS NOT NULL"
    " FROM pmta.ingest_health WHERE source = %s"
)


def test_the_pipe_s_health_row_equals_a_recount(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(12_000, days=2) + b"d,not a time,o@x,r@x\n"  # one parser reject
    env = dict(cli_env, PMTA_PIPE_BATCH_ROWS="1000")
    got = run_cli(["ingest"], env, input=data)
    assert got.returncode == 0, got.stderr.decode()
    newest = conn.execute("SELECT max(time_logged) FROM pmta.events").fetchone()
    batches = count(conn, "SELECT count(*) FROM pmta.ingest_batches WHERE route = 'pipe'")
    assert batches == 13  # 12,001 records in batches of 1,000
    row = conn.execute(HEALTH, ("test-host",)).fetchone()
    assert row == (True, newest[0] if newest else None, True, 13, 12_001, 12_000, 1, 0, True)
    # every batch row says which time_logged range it holds, and the rows add up
    first, last, records, inserted = conn.execute(
        "SELECT min(first_time_logged), max(last_time_logged), sum(records), sum(inserted)"
        " FROM pmta.ingest_batches"
    ).fetchone() or (None, None, 0, 0)
    span = conn.execute("SELECT min(time_logged), max(time_logged) FROM pmta.events").fetchone()
    assert (first, last) == span
    assert (records, inserted) == (12_001, 12_000)
    assert count(conn, "SELECT count(*) FROM pmta.ingest_batches WHERE first_time_logged IS NULL"
                 " AND records > rejected") == 0  # fmt: skip


def test_an_import_counts_in_volumes_but_not_as_the_pipe_s_pulse(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "acct-old.csv"
    path.write_bytes(stream(3_000, days=1, seed=5))
    got = run_cli(["import", str(path), "--source", "old-host"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert "3000 read = 3000 inserted + 0 duplicates + 0 rejected" in got.stdout.decode()
    row = conn.execute(HEALTH, ("old-host",)).fetchone()
    assert row is not None
    pipe_commit, last_time_logged, lag, batches, records, inserted, rejected, by_db, any_ = row
    assert (pipe_commit, last_time_logged, lag) == (False, None, None)  # no pipe batch
    assert (batches, records, inserted, rejected, by_db, any_) == (1, 3_000, 3_000, 0, 0, True)
    assert (
        count(
            conn,
            "SELECT count(*) FROM pmta.ingest_batches WHERE route = 'import' AND import_path = %s",
            str(path),
        )
        == 1
    )
