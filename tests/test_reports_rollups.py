"""Rollups against the raw data: a generated stream counted independently, and a recount."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date, datetime, timezone
from typing import Any

import psycopg

from tests.conftest import SAMPLES
from tests.helpers import stream
from tests.test_reports import load_bytes

Conn = psycopg.Connection[tuple[Any, ...]]

# every rollup recounted from pmta.events with the derivations documented in 0002
RECOUNTS = {
    "rollup_daily": """
        SELECT pmta.utc_day(time_logged), source, record_type,
               pmta.rollup_domain(record_type, rcpt_domain, queue),
               pmta.rollup_ip(record_type, dlv_source_ip, rep_source_ip),
               coalesce(vmta, ''), coalesce(vmta_pool, ''),
               pmta.rollup_job(record_type, job_id, extra),
               pmta.rollup_bounce_cat(record_type, bounce_cat), count(*)
        FROM pmta.events GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9""",
    "rollup_hourly": """
        SELECT pmta.utc_hour(time_logged), source, record_type,
               pmta.rollup_domain(record_type, rcpt_domain, queue),
               pmta.rollup_ip(record_type, dlv_source_ip, rep_source_ip),
               pmta.rollup_bounce_cat(record_type, bounce_cat), count(*)
        FROM pmta.events GROUP BY 1, 2, 3, 4, 5, 6""",
    "rollup_diag": """
        SELECT pmta.utc_day(time_logged), source, record_type,
               pmta.rollup_domain(record_type, rcpt_domain, queue),
               pmta.rollup_ip(record_type, dlv_source_ip, rep_source_ip),
               coalesce(vmta, ''), pmta.reply_code(dsn_diag, dsn_status),
               pmta.diag_pattern(dsn_diag), count(*), min(dsn_diag COLLATE "C")
        FROM pmta.events WHERE record_type IN ('t', 'tq', 'b', 'rb')
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8""",
    "rollup_delivery_time": """
        SELECT pmta.utc_day(time_logged), source,
               pmta.rollup_domain(record_type, rcpt_domain, queue),
               pmta.delivery_bin(pmta.delivery_seconds(record_type, total_seconds_queued,
                                                       time_logged, time_queued)), count(*)
        FROM pmta.events
        WHERE record_type = 'd' AND pmta.delivery_seconds(record_type, total_seconds_queued,
                                                          time_logged, time_queued) IS NOT NULL
        GROUP BY 1, 2, 3, 4""",
}
COLUMNS = {
    "rollup_daily": "bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool,"
    " job_id, bounce_cat, n",
    "rollup_hourly": "bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat, n",
    "rollup_diag": "bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern,"
    " n, example",
    "rollup_delivery_time": "bucket, source, rcpt_domain, bin, n",
}


# after pmta.apply_rollups() over every event: all of them are materialized
MATERIALIZED_ALL = """
    UPDATE pmta.rollup_state SET threshold = m.w, watermark = m.w
    FROM (SELECT pmta.utc_hour(max(time_logged)) + interval '1 hour' AS w FROM pmta.events) m
