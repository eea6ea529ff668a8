"""Hourly alerts and ``pmta-pipe alerts``: exact against an independent count, state kept.

``pmta.ip_alerts_hourly`` is compared with Python over the input rows (counts per UTC
hour, IP and provider, the default thresholds of ``pmta.alert_thresholds``, the warm-up
plans of ``tests/test_warmup.py``'s model), after a load, after materializing, and
after late records into an hour already materialized. ``pmta-pipe alerts`` runs as a
subprocess posting to a real HTTP receiver on a free port: each opening is posted
once, each closing once, exit code 3 while an alert is open, ``--json`` for scripts;
a receiver that fails is retried, one that is away leaves the alerts to notify, and
two runs at once notify once.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from pmta_pipe import alerts, materialize, notify
from pmta_pipe.errors import EX_ALERT, EX_OK
from tests.conftest import run_cli
from tests.test_reports import load_bytes, rec, to_bytes
from tests.test_warmup import PROVIDERS
from tests.test_warmup import expected as warmup_expected

Conn = psycopg.Connection[tuple[Any, ...]]

IP1, IP2, IP3, IP4 = "10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"
PLANS: list[tuple[str | None, str | None, str | None, list[int]]] = [(IP4, None, None, [100])]
SINCE = datetime(2026, 3, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 3, 2, tzinfo=timezone.utc)
Row = tuple[datetime, str, str | None, str, float, float, int]


def at(hour: int, minute: int) -> str:
    return f"2026-03-01 {hour:02d}:{minute % 60:02d}:{minute // 60:02d}+0000"


def traffic() -> list[list[str]]:
    """A bouncing IP, an IP deferred at Yahoo, an IP that stops delivering, an IP over plan."""
    rows: list[list[str]] = []

    def add(rtype: str, hour: int, n: int, ip: str, domain: str, start: int = 0) -> None:
        for i in range(n):
            rows.append(rec(rtype, at(hour, start + i), f"r{hour}-{rtype}-{start + i}@{domain}",
                            dlvSourceIp=ip, vmtaPool="main", bounceCat="bad-mailbox"
                            if rtype == "b" else ""))  # fmt: skip

    for hour in (8, 9, 10, 11):
        add("d", hour, 30, IP1, "gmail.com")
        add("d", hour, 30, IP1, "yahoo.com", 30)
        add("d", hour, 40, IP2, "gmail.com")
        add("d", hour, 40, IP4, "example.org")
    add("b", 10, 10, IP1, "gmail.com")  # 10 / 70: over 5 %
    add("t", 9, 30, IP2, "yahoo.com")  # 30 / 30 at Yahoo: over 20 %
    add("d", 9, 30, IP2, "yahoo.com", 30)
    add("d", 8, 30, IP3, "gmail.com")
    add("d", 9, 30, IP3, "gmail.com")
    add("t", 10, 25, IP3, "gmail.com")  # attempts, no delivery after delivering
    add("t", 11, 10, IP3, "gmail.com")  # too few attempts to say
    return rows


def utc_hour(text: str) -> datetime:
    t = datetime.strptime(text, "%Y-%m-%d %H:%M:%S%z").astimezone(timezone.utc)
    return t.replace(minute=0, second=0)


def expected(rows: list[list[str]]) -> set[Row]:
    """ip_alerts_hourly from the input rows and the default thresholds alone."""
    per: Counter[tuple[datetime, str, str, str]] = Counter()
    for r in rows:
        domain = r[4].rsplit("@", 1)[1]
        per[utc_hour(r[1]), r[8], PROVIDERS.get(domain, domain), r[0]] += 1
    ip_hours: Counter[tuple[datetime, str, str]] = Counter()
    for (hour, ip, _prov, rtype), n in per.items():
        ip_hours[hour, ip, rtype] += n
    out: set[Row] = set()
    for hour, ip in {(h, i) for h, i, _ in ip_hours}:
        d, b, t = (ip_hours[hour, ip, x] for x in "dbt")
        att = d + b + t
        if att >= 50 and b / att > 0.05:
            out.add((hour, ip, None, "ip_bounce_rate_hourly", b / att, 0.05, att))
        before = [hour - timedelta(hours=k) for k in (1, 2, 3)]
        if att >= 20 and d == 0 and any(ip_hours[h, ip, "d"] > 0 for h in before):
            out.add((hour, ip, None, "ip_stopped_delivering_hourly", 0.0, 0.0, att))
    for hour, ip, prov in {(h, i, p) for h, i, p, _ in per}:
        d, b, t = (per[hour, ip, prov, x] for x in "dbt")
        att = d + b + t
        if att >= 50 and t / att > 0.20:
            out.add((hour, ip, prov, "ip_provider_deferral_rate_hourly", t / att, 0.2, att))
    for day, ip, provider, _pool, _n, _sent, planned, over in warmup_expected(rows, PLANS):
        if not over:
            continue
        hourly: Counter[datetime] = Counter()
        for r in rows:
            domain = r[4].rsplit("@", 1)[1]
            if (r[0] in "db" and r[8] == ip and utc_hour(r[1]).date() == day
                    and provider in (None, PROVIDERS.get(domain, domain))):  # fmt: skip
                hourly[utc_hour(r[1])] += 1
        running = 0
        for hour in sorted(hourly):
            running += hourly[hour]
            if running > planned:
                out.add((hour, ip, provider, "warmup_over_plan", running, planned, hourly[hour]))
    return out


def reported(conn: Conn) -> set[Row]:
    got = conn.execute(
        "SELECT hour, host(dlv_source_ip), provider, alert, observed, threshold, attempts"
        " FROM pmta.ip_alerts_hourly"
    ).fetchall()
    assert len(got) == len(set(got))
    return {(h, ip, p, a, round(o, 12), round(t, 12), n) for h, ip, p, a, o, t, n in got}


def rounded(rows: set[Row]) -> set[Row]:
    return {(h, ip, p, a, round(o, 12), round(t, 12), n) for h, ip, p, a, o, t, n in rows}


def add_plans(conn: Conn) -> None:
    for ip, _pool, provider, caps in PLANS:
        for n, cap in enumerate(caps, start=1):
            conn.execute(
                "INSERT INTO pmta.warmup_plans (dlv_source_ip, provider, sending_day,"
                " max_messages) VALUES (%s, %s, %s, %s)",
                (ip, provider, n, cap),
            )


def test_ip_alerts_hourly_is_an_independent_count(dsn: str, conn: Conn) -> None:
    rows = traffic()
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    want = expected(rows)
    assert {a for _h, _ip, _p, a, *_ in want} == {
        "ip_bounce_rate_hourly", "ip_provider_deferral_rate_hourly",
        "ip_stopped_delivering_hourly", "warmup_over_plan",
    }  # fmt: skip
    assert reported(conn) == rounded(want)
    assert materialize.run(conn, grace=0).caught_up
    assert reported(conn) == rounded(want)
    # late records into materialized hours: IP1 bounces at 11:00, IP3 delivers at 10:00
    late = [rec("b", at(11, 50 + i), f"late{i}@gmail.com", dlvSourceIp=IP1, vmtaPool="main",
                bounceCat="bad-mailbox") for i in range(8)]  # fmt: skip
    late.append(rec("d", at(10, 59), "late@gmail.com", dlvSourceIp=IP3, vmtaPool="main"))
    assert load_bytes(dsn, to_bytes(late)) == len(late)
    now = expected(rows + late)
    assert now != want
    assert reported(conn) == rounded(now)
    assert materialize.run(conn, grace=0).caught_up
    assert reported(conn) == rounded(now)
    # thresholds are read at query time
    conn.execute("UPDATE pmta.alert_thresholds SET min_attempts = 1000000"
                 " WHERE alert LIKE '%\\_hourly'")  # fmt: skip
    assert {a for _h, _ip, _p, a, *_ in reported(conn)} == {"warmup_over_plan"}


# -- pmta-pipe alerts ----------------------------------------------------------------------


class Receiver:
    """A real incoming-webhook receiver on a free port: counts posts, keeps their JSON."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.posts = 0
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                if outer.posts <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                outer.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/SECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def keys(items: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {(a["alert"], a["dlv_source_ip"], a["provider"]) for a in items}


def test_alerts_notify_each_opening_and_closing_once(
    dsn: str, conn: Conn, cli_env: dict[str, str], receiver: Receiver
) -> None:
    rows = traffic()
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    hourly = {(a, ip, p) for _h, ip, p, a, *_ in expected(rows)}
    daily = {(a, ip, p) for a, ip, p in conn.execute(
        "SELECT alert, host(dlv_source_ip), provider FROM pmta.ip_alerts").fetchall()}  # fmt: skip
    args = ["alerts", "--since", "2026-03-01T00:00:00Z", "--webhook", receiver.url, "--json"]

    first = run_cli(args, cli_env)
    assert first.returncode == EX_ALERT, first.stderr.decode()
    out = json.loads(first.stdout)
    assert keys(out["opened"]) == hourly | daily and keys(out["open"]) == hourly | daily
    assert out["closed"] == [] and out["notified"] is True
    assert receiver.posts == 1
    text = receiver.bodies[0]["text"]
    assert text.count("OPEN ") == len(hourly | daily) and "@" not in text
    assert "SECRET" not in first.stderr.decode()
    assert f"OPEN ip_provider_deferral_rate_hourly {IP2} at Yahoo" in text

    second = run_cli(args, cli_env)  # the same alerts: nothing new to say
    assert second.returncode == EX_ALERT
    out = json.loads(second.stdout)
    assert out["opened"] == [] and out["closed"] == [] and len(out["open"]) == len(hourly | daily)
    assert receiver.posts == 1

    # everything quiet: each alert closes, notified once
    conn.execute("UPDATE pmta.alert_thresholds SET min_attempts = 1000000")
    conn.execute("DELETE FROM pmta.warmup_plans")
    third = run_cli(args, cli_env)
    assert third.returncode == EX_OK, third.stderr.decode()
    out = json.loads(third.stdout)
    assert keys(out["closed"]) == hourly | daily and out["open"] == [] and out["opened"] == []
    assert receiver.posts == 2
    assert receiver.bodies[1]["text"].count("CLOSED ") == len(hourly | daily)
    fourth = run_cli(args, cli_env)
    assert fourth.returncode == EX_OK and receiver.posts == 2
    assert json.loads(fourth.stdout)["closed"] == []
    episodes = conn.execute(
        "SELECT count(*), bool_and(notified_open AND notified_close AND closed IS NOT NULL)"
        " FROM pmta.alert_log"
    ).fetchone()
    assert episodes == (len(hourly | daily), True)

    # text output without a webhook: the changes on stdout
    conn.execute(
        "UPDATE pmta.alert_thresholds SET min_attempts = 50 WHERE alert = 'ip_bounce_rate_hourly'"
    )
    plain = run_cli(["alerts", "--since", "2026-03-01"], cli_env)
    assert plain.returncode == EX_ALERT
    assert plain.stdout.decode().startswith(f"OPEN ip_bounce_rate_hourly {IP1}: observed 0.1429,")


def test_a_failing_receiver_is_retried_and_an_absent_one_leaves_alerts_to_notify(
    dsn: str, conn: Conn
) -> None:
    rows = traffic()
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    dead = Receiver()
    dead_url = dead.url
    dead.close()  # nothing listens there any more
    with pytest.raises(notify.NotifyError) as info:
        alerts.run_alerts(
            conn, SINCE, NOW, lambda t: notify.post_webhook(dead_url, t, attempts=2, max_wait=0.1)
        )
    assert "SECRET" not in str(info.value) and "127.0.0.1" in str(info.value)
    waiting = conn.execute("SELECT count(*) FROM pmta.alert_log WHERE NOT notified_open").fetchone()
    assert waiting is not None and waiting[0] > 0
    flaky = Receiver(fail_first=2)
    try:
        got = alerts.run_alerts(
            conn, SINCE, NOW, lambda t: notify.post_webhook(flaky.url, t, max_wait=0.1)
        )
        assert flaky.posts == 3 and len(flaky.bodies) == 1
        assert len(got.opened) == waiting[0]
        again = alerts.run_alerts(
            conn, SINCE, NOW, lambda t: notify.post_webhook(flaky.url, t, max_wait=0.1)
        )
        assert again.opened == [] and flaky.posts == 3
    finally:
        flaky.close()


def test_two_runs_at_once_notify_once(dsn: str, conn: Conn) -> None:
    rows = traffic()
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    lines: list[str] = []
    lock = threading.Lock()

    def note(text: str) -> None:
        with lock:
            lines.extend(ln for ln in text.splitlines() if ln.startswith("OPEN "))

    def one() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            alerts.run_alerts(c, SINCE, NOW, note)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened = conn.execute("SELECT count(*) FROM pmta.alert_log").fetchone()
    assert opened is not None and opened[0] > 0
    assert len(lines) == len(set(lines)) == opened[0]


def test_since_takes_the_report_forms(cli_env: dict[str, str]) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    assert alerts.window("2h", now) == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    assert alerts.window("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    bad = run_cli(["alerts", "--since", "yesterday"], cli_env)
    assert bad.returncode == 2 and bad.stderr.decode().startswith("error: --since 'yesterday'")
    quiet = run_cli(["alerts"], cli_env)  # an empty database: nothing open
    assert quiet.returncode == EX_OK and quiet.stdout == b"no alert open\n"


def test_report_alerts_hourly(dsn: str, conn: Conn, cli_env: dict[str, str]) -> None:
    rows = traffic()
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    args = ["report", "alerts-hourly", "--since", "2026-03-01", "--until", "2026-03-02"]
    proc = run_cli([*args, "--format", "json", "--top", "100", "--fail-on-alert"], cli_env)
    assert proc.returncode == EX_ALERT, proc.stderr.decode()
    got = {(datetime.fromisoformat(r["hour"]), r["dlv_source_ip"], r["provider"], r["alert"],
            round(r["observed"], 12), round(r["threshold"], 12), r["attempts"])
           for r in json.loads(proc.stdout)}  # fmt: skip
    assert got == rounded(expected(rows))
    later = run_cli(["report", "alerts-hourly", "--since", "2026-03-02", "--until", "2026-03-03",
                     "--fail-on-alert"], cli_env)  # fmt: skip
    assert later.returncode == EX_OK and later.stdout.decode().endswith("(no rows)\n")


def test_blocklist_hits_are_daily_alerts(dsn: str, conn: Conn, receiver: Receiver) -> None:
    diag = (
        f"smtp;554 5.7.1 Service unavailable; Client host [{IP1}] blocked using"
        f" zen.spamhaus.org; https://www.spamhaus.org/query/ip/{IP1} <alice@example.com>"
    )
    listed = [rec("b", at(9, i), f"bl{i}@example.com", dlvSourceIp=IP1, vmtaPool="main",
                  dsnStatus="5.7.1 (blocked)", dsnDiag=diag, bounceCat="spam-related")
              for i in range(3)]  # fmt: skip
    assert load_bytes(dsn, to_bytes(listed)) == 3
    got = alerts.run_alerts(conn, SINCE, NOW, lambda t: notify.post_webhook(receiver.url, t))
    hits = [a for a in got.opened if a.alert == "blocklist_hit"]
    assert [(a.dlv_source_ip, a.provider, a.detail, a.observed, a.grain) for a in hits] == [
        (IP1, "example.com", "Spamhaus ZEN", 3.0, "day")
    ]
    text = receiver.bodies[0]["text"]
    assert (
        f"OPEN blocklist_hit {IP1} at example.com on Spamhaus ZEN: observed 3 (day 2026-03-01"
        in text
    )
    assert "@" not in text and "alice" not in text


def test_a_schema_without_the_alert_log_is_one_line(
    empty_dsn: str, cli_env: dict[str, str]
) -> None:
    proc = run_cli(["alerts"], {**cli_env, "PMTA_PIPE_DSN": empty_dsn})
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines()[-1] == (
        "error: the database has no pmta.alert_log (its schema is older)"
        " (hint: run 'pmta-pipe migrate' first)"
    )
