"""Speed of every report view and of ``pmta-pipe report`` over a large loaded database.

``python bench/reports.py --dsn postgresql://postgres@127.0.0.1/postgres --records 10000000
[--days 30] [--keep DBNAME] [--reuse DBNAME]``

Creates a scratch database on that server, generates RECORDS accounting records over
DAYS days from 2026-01-01 (``generate.py``, several files with different seeds written
by parallel processes), loads them with ``pmta-pipe import --jobs 2`` (the real load
path), materializes the rollups with ``pmta-pipe rollup`` (the steady state of a
running ingest: every hour but the last), runs VACUUM ANALYZE, then measures with a
warm cache, as the median of RUNS runs after one unmeasured run:

* every view of ``docs/reports.md`` queried for a 7-day window
  (``day >= since AND day < until``; ``time`` for the hourly views), on one open
  connection, execute plus fetch of every row;
* for four views, the same answer recounted from ``pmta.events`` with ``GROUP BY``
  (checked equal to the view's rows);
* every ``pmta-pipe report KIND --format json`` for that window, as a subprocess (wall
  time, Python start-up included) and the same report's SQL alone
  (``report.fetch_report`` in this process);
* ``EXPLAIN (ANALYZE, BUFFERS)`` of a few views.

Prints Markdown on stdout, progress on stderr. ``--keep NAME`` loads into NAME and
keeps it; ``--reuse NAME`` measures an already loaded NAME (no generation, no load).
Without either, the scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmta_pipe.report import REPORTS, fetch_report

BENCH = Path(__file__).resolve().parent
PMTA_PIPE = Path(sys.executable).parent / "pmta-pipe"

#: (view, time column); report views first, then the base (fact) views they read
VIEWS: list[tuple[str, str]] = [
    *((v, "day") for v in (
        "delivery_summary", "delivery_by_domain", "delivery_by_provider", "deferral_codes",
        "deferral_patterns", "diag_patterns", "ip_summary", "ip_provider_summary",
        "ip_alerts", "bounce_categories", "job_summary", "vmta_summary", "complaints",
        "time_to_deliver", "blocklist_hits")),
    *((v, "time") for v in ("hourly", "hourly_by_ip", "hourly_by_provider")),
    ("warmup_progress", "day"), ("ip_alerts_hourly", "hour"),
    *((v, "day") for v in (
        "daily_traffic", "daily_bounces", "daily_diag", "delivery_time_histogram")),
    ("hourly_traffic", "time"),
]  # fmt: skip
BASE_VIEWS = {"daily_traffic", "daily_bounces", "daily_diag", "delivery_time_histogram",
              "hourly_traffic"}  # fmt: skip

_DAY = "(e.time_logged AT TIME ZONE 'UTC')::date"
_WINDOW = "e.time_logged >= %(t0)s AND e.time_logged < %(t1)s"
_N = "count(*) FILTER (WHERE e.record_type = '{}')"
_D, _B, _T = _N.format("d"), _N.format("b"), _N.format("t")

#: view -> (columns read from the view, the same answer from pmta.events)
RAW: dict[str, tuple[str, str]] = {
    "delivery_summary": (
        "day, received, delivered, bounced, expired, deferred, complaints, delivery_rate,"
        " bounce_rate, complaint_rate",
        f"SELECT day, r, d, b, x, t, f, pmta.rate(d, d + b), pmta.rate(b, d + b), pmta.rate(f, d)"
        f" FROM (SELECT {_DAY} AS day, {_N.format('r')} AS r, {_D} AS d, {_B} AS b,"
        f" count(*) FILTER (WHERE e.record_type = 'b' AND e.bounce_cat = 'message-expired') AS x,"
        f" {_T} AS t, {_N.format('f')} AS f"
        f" FROM pmta.events e WHERE {_WINDOW} GROUP BY 1) s",
    ),
    "ip_summary": (
        "day, dlv_source_ip, delivered, bounced, deferred, attempts, bounce_rate, deferral_rate",
        f"SELECT day, ip, d, b, t, d + b + t, pmta.rate(b, d + b + t), pmta.rate(t, d + b + t)"
        f" FROM (SELECT {_DAY} AS day, e.dlv_source_ip AS ip, {_D} AS d, {_B} AS b, {_T} AS t"
        f" FROM pmta.events e WHERE {_WINDOW} AND e.record_type IN ('d', 'b', 't')"
        f" GROUP BY 1, 2) s",
    ),
    "delivery_by_domain": (
        "day, rcpt_domain, provider, delivered, bounced, deferred, delivery_rate",
        f"SELECT day, dom, coalesce(mp.provider, dom), d, b, t, pmta.rate(d, d + b)"
        f" FROM (SELECT {_DAY} AS day, e.rcpt_domain AS dom, {_D} AS d, {_B} AS b, {_T} AS t"
        f" FROM pmta.events e WHERE {_WINDOW} AND e.record_type IN ('d', 'b', 't')"
        f" GROUP BY 1, 2) s LEFT JOIN pmta.mailbox_providers mp ON mp.domain = s.dom",
    ),
    "deferral_codes": (
        "day, provider, code, n",
        f"SELECT {_DAY}, coalesce(mp.provider, e.rcpt_domain),"
        f" nullif(pmta.reply_code(e.dsn_diag, e.dsn_status), ''), count(*)"
        f" FROM pmta.events e LEFT JOIN pmta.mailbox_providers mp ON mp.domain = e.rcpt_domain"
        f" WHERE {_WINDOW} AND e.record_type = 't' GROUP BY 1, 2, 3",
    ),
}

#: report kinds of ``pmta-pipe report``, in the order of docs/reports.md
KINDS = list(REPORTS)

#: views whose plans are printed
PLANS = ["delivery_by_domain", "deferral_patterns", "ip_alerts"]


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall time in ms of ``runs`` calls after one unmeasured warm-up, and its result."""
    result = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


