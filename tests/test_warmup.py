"""Warm-up plans: ``pmta.warmup_progress`` equals an independent count of the input.

The count is Python over the input rows: messages (d and b records) per UTC day, IP and
provider, the sending days numbered over the days with messages in each plan's scope,
an IP plan winning over its pool's. Checked after a load, after materializing, after
late records into hours already materialized (counted live, then materialized again),
and after an edit of a plan.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg

from pmta_pipe import materialize
from tests.test_reports import load_bytes, rec, to_bytes

Conn = psycopg.Connection[tuple[Any, ...]]

IPA, IPB, IPC, IPD = "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"
POOL = {IPA: "solo", IPB: "warm", IPC: "warm", IPD: "main"}
PROVIDERS = {"gmail.com": "Gmail", "yahoo.com": "Yahoo"}  # as seeded in pmta.mailbox_providers
DOMAINS = ("gmail.com", "yahoo.com", "example.org")
START = date(2026, 3, 1)

#: (ip, pool, provider, [max messages of day 1, 2, ...])
PLANS: list[tuple[str | None, str | None, str | None, list[int]]] = [
    (IPA, None, None, [30, 60, 90]),
    (None, "warm", "Gmail", [10, 20, 40, 80]),
    (IPC, None, "Gmail", [5, 10]),
]


def traffic(seed: int = 5) -> list[list[str]]:
    """Five days of d, b and t records from four IPs; IPA sends only deferrals on day 2."""
    rnd = random.Random(seed)
    rows: list[list[str]] = []
    for d in range(5):
        day = START + timedelta(days=d)
        for ip in (IPA, IPB, IPC, IPD):
            for i in range(rnd.randint(20, 70)):
                rtype = rnd.choice("ddddddbbt")
                if ip == IPA and d == 1:
                    rtype = "t"
                if ip == IPC and d == 3:
                    continue  # a day without traffic: it does not count
                when = datetime(
                    day.year,
                    day.month,
                    day.day,
                    rnd.randrange(24),
                    rnd.randrange(60),
                    rnd.randrange(60),
                    tzinfo=timezone.utc,
                )
                domain = rnd.choice(DOMAINS)
                rows.append(rec(rtype, when.strftime("%Y-%m-%d %H:%M:%S+0000"),
                                f"u{d}x{i}@{domain}", dlvSourceIp=ip, vmta=f"v-{ip}",
                                vmtaPool=POOL[ip], bounceCat="bad-mailbox" if rtype == "b" else "",
                                jobId="warm"))  # fmt: skip
    return rows


def add_plans(conn: Conn) -> None:
    for ip, pool, provider, caps in PLANS:
        for n, cap in enumerate(caps, start=1):
            conn.execute(
                "INSERT INTO pmta.warmup_plans (dlv_source_ip, vmta_pool, provider, sending_day,"
                " max_messages) VALUES (%s, %s, %s, %s, %s)",
                (ip, pool, provider, n, cap),
            )


def utc_day(text: str) -> date:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S%z").astimezone(timezone.utc).date()


def expected(
    rows: list[list[str]], plans: list[tuple[str | None, str | None, str | None, list[int]]] = PLANS
) -> set[tuple[Any, ...]]:
    """warmup_progress computed from the input rows alone."""
    sent: Counter[tuple[date, str, str]] = Counter()
    pools: dict[str, set[str]] = {}
    for r in rows:
        rtype, when, rcpt, ip, pool = r[0], r[1], r[4], r[8], r[10]
        if rtype in ("d", "b"):
            pools.setdefault(pool, set()).add(ip)  # the IPs that sent a message through it
            domain = rcpt.rsplit("@", 1)[1]
            sent[utc_day(when), ip, PROVIDERS.get(domain, domain)] += 1
    # scope (ip, provider) -> (pool of the plan or None, caps)
    scopes: dict[tuple[str, str | None], tuple[str | None, list[int]]] = {}
    for ip, _pool, provider, caps in plans:
        if ip is not None:
            scopes[ip, provider] = (None, caps)
    for _ip, pool, provider, caps in sorted(plans, key=lambda p: str(p[1])):
        if pool is None:
            continue
        for ip in pools.get(pool, ()):
            scopes.setdefault((ip, provider), (pool, caps))
    out: set[tuple[Any, ...]] = set()
    for (ip, provider), (pool, caps) in scopes.items():
        per_day: Counter[date] = Counter()
        for (day, sip, prov), n in sent.items():
            if sip == ip and (provider is None or prov == provider):
                per_day[day] += n
        for number, day in enumerate(sorted(d for d, n in per_day.items() if n > 0), start=1):
            if number > len(caps):
                break
            out.add((day, ip, provider, pool, number, per_day[day], caps[number - 1],
                     per_day[day] > caps[number - 1]))  # fmt: skip
    return out


def reported(conn: Conn) -> set[tuple[Any, ...]]:
    got = conn.execute(
        "SELECT day, host(dlv_source_ip), provider, vmta_pool, sending_day, sent, planned,"
        " over_plan FROM pmta.warmup_progress"
    ).fetchall()
    assert len(got) == len(set(got))
    return set(got)


def test_warmup_progress_is_an_independent_count(dsn: str, conn: Conn) -> None:
    rows = traffic()
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    want = expected(rows)
    assert reported(conn) == want
    # the shape the plans make: IPA skips day 2 (deferrals only), IPC's own Gmail plan wins
    # over its pool's, IPD has no plan, over-plan days exist
    assert {r[1] for r in want} == {IPA, IPB, IPC}
    assert {(r[1], r[2], r[3]) for r in want} == {(IPA, None, None), (IPB, "Gmail", "warm"),
                                                   (IPC, "Gmail", None)}  # fmt: skip
    assert [r[0] for r in sorted(want) if r[1] == IPA] == [START, START + timedelta(2),
                                                           START + timedelta(3)]  # fmt: skip
    assert any(r[7] for r in want) and not all(r[7] for r in want)
    assert materialize.run(conn, grace=0).caught_up
    assert reported(conn) == want
    # a window on day reads only those days' rows, the numbers stay those of the history
    window = conn.execute(
        "SELECT day, host(dlv_source_ip), provider, vmta_pool, sending_day, sent, planned,"
        " over_plan FROM pmta.warmup_progress WHERE day >= %s", (START + timedelta(3),)
    ).fetchall()  # fmt: skip
    assert set(window) == {r for r in want if r[0] >= START + timedelta(3)}


def test_late_records_into_materialized_hours_and_plan_edits(dsn: str, conn: Conn) -> None:
    rows = traffic(seed=6)
    late = [r for i, r in enumerate(rows) if i % 7 == 0 and utc_day(r[1]) <= START + timedelta(2)]
    first = [r for r in rows if r not in late]
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(first)) == len(first)
    assert materialize.run(conn, grace=0).caught_up
    assert reported(conn) == expected(first)
    assert load_bytes(dsn, to_bytes(late)) == len(late)
    assert conn.execute("SELECT count(*) FROM pmta.rollup_invalidations").fetchone() != (0,)
    assert reported(conn) == expected(rows)  # invalidated days counted live meanwhile
    got = materialize.run(conn, grace=0)
    assert got.caught_up and got.redone_days == 3
    assert reported(conn) == expected(rows)
    # an edit of a plan applies at once, to the past too
    conn.execute("UPDATE pmta.warmup_plans SET max_messages = 1 WHERE dlv_source_ip = %s"
                 " AND sending_day = 2", (IPA,))  # fmt: skip
    plans = [(IPA, None, None, [30, 1, 90]), *PLANS[1:]]
    assert reported(conn) == expected(rows, plans)
    conn.execute("DELETE FROM pmta.warmup_plans WHERE dlv_source_ip = %s", (IPC,))
    assert reported(conn) == expected(rows, [plans[0], plans[1]])


def test_plans_refuse_what_cannot_be_matched(conn: Conn) -> None:
    bad = [
        ("10.0.0.1", "warm", None),  # an IP and a pool
        (None, None, None),  # neither
        ("10.0.0.0/24", None, None),  # a network
    ]
    for ip, pool, provider in bad:
        try:
            conn.execute(
                "INSERT INTO pmta.warmup_plans (dlv_source_ip, vmta_pool, provider, sending_day,"
                " max_messages) VALUES (%s, %s, %s, 1, 10)", (ip, pool, provider)
            )  # fmt: skip
        except psycopg.errors.CheckViolation:
            continue
        raise AssertionError(f"accepted {ip} {pool}")
    conn.execute("INSERT INTO pmta.warmup_plans (vmta_pool, sending_day, max_messages)"
                 " VALUES ('warm', 1, 10)")  # fmt: skip
    try:
        conn.execute("INSERT INTO pmta.warmup_plans (vmta_pool, sending_day, max_messages)"
                     " VALUES ('warm', 1, 20)")  # fmt: skip
    except psycopg.errors.UniqueViolation:
        return
    raise AssertionError("two caps for one day")


def test_report_warmup(dsn: str, conn: Conn, cli_env: dict[str, str]) -> None:
    import json

    from tests.conftest import run_cli

    rows = traffic()
    add_plans(conn)
    assert load_bytes(dsn, to_bytes(rows)) == len(rows)
    proc = run_cli(["report", "warmup", "--since", "2026-03-02", "--until", "2026-03-06",
                    "--top", "100", "--format", "json"], cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    got = {(date.fromisoformat(r["day"]), r["dlv_source_ip"], r["provider"], r["vmta_pool"],
            r["sending_day"], r["sent"], r["planned"], r["over_plan"])
           for r in json.loads(proc.stdout)}  # fmt: skip
    assert got == {r for r in expected(rows) if r[0] >= START + timedelta(1)}
    table = run_cli(["report", "warmup", "--since", "2026-03-01", "--until", "2026-03-02"], cli_env)
    assert table.stdout.decode().splitlines()[0].split() == [
        "day", "dlv_source_ip", "provider", "vmta_pool", "sending_day", "sent", "planned",
        "over_plan"]  # fmt: skip
