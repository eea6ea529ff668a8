"""Partitions made by loaders running at once: the same day's partition, asked for
by two sessions together, is created once and neither fails (migration 0013)."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from typing import Any

import psycopg

from tests.conftest import count

Conn = psycopg.Connection[tuple[Any, ...]]


def _ensure(dsn: str, days: list[date], out: list[object], start: threading.Barrier) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            row = conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (days,)).fetchone()
            out.append(row[0] if row else None)
    except Exception as exc:  # reported by the test
        out.append(exc)


def test_second_creator_waits_and_finds_the_partition(dsn: str, conn: Conn) -> None:
    """The race as it happened: B sees no partition, waits for A's lock, A commits
    the partition; B must take it as made, not fail with duplicate_table."""
    day = date(2031, 3, 14)
    out: list[object] = []
    with psycopg.connect(dsn) as a:  # a transaction holding the lock, not committed
        assert a.execute("SELECT pmta.ensure_partitions(%s::date[])", ([day],)).fetchone() == (1,)
        b = threading.Thread(target=_ensure, args=(dsn, [day], out, threading.Barrier(1)))
        b.start()
        time.sleep(0.5)  # B has looked and waits for the advisory lock
        assert b.is_alive()
        a.commit()
    b.join(10)
    assert out == [0]
    assert (
        count(
            conn,
            "SELECT count(*) FROM pg_class WHERE relname = 'events_20310314' AND relkind = 'r'",
        )
        == 1
    )


def test_two_loaders_create_the_same_days_at_once(dsn: str, conn: Conn) -> None:
    """Two sessions ask for the same new days together, many times: every day is
    created exactly once, and no call fails."""
    first = date(2032, 1, 1)
    for round_ in range(20):
        days = [first + timedelta(days=3 * round_ + i) for i in range(3)]
        out: list[object] = []
        start = threading.Barrier(2)
        threads = [threading.Thread(target=_ensure, args=(dsn, days, out, start)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(isinstance(n, int) for n in out), out
        assert sum(n for n in out if isinstance(n, int)) == 3
    made = count(
        conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'events\\_2032%%' AND relkind = 'r'"
    )
    assert made == 60