def fetch_all(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> list[Any]:
    return conn.execute(sql.encode(), params).fetchall()


def generate_files(folder: Path, records: int, days: int, start: str, files: int) -> list[Path]:
    """``files`` CSV files of about records/files records each, written in parallel."""
    paths, procs = [], []
    for i in range(files):
        n = records // files + (1 if i < records % files else 0)
        path = folder / f"acct-{i + 1}.csv"
        cmd = [sys.executable, str(BENCH / "generate.py"), str(n), "--days", str(days),
               "--seed", str(i + 1), "--start", start]  # fmt: skip
        with path.open("wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out))
        paths.append(path)
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"generate.py failed with exit code {p.returncode}")
    return paths


def load(dsn: str, records: int, days: int, start: str, files: int) -> float:
    """Generate and import; seconds spent importing."""
    with tempfile.TemporaryDirectory(prefix="pmta-bench-") as tmp:
        t = time.perf_counter()
        paths = generate_files(Path(tmp), records, days, start, files)
        size = sum(p.stat().st_size for p in paths) / 2**20
        log(f"generated {records} records in {len(paths)} files ({size:.0f} MiB)"
            f" in {time.perf_counter() - t:.0f} s")  # fmt: skip
        t = time.perf_counter()
        cmd = [str(PMTA_PIPE), "import", "--jobs", "2", "--dsn", dsn, "--source", "bench-host",
               "--log-level", "warning", *map(str, paths)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        seconds = time.perf_counter() - t
        log(f"imported in {seconds:.0f} s ({records / seconds:,.0f} records/s)")
        # the steady state of a running ingest: materialized up to the grace
        t = time.perf_counter()
        cmd = [str(PMTA_PIPE), "rollup", "--dsn", dsn, "--log-level", "warning"]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        log(f"materialized in {time.perf_counter() - t:.0f} s")
    return seconds


def describe(conn: psycopg.Connection[Any]) -> list[str]:
    """Lines about the data: events, rollup row counts, sizes."""
    lines = []
    for setting in ("server_version", "shared_buffers", "work_mem", "jit"):
        r = conn.execute(f"SHOW {setting}").fetchone()
        assert r is not None
        lines.append(f"{setting}: {r[0]}")
    row = conn.execute(
        "SELECT count(*), min(time_logged), max(time_logged) FROM pmta.events"
    ).fetchone()
    assert row is not None
    lines.append(f"pmta.events: {row[0]:,} rows, {row[1]} .. {row[2]}")
    for table in ("rollup_daily", "rollup_hourly", "rollup_diag", "rollup_delivery_time"):
        r = conn.execute(
            f"SELECT count(*), pg_total_relation_size('pmta.{table}') FROM pmta.{table}"
        ).fetchone()
        assert r is not None
        lines.append(f"pmta.{table}: {r[0]:,} rows, {r[1] / 2**20:.1f} MiB")
    r = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert r is not None
    lines.append(f"database: {r[0] / 2**30:.2f} GiB")
    return lines


def measure(dsn: str, since: date, until: date, runs: int) -> None:
    t0 = datetime(since.year, since.month, since.day, tzinfo=timezone.utc)
    t1 = datetime(until.year, until.month, until.day, tzinfo=timezone.utc)
    with psycopg.connect(dsn, autocommit=True) as conn:
        print("## Data\n")
        for line in describe(conn):
            print(f"- {line}")
        print(f"\nWindow: {since} <= day < {until}; warm cache, median of {runs} runs.\n")

        print("## Views\n")
        print("| view | rows | view ms | raw recount ms | same answer |")
        print("|---|---:|---:|---:|---|")
        for view, col in VIEWS:
            params = {"a": since if col == "day" else t0, "b": until if col == "day" else t1}
            sql = f"SELECT * FROM pmta.{view} WHERE {col} >= %(a)s AND {col} < %(b)s"
            ms, rows = median_ms(functools.partial(fetch_all, conn, sql, params), runs)
            raw_ms, same = "", ""
            if view in RAW:
                cols, raw_sql = RAW[view]
                view_rows = conn.execute(
                    f"SELECT {cols} FROM pmta.{view} WHERE day >= %(a)s AND day < %(b)s", params
                ).fetchall()
                rms, raw_rows = median_ms(
                    functools.partial(fetch_all, conn, raw_sql, {"t0": t0, "t1": t1}), runs
                )
                raw_ms = f"{rms:,.0f}"
                equal = sorted(map(repr, raw_rows)) == sorted(map(repr, view_rows))
                same = "yes" if equal else "NO"
            name = f"{view} (base)" if view in BASE_VIEWS else view
            print(f"| {name} | {len(rows):,} | {ms:.1f} | {raw_ms} | {same} |", flush=True)

        print("\n## pmta-pipe report\n")
        last = date.fromordinal(until.toordinal() - 1)
        print(f"`pmta-pipe report KIND --since {since} --until {until} --format json`\n")
        print("| kind | rows | command wall ms | SQL ms |")
        print("|---|---:|---:|---:|")
        env = {**os.environ, "PMTA_PIPE_DSN": dsn}
        for kind in KINDS:
            sql_ms, result = median_ms(
                functools.partial(fetch_report, conn, kind, (since, last), {}, 20), runs
            )
            cmd = [str(PMTA_PIPE), "report", kind, "--since", str(since), "--until", str(until),
                   "--format", "json"]  # fmt: skip
            wall_ms, _ = median_ms(
                functools.partial(subprocess.run, cmd, check=True, env=env, capture_output=True),
                runs,
            )
            print(f"| {kind} | {len(result[1])} | {wall_ms:.0f} | {sql_ms:.1f} |", flush=True)

        print("\n## Plans\n")
        for view in PLANS:
            plan = conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM pmta.{view}"
                f" WHERE day >= %(a)s AND day < %(b)s",
                {"a": since, "b": until},
            ).fetchall()
            print(f"### {view}\n\n```")
            print("\n".join(r[0] for r in plan))
            print("```\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", required=True, help="admin connection to the server")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--start", default="2026-01-01")
    p.add_argument("--since", type=date.fromisoformat, default=date(2026, 1, 10))
    p.add_argument("--until", type=date.fromisoformat, default=date(2026, 1, 17))
    p.add_argument("--files", type=int, default=4, help="generated files (parallel writers)")
    p.add_argument("--runs", type=int, default=5)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", metavar="DBNAME", help="load into DBNAME and keep it")
    g.add_argument("--reuse", metavar="DBNAME", help="measure DBNAME, already loaded")
    a = p.parse_args()

    name = a.reuse or a.keep or f"pmta_reports_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(a.dsn, dbname=name)
    try:
        if not a.reuse:
            with psycopg.connect(a.dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            seconds = load(dsn, a.records, a.days, a.start, a.files)
            t = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            log(f"VACUUM ANALYZE in {time.perf_counter() - t:.0f} s")
            print(f"Loaded {a.records:,} records over {a.days} days with"
                  f" `pmta-pipe import --jobs 2` in {seconds:.0f} s.\n")  # fmt: skip
        measure(dsn, a.since, a.until, a.runs)
    finally:
        if not (a.keep or a.reuse):
            with psycopg.connect(a.dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