"""


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_rollups_equal_a_recount_after_duplicates_and_replays(dsn: str, conn: Conn) -> None:
    first = stream(6000, days=2, seed=3)
    other = stream(3000, days=2, seed=4, start="2026-01-02")
    head, body = lines(first)[0], lines(first)[1:]
    inserted = load_bytes(dsn, head + b"".join(body[:4000]), "host-a", batch_rows=700)
    # an overlapping replay, a full re-ingest from another host name, then the rest
    inserted += load_bytes(dsn, head + b"".join(body[2500:4500]), "host-a", batch_rows=333)
    inserted += load_bytes(dsn, first, "host-b", batch_rows=1000)
    inserted += load_bytes(dsn, other, "host-b", batch_rows=512)
    assert inserted == 9000
    assert conn.execute("SELECT count(*) FROM pmta.events").fetchone() == (9000,)
    hosts = dict(conn.execute("SELECT source, count(*) FROM pmta.events GROUP BY 1").fetchall())
    assert hosts == {"host-a": 4500, "host-b": 4500}
    for table, recount in RECOUNTS.items():
        stored = conn.execute(f"SELECT {COLUMNS[table]} FROM pmta.{table}").fetchall()
        assert sorted(stored, key=repr) == sorted(conn.execute(recount).fetchall(), key=repr)
        assert len(stored) > 10, table
    total = conn.execute("SELECT sum(n) FROM pmta.rollup_daily").fetchone()
    assert total == (9000,)


def _utc_day(text: str) -> date:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S%z").astimezone(timezone.utc).date()


def test_views_match_an_independent_count_of_a_three_day_stream(dsn: str, conn: Conn) -> None:
    data = stream(20_000, days=3, seed=7, start="2025-12-31")
    assert load_bytes(dsn, data, batch_rows=2500) == 20_000
    per_ip: Counter[tuple[date, str, str]] = Counter()
    per_domain: Counter[tuple[date, str, str]] = Counter()
    for row in csv.DictReader(io.StringIO(data.decode())):
        day = _utc_day(row["timeLogged"])
        kind = {"d": "delivered", "b": "bounced", "t": "deferred"}.get(row["type"])
        if kind:
            per_ip[day, row["dlvSourceIp"], kind] += 1
            per_domain[day, row["rcpt"].rsplit("@", 1)[1].lower(), kind] += 1
    assert len({d for d, _, _ in per_ip}) == 3  # local times are -0500: four local dates
    got_ip: Counter[tuple[date, str, str]] = Counter()
    for day, ip, d, b, t in conn.execute(
        "SELECT day, host(dlv_source_ip), delivered, bounced, deferred FROM pmta.ip_summary"
    ):
        got_ip.update({(day, ip, "delivered"): d, (day, ip, "bounced"): b,
                       (day, ip, "deferred"): t})  # fmt: skip
    assert +got_ip == per_ip
    got_domain: Counter[tuple[date, str, str]] = Counter()
    for day, dom, d, b, t in conn.execute(
        "SELECT day, rcpt_domain, delivered, bounced, deferred FROM pmta.delivery_by_domain"
    ):
        got_domain.update({(day, dom, "delivered"): d, (day, dom, "bounced"): b,
                           (day, dom, "deferred"): t})  # fmt: skip
    assert +got_domain == per_domain


def test_rebuilding_the_rollups_in_sql_gives_the_same_rows(dsn: str, conn: Conn) -> None:
    """The reports (materialized or live) and pmta.apply_rollups() agree row for row."""
    data = SAMPLES.read_bytes()
    inserted = load_bytes(dsn, stream(4000, days=2, seed=5), "host-a", batch_rows=600)
    inserted += load_bytes(dsn, data, "host-s", batch_rows=7)
    assert (
        inserted
        == 4000
        + conn.execute("SELECT count(*) FROM pmta.events WHERE source = 'host-s'").fetchone()[0]
    )  # type: ignore[index]
    stored = {t: sorted(conn.execute(f"SELECT {COLUMNS[t]} FROM pmta.{t}").fetchall(), key=repr)
              for t in COLUMNS}  # fmt: skip
    with conn.transaction():  # as docs/operations.md says, "Rebuilding the rollups"
        conn.execute("TRUNCATE " + ", ".join(f"pmta.{t}_materialized" for t in COLUMNS))
        conn.execute("CREATE TEMP TABLE batch_inserted ON COMMIT DROP AS SELECT * FROM pmta.events")
        conn.execute("SELECT pmta.apply_rollups()")
        conn.execute(MATERIALIZED_ALL)
    for table in COLUMNS:
        rebuilt = conn.execute(f"SELECT {COLUMNS[table]} FROM pmta.{table}").fetchall()
        assert sorted(rebuilt, key=repr) == stored[table], table


def test_keys_too_long_for_an_index_are_bounded_alike_in_python_and_sql(
    dsn: str, conn: Conn
) -> None:
    """Values no index entry can hold load, and both rollup definitions bound them alike."""
    head = b"type,timeLogged,rcpt,dsnStatus,dsnDiag,dlvSourceIp,vmta,vmtaPool,jobId,bounceCat\n"
    long = {n: (chr(97 + n) * 3000 + "é" * 20).encode() for n in range(5)}
    lines = [
        b"%s,2026-03-01 10:00:%02d+0000,u%d@%s.example,4.7.0,smtp;421 try later,192.0.2.9,"
        b"%s,%s,%s,%s\n" % (t, i, i, long[0][:300], long[1], long[2], long[3], long[4])
        for i, t in enumerate((b"t", b"b", b"d", b"t", b"x" * 400))
    ]
    assert load_bytes(dsn, head + b"".join(lines), "host-" + "h" * 600) == 5
    assert conn.execute("SELECT count(*) FROM pmta.rejects").fetchone() == (0,)
    stored = {t: sorted(conn.execute(f"SELECT {COLUMNS[t]} FROM pmta.{t}").fetchall(), key=repr)
              for t in COLUMNS}  # fmt: skip
    widest = conn.execute(
        "SELECT max(greatest(length(source), length(record_type), length(rcpt_domain),"
        " length(vmta), length(vmta_pool), length(job_id), length(bounce_cat)))"
        " FROM pmta.rollup_daily"
    ).fetchone()
    assert widest == (264,)
    with conn.transaction():
        conn.execute("TRUNCATE " + ", ".join(f"pmta.{t}_materialized" for t in COLUMNS))
        conn.execute("CREATE TEMP TABLE batch_inserted ON COMMIT DROP AS SELECT * FROM pmta.events")
        conn.execute("SELECT pmta.apply_rollups()")
        conn.execute(MATERIALIZED_ALL)
    for table in COLUMNS:
        rebuilt = conn.execute(f"SELECT {COLUMNS[table]} FROM pmta.{table}").fetchall()
        assert sorted(rebuilt, key=repr) == stored[table], table


def test_rollup_groups_with_tabs_and_backslashes_go_through_csv(dsn: str, conn: Conn) -> None:
    """A diagnostic the COPY text format cannot carry as it is still reaches rollup_diag whole."""
    head = b"type,timeLogged,rcpt,dsnStatus,dsnDiag,dlvSourceIp,vmta\n"
    diag = 'smtp;421 4.7.0 try\tagain C:\\queue\\x "later"'
    quoted = '"' + diag.replace('"', '""') + '"'
    lines = [
        f"t,2026-03-01 10:00:0{i}+0000,u{i}@example.com,4.7.0,{quoted},192.0.2.9,v1\n".encode()
        for i in range(3)
    ]
    assert load_bytes(dsn, head + b"".join(lines), "host-a") == 3
    rows = conn.execute(
        "SELECT record_type, rcpt_domain, code, n, example FROM pmta.rollup_diag"
    ).fetchall()
    assert rows == [("t", "example.com", "421 4.7.0", 3, diag)]
    recount = conn.execute(RECOUNTS["rollup_diag"]).fetchall()
    assert [(r[2], r[6], r[8], r[9]) for r in recount] == [("t", "421 4.7.0", 3, diag)]
