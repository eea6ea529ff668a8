"""``pmta-pipe prune``: whole partitions dropped, rollups and rejects thinned, locks respected."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pmta_pipe import prune
from pmta_pipe.config import Settings
from pmta_pipe.importer import import_files
from pmta_pipe.progress import LogProgress
from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]


def partitions(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'pmta.events'::regclass ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def names(first: date, days: int) -> list[str]:
    return [f"events_{first + timedelta(days=k):%Y%m%d}" for k in range(days)]


@pytest.fixture
def loaded(dsn: str, conn: Conn, tmp_path: Path) -> tuple[date, date]:
    """1,000 records over days 45..41 ago, and 600 over yesterday and today."""
    today = datetime.now(timezone.utc).date()
    old, recent = today - timedelta(days=45), today - timedelta(days=1)
    (tmp_path / "acct-old.csv").write_bytes(stream(1000, days=5, seed=1, start=old.isoformat()))
    (tmp_path / "acct-new.csv").write_bytes(stream(600, days=2, seed=2, start=recent.isoformat()))
    settings = Settings(dsn=dsn, source="test-host")
    import_files(settings, [str(tmp_path)], progress=LogProgress(0, 0), jobs=1)
    assert partitions(conn) == names(old, 5) + names(recent, 2)
    conn.execute("CREATE TABLE pmta.rollup_test (bucket timestamptz NOT NULL, n integer)")
    conn.execute(
        "INSERT INTO pmta.rollup_test SELECT now() - make_interval(days => d), d"
        " FROM unnest(array[800, 731, 729, 100, 0]) d"
    )
    conn.execute("CREATE TABLE pmta.rollup_nobucket (day date, n integer)")
    conn.execute("INSERT INTO pmta.rollup_nobucket VALUES ('2001-01-01', 1)")
    conn.execute(
        "INSERT INTO pmta.rejects (reject_id, source, reason, raw_line, received_at) VALUES"
        " (gen_random_uuid(), 't', 'x', 'old', now() - interval '40 days'),"
        " (gen_random_uuid(), 't', 'x', 'new', now() - interval '1 day')"
    )
    return old, recent


def run_prune(settings: Settings, **kwargs: Any) -> int:
    """What ``pmta-pipe prune`` does: prune, print the result, exit 1 when a table was busy."""
    result = prune.prune(settings, **kwargs)
    print(prune.format_result(result))
    return 1 if result.skipped else 0


def test_dry_run_changes_nothing(
    dsn: str, conn: Conn, loaded: tuple[date, date], capsys: pytest.CaptureFixture[str]
) -> None:
    before = partitions(conn)
    code = run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=True)
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("would drop pmta.events_") == 5
    assert "events: would drop 5 partitions, 1000 rows" in out
    assert "rollups: pmta.rollup_test: 2 rows before" in out
    assert "rollup_nobucket" not in out
    assert "rejects: 1 would be deleted" in out
    assert partitions(conn) == before
    assert count(conn, "SELECT count(*) FROM pmta.events") == 1600
    assert count(conn, "SELECT count(*) FROM pmta.rollup_test") == 5
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 2


def test_prune_drops_old_partitions_and_thins_rollups(
    dsn: str, conn: Conn, loaded: tuple[date, date], capsys: pytest.CaptureFixture[str]
) -> None:
    _, recent = loaded
    code = run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=False)
    assert code == 0
    assert "events: dropped 5 partitions, 1000 rows" in capsys.readouterr().out
    assert partitions(conn) == names(recent, 2)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE time_logged < %s", cutoff) == 0
    assert count(conn, "SELECT count(*) FROM pmta.events") == 600
    kept = conn.execute("SELECT n FROM pmta.rollup_test ORDER BY n").fetchall()
    assert kept == [(0,), (100,), (729,)]
    assert count(conn, "SELECT count(*) FROM pmta.rollup_nobucket") == 1
    assert conn.execute("SELECT raw_line FROM pmta.rejects").fetchall() == [("new",)]
    # a second run finds nothing more to do
    assert run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=False) == 0
    assert "events: dropped 0 partitions, 0 rows" in capsys.readouterr().out


def test_busy_table_is_skipped_not_waited_for(
    dsn: str, conn: Conn, loaded: tuple[date, date], monkeypatch: pytest.MonkeyPatch
) -> None:
    old, recent = loaded
    monkeypatch.setattr(prune, "LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(prune, "RETRY_PAUSE", 0.05)
    with psycopg.connect(dsn) as loader:  # a loader in the middle of a batch
        loader.execute("LOCK TABLE pmta.events IN ROW EXCLUSIVE MODE")
        code = run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=False)
        assert code == 1
        loader.rollback()
    assert partitions(conn) == names(old, 5) + names(recent, 2)
    assert run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=False) == 0
    assert partitions(conn) == names(recent, 2)


ROLLUPS = ("rollup_daily", "rollup_hourly", "rollup_diag", "rollup_delivery_time")


def rollup_rows(conn: Conn) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: sorted(conn.execute(f"SELECT * FROM pmta.{t}").fetchall(), key=repr) for t in ROLLUPS
    }


def test_a_pruned_day_is_sealed_until_reopened_then_rebuilt_exactly(
    dsn: str, conn: Conn, loaded: tuple[date, date], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    old, recent = loaded
    before = rollup_rows(conn)
    run_prune(Settings(dsn=dsn), keep_days=30, keep_rollup_days=730, dry_run=False)
    sealed = [r[0] for r in conn.execute("SELECT day FROM pmta.pruned_days ORDER BY 1")]
    assert sealed == [old + timedelta(days=k) for k in range(5)]
    assert count(conn, "SELECT sum(events) FROM pmta.pruned_days") == 1000
    settings = Settings(dsn=dsn, source="test-host")
    again = import_files(
        settings, [str(tmp_path / "acct-old.csv")], force=True, progress=LogProgress(0, 0)
    )  # the routine backfill of /var/log/pmta/*: nothing is loaded twice
    assert (again.totals().inserted, again.totals().duplicates) == (0, 1000)
    assert partitions(conn) == names(recent, 2)  # no partition made again
    assert rollup_rows(conn) == before  # the reports count each record once
    assert count(conn, "SELECT count(*) FROM pmta.events") == 600
    # an operator reopens the days: their rollups go, the import rebuilds them exactly
    days = [d.isoformat() for d in sealed]
    proc = run_cli(["prune", *(a for d in days for a in ("--reopen", d))], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().count(": reopened: ") == 5
    assert count(conn, "SELECT count(*) FROM pmta.pruned_days") == 0
    summary = import_files(
        settings, [str(tmp_path / "acct-old.csv")], force=True, progress=LogProgress(0, 0)
    )
    assert summary.totals().inserted == 1000
    assert count(conn, "SELECT count(*) FROM pmta.events") == 1600
    assert rollup_rows(conn) == before
    assert partitions(conn) == names(old, 5) + names(recent, 2)


def test_reopen_is_a_one_line_error_with_other_flags(cli_env: dict[str, str]) -> None:
    proc = run_cli(["prune", "--reopen", "2026-01-01", "--keep-days", "3"], cli_env)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: --reopen goes alone (hint:")
    proc = run_cli(["prune", "--reopen", "yesterday"], cli_env)
    assert proc.returncode == 2
    assert "expected a day as YYYY-MM-DD" in proc.stderr.decode()
    proc = run_cli(["prune"], cli_env)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: prune needs --keep-days N (hint:")


def test_cli_prune_dry_run(cli_env: dict[str, str], conn: Conn, loaded: tuple[date, date]) -> None:
    proc = run_cli(["prune", "--keep-days", "30", "--dry-run"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"events: would drop 5 partitions, 1000 rows" in proc.stdout
    assert count(conn, "SELECT count(*) FROM pmta.events") == 1600
    proc = run_cli(["prune", "--keep-days", "0"], cli_env)
    assert proc.returncode == 2
    assert proc.stderr.startswith(b"error: --keep-days and --keep-rollup-days must be at least 1")


def test_reports_outlive_raw_events(cli_env: dict[str, str], conn: Conn) -> None:
    """Piped data older than 30 days, then prune --keep-days 30: no raw events are left,
    and the report views (from the rollups) give the same totals as before."""
    data = stream(5000, days=3, seed=11, start="2025-06-01")
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    totals = "SELECT sum(delivered), sum(bounced), sum(deferred), count(*) FROM pmta.ip_summary"
    domains = "SELECT sum(delivered), sum(bounced), sum(deferred) FROM pmta.delivery_by_domain"
    before = conn.execute(totals).fetchone(), conn.execute(domains).fetchone()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 5000
    proc = run_cli(["prune", "--keep-days", "30"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 0
    assert (conn.execute(totals).fetchone(), conn.execute(domains).fetchone()) == before
    assert before[0] is not None and before[0][0] > 0
    # the same stream again (a replay, or the parallel file imported): still the same
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"5000 read = 0 inserted + 5000 duplicates" in proc.stderr
    assert count(conn, "SELECT count(*) FROM pmta.events") == 0
    assert (conn.execute(totals).fetchone(), conn.execute(domains).fetchone()) == before
