"""Materialized rollups: exact against an independent count of the input at every step.

The count is Python over the input (csv, the UTC hour and day of timeLogged); the
reports (``pmta.rollup_*`` views and the report views on them) must equal it after
a live ingest, before and after materializing, after a backfill into hours already
materialized, after replays and duplicates, after a kill mid-materialization, after
two materializers at once, and after a rebuild.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pmta_pipe import materialize
from pmta_pipe.config import Settings
from pmta_pipe.importer import import_files
from pmta_pipe.progress import LogProgress
from tests.conftest import count, run_cli
from tests.helpers import stream
from tests.test_reports_rollups import COLUMNS, RECOUNTS

Conn = psycopg.Connection[tuple[Any, ...]]
Key = tuple[str, str]


def independent(*inputs: bytes) -> tuple[Counter[Key], Counter[Key]]:
    """Records per (UTC day, type) and (UTC hour, type) of the distinct records of the inputs."""
    days: Counter[Key] = Counter()
    hours: Counter[Key] = Counter()
    seen: set[tuple[str, ...]] = set()
    for data in inputs:
        rows = csv.reader(io.StringIO(data.decode()))
        header = next(rows)
        at = header.index("timeLogged")
        for row in rows:
            if not row or row[0] == "type" or tuple(row) in seen:
                continue
            seen.add(tuple(row))
            utc = datetime.strptime(row[at], "%Y-%m-%d %H:%M:%S%z").astimezone(timezone.utc)
            days[utc.strftime("%Y-%m-%d"), row[0]] += 1
            hours[utc.strftime("%Y-%m-%d %H"), row[0]] += 1
    return days, hours


def reported(conn: Conn) -> tuple[Counter[Key], Counter[Key]]:
    days: Counter[Key] = Counter()
    for day, rtype, n in conn.execute(
        "SELECT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD'), record_type, n"
        " FROM pmta.rollup_daily"
    ):
        days[day, rtype] += n  # one row per key: summing changes nothing, keys are checked below
    hours: Counter[Key] = Counter()
    for hour, rtype, n in conn.execute(
        "SELECT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24'), record_type, sum(n)"
        " FROM pmta.rollup_hourly GROUP BY 1, 2"
    ):
        hours[hour, rtype] += int(n)
    return days, hours


def assert_exact(conn: Conn, *inputs: bytes) -> None:
    """The views equal the independent count, every view has one row per key, and the
    report views on them (daily_counts, hourly) give the same totals."""
    want_days, want_hours = independent(*inputs)
    got_days, got_hours = reported(conn)
    assert got_days == want_days
    assert got_hours == want_hours
    for table, recount in RECOUNTS.items():
        stored = conn.execute(f"SELECT {COLUMNS[table]} FROM pmta.{table}").fetchall()
        assert sorted(stored, key=repr) == sorted(conn.execute(recount).fetchall(), key=repr)
    per_type = Counter[str]()
    for (_, rtype), n in want_days.items():
        per_type[rtype] += n
    row = conn.execute(
        "SELECT sum(received), sum(delivered), sum(bounced), sum(deferred), sum(complaints)"
        " FROM pmta.delivery_summary"
    ).fetchone()
    assert row == (per_type["r"], per_type["d"], per_type["b"], per_type["t"], per_type["f"])


def materialized_equal_a_recount(conn: Conn) -> None:
    """The materialized tables alone hold exactly the events below the watermark."""
    (watermark,) = conn.execute("SELECT watermark FROM pmta.rollup_state").fetchone()  # type: ignore[misc]
    assert count(conn, "SELECT count(*) FROM pmta.rollup_invalidations WHERE hour < %s",
                 watermark) == 0  # fmt: skip
    for table, recount in RECOUNTS.items():
        below = recount.replace("FROM pmta.events", "FROM pmta.events WHERE time_logged < %s")
        if "WHERE record_type" in below:
            below = below.replace("WHERE record_type", "AND record_type", 1)
        # day rows too: the watermark's day holds its hours below the watermark
        mat = conn.execute(f"SELECT {COLUMNS[table]} FROM pmta.{table}_materialized")
        assert sorted(mat.fetchall(), key=repr) == sorted(
            conn.execute(below, (watermark,)).fetchall(), key=repr
        ), table


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def settings(dsn: str, source: str = "test-host") -> Settings:
    return Settings(dsn=dsn, source=source, rollup_interval=0, rollup_grace=0)


def do_import(dsn: str, path: str, source: str = "test-host", force: bool = False) -> int:
    summary = import_files(
        settings(dsn, source), [path], force=force, progress=LogProgress(0, 0), jobs=1
    )
    return summary.totals().inserted


def test_live_ingest_then_materialized_steps_stay_exact(
    cli_env: dict[str, str], conn: Conn, dsn: str
) -> None:
    data = stream(8000, days=3, seed=21, start="2026-02-01")
    env = {**cli_env, "PMTA_PIPE_ROLLUP_INTERVAL": "0.1", "PMTA_PIPE_ROLLUP_GRACE": "0"}
    proc = run_cli(["ingest"], env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 8000
    assert_exact(conn, data)
    # small steps, each checked: exact whatever the watermark
    while True:
        got = materialize.run(conn, grace=0, max_steps=1, max_hours=7)
        assert not got.busy
        assert_exact(conn, data)
        materialized_equal_a_recount(conn)
        if got.caught_up:
            break
    (watermark,) = conn.execute("SELECT watermark FROM pmta.rollup_state").fetchone()  # type: ignore[misc]
    newest = conn.execute("SELECT max(time_logged) FROM pmta.events").fetchone()
    assert newest is not None and watermark is not None
    assert watermark <= newest[0] and (newest[0] - watermark).total_seconds() < 3600
    st = materialize.status(conn)
    assert st["invalidated_hours"] == 0 and 0 < st["tail_records"] < 8000


def test_a_backfill_into_materialized_hours_is_counted_again(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    first = stream(6000, days=3, seed=22, start="2026-02-01")
    late = stream(3000, days=2, seed=23, start="2026-02-01")  # the same hours, other records
    assert do_import(dsn, write(tmp_path, "acct-a.csv", first)) == 6000
    assert materialize.run(conn, grace=0).caught_up
    assert count(conn, "SELECT count(*) FROM pmta.rollup_invalidations") == 0
    assert do_import(dsn, write(tmp_path, "acct-b.csv", late)) == 3000
    assert count(conn, "SELECT count(*) FROM pmta.rollup_invalidations") > 0
    assert_exact(conn, first, late)  # invalidated days counted live meanwhile
    got = materialize.run(conn, grace=0)
    assert got.caught_up and got.redone_days == 2
    assert count(conn, "SELECT count(*) FROM pmta.rollup_invalidations") == 0
    assert_exact(conn, first, late)
    materialized_equal_a_recount(conn)


def test_replays_and_duplicates_log_nothing_and_count_once(
    dsn: str, conn: Conn, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data = stream(5000, days=2, seed=24, start="2026-02-01")
    path = write(tmp_path, "acct-a.csv", data)
    assert do_import(dsn, path) == 5000
    materialize.run(conn, grace=0)
    # the same records again: through the pipe, a forced re-import, under another name
    proc = run_cli(["ingest"], {**cli_env, "PMTA_PIPE_ROLLUP_INTERVAL": "0"}, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert do_import(dsn, path, force=True) == 0
    assert count(conn, "SELECT count(*) FROM pmta.rollup_invalidations") == 0
    assert_exact(conn, data)
    materialize.run(conn, grace=0)
    assert_exact(conn, data)
    materialized_equal_a_recount(conn)


def _big_range(dsn: str, tmp_path: Path) -> bytes:
    data = stream(40_000, days=40, seed=25, start="2025-11-01")
    assert do_import(dsn, write(tmp_path, "acct-big.csv", data)) == 40_000
    return data


def test_a_kill_9_of_the_materializer_leaves_everything_exact(
    dsn: str, conn: Conn, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data = _big_range(dsn, tmp_path)
    env = {**cli_env, "PMTA_PIPE_ROLLUP_GRACE": "0"}
    killed = 0
    for delay in (0.6, 1.0, 1.5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmta_pipe", "rollup"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        # the killed client's backend rolls back; wait until it is gone
        for _ in range(100):
            if not count(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                         " current_database() AND pid <> pg_backend_pid()"):  # fmt: skip
                break
            time.sleep(0.1)
        assert_exact(conn, data)
        materialized_equal_a_recount(conn)
    assert killed, "the materializer ended before any kill: make the range bigger"
    assert materialize.run(conn, grace=0).caught_up
    assert_exact(conn, data)
    materialized_equal_a_recount(conn)


def test_a_backend_terminated_in_phase_2_changes_nothing(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    data = _big_range(dsn, tmp_path)
    errors: list[BaseException] = []

    def materializer() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                materialize.run(c, grace=0, max_hours=24 * 40)  # one long step
        except psycopg.Error as exc:
            errors.append(exc)

    t = threading.Thread(target=materializer)
    t.start()
    for _ in range(200):  # terminate it while it counts
        time.sleep(0.05)
        hit = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE '%rollup_materialize%' AND pid <> pg_backend_pid()"
            " AND state = 'active'"
        ).fetchall()
        if hit:
            break
    t.join()
    assert errors, "the step ended before it was terminated"
    assert conn.execute("SELECT watermark FROM pmta.rollup_state").fetchone() == (None,)
    assert count(conn, "SELECT count(*) FROM pmta.rollup_hourly_materialized") == 0
    assert_exact(conn, data)
    assert materialize.run(conn, grace=0).caught_up
    assert_exact(conn, data)
    materialized_equal_a_recount(conn)


def test_two_materializers_at_once_do_not_double_count(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    data = _big_range(dsn, tmp_path)
    results: list[materialize.RollupResult] = []
    start = threading.Barrier(3)

    def materializer() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            start.wait()
            while True:
                got = materialize.run(c, grace=0, max_steps=1, max_hours=48)
                results.append(got)
                if got.caught_up:
                    return

    threads = [threading.Thread(target=materializer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.hours for r in results) == sum(
        r.hours for r in results if not r.busy
    )  # a busy run did nothing
    assert_exact(conn, data)
    materialized_equal_a_recount(conn)


def test_materialized_state_equals_a_full_rebuild(
    dsn: str, conn: Conn, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    first = stream(6000, days=3, seed=26, start="2026-02-01")
    late = stream(2000, days=3, seed=27, start="2026-02-01")
    do_import(dsn, write(tmp_path, "acct-a.csv", first))
    materialize.run(conn, grace=0)
    do_import(dsn, write(tmp_path, "acct-b.csv", late))
    materialize.run(conn, grace=0)
    before = {
        t: sorted(conn.execute(f"SELECT * FROM pmta.{t}_materialized").fetchall(), key=repr)
        for t in COLUMNS
    }
    proc = run_cli(["rollup", "--rebuild", "all"], {**cli_env, "PMTA_PIPE_ROLLUP_GRACE": "0"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert "hours to count again" in proc.stdout.decode()
    assert "caught up" in proc.stdout.decode()
    after = {
        t: sorted(conn.execute(f"SELECT * FROM pmta.{t}_materialized").fetchall(), key=repr)
        for t in COLUMNS
    }
    assert after == before
    assert_exact(conn, first, late)


def test_cli_rollup_prints_what_it_did_and_refuses_a_bad_day(
    cli_env: dict[str, str], conn: Conn, dsn: str, tmp_path: Path
) -> None:
    data = stream(2000, days=2, seed=28, start="2026-02-01")
    do_import(dsn, write(tmp_path, "acct-a.csv", data))
    proc = run_cli(["rollup", "--format", "json"], {**cli_env, "PMTA_PIPE_ROLLUP_GRACE": "0"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert '"caught_up": true' in proc.stdout.decode()
    proc = run_cli(["rollup", "--rebuild", "yesterday"], cli_env)
    assert proc.returncode == 2
    assert "expected a day as YYYY-MM-DD or all" in proc.stderr.decode()
    proc = run_cli(["status", "--format", "json"], cli_env)
    assert '"invalidated_hours": 0' in proc.stdout.decode()
    assert_exact(conn, data)


def test_status_shows_the_rollups(cli_env: dict[str, str], dsn: str, tmp_path: Path) -> None:
    do_import(dsn, write(tmp_path, "acct-a.csv", stream(500, days=1, seed=29)))
    proc = run_cli(["status"], cli_env)
    assert "rollups: materialized up to nothing yet" in proc.stdout.decode()
    run_cli(["rollup"], {**cli_env, "PMTA_PIPE_ROLLUP_GRACE": "0"})
    proc = run_cli(["status"], cli_env)
    out = proc.stdout.decode()
    assert "rollups: materialized up to 2026-01-0" in out
    assert "0 invalidated hours" in out


@pytest.mark.parametrize("interval", ["0"])
def test_ingest_with_the_background_step_off_still_reports_exactly(
    cli_env: dict[str, str], conn: Conn, interval: str
) -> None:
    data = stream(1500, days=1, seed=30)
    proc = run_cli(["ingest"], {**cli_env, "PMTA_PIPE_ROLLUP_INTERVAL": interval}, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert conn.execute("SELECT watermark FROM pmta.rollup_state").fetchone() == (None,)
    assert_exact(conn, data)


def test_prune_materializes_first_and_the_reports_stay_the_same(
    dsn: str, conn: Conn, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    old = stream(4000, days=3, seed=31, start="2025-06-01")  # nothing materialized yet
    assert do_import(dsn, write(tmp_path, "acct-old.csv", old)) == 4000
    assert_exact(conn, old)
    proc = run_cli(["prune", "--keep-days", "30"], cli_env)  # the default grace of 300 s
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 0
    want_days, _ = independent(old)
    days = len({day for day, _ in want_days})
    assert count(conn, "SELECT count(*) FROM pmta.pruned_days") == days
    got_days, _ = reported(conn)
    assert got_days == want_days
    per_type = Counter[str]()
    for (_, rtype), n in want_days.items():
        per_type[rtype] += n
    row = conn.execute(
        "SELECT sum(received), sum(delivered), sum(bounced), sum(deferred), sum(complaints)"
        " FROM pmta.delivery_summary"
    ).fetchone()
    assert row == (per_type["r"], per_type["d"], per_type["b"], per_type["t"], per_type["f"])
