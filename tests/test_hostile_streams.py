"""Stray double quotes through the real CLI, by every route: each record counted.

A quote that opens and never closes costs its own record only, whether the stream
comes on the pipe (``ingest``), from a file (``import``) or from the spool a stopped
pipe left (``replay``): events + rejects = records, and every good record is an event.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pmta_pipe.parse import TORN, UNTERMINATED
from tests.conftest import count, run_cli

Conn = psycopg.Connection[tuple[object, ...]]
CLOSED = "postgresql://postgres@127.0.0.1:1/x"  # nothing listens on port 1
HEADER = b"type,timeLogged,orig,rcpt,dsnStatus,dsnDiag,jobId,vmta"
OK = b"smtp;250 ok"


def rec(n: int, diag: bytes = OK) -> bytes:
    return b"d,2026-01-01 00:%02d:%02d+0000,o@example.com,u%d@example.com,2.0.0,%s,j,v1" % (
        n // 60 % 60, n % 60, n, diag,
    )  # fmt: skip


def lines(*records: bytes) -> bytes:
    return b"".join(r + b"\n" for r in records)


@dataclass(frozen=True)
class Case:
    """A stream whose record n (from 1) is to u{n}@example.com, and what it loads as."""

    data: bytes
    events: int
    rejected: list[int]  # positions of the rejects (unterminated quoted fields)
    # a stray quote in the very last record: the input ends inside its quoted field, so
    # it is the torn record of the stream (parse.TORN), which the whole record resolves
    torn_last: bool = False


def _open_quote() -> Case:
    torn = b'd,2026-01-01 00:00:05+0000,o@example.com,"u5@example.com,2.0.0,smtp;250 ok,j,v1'
    good = [rec(n) for n in range(1, 12) if n != 5]
    return Case(lines(HEADER, *good[:4], torn, *good[4:]), 10, [5])


def _two_stray_quotes() -> Case:
    first = rec(1, b'"smtp;451 4.7.1 try again later')  # opens a field: a reject
    last = rec(32, b'smtp;250 ok user "john doe')  # a quote in an unquoted field: an event
    return Case(lines(HEADER, first, *[rec(n) for n in range(2, 32)], last, rec(33)), 32, [1])


def _cut_off_write() -> Case:
    whole = rec(3, b'"smtp;550 5.1.1 mailbox unavailable"')
    cut = whole[: whole.index(b'"') + 12]  # the write stopped in the quoted reply
    return Case(lines(HEADER, rec(1), rec(2), cut, *[rec(n) for n in range(4, 20)]), 18, [3])


def _last_record() -> Case:
    return Case(
        lines(HEADER, *[rec(n) for n in range(1, 9)], rec(9, b'"smtp;250 ok')), 8, [9], True
    )


def _multi_line_reply() -> Case:
    multi = rec(2, b'"smtp;550-5.7.1 first line\r\n550 5.7.1 second line, with a comma"')
    return Case(lines(HEADER, rec(1), multi, rec(3)), 3, [])


def _issue_406() -> Case:
    stray = {
        50: b'"smtp;250 ok',
        120: b'smtp;250 ok user "john doe',
        121: b'"smtp;451 4.7.1 try again later',
        300: b'smtp;550 "no such user',
        406: b'"smtp;250 ok',
    }
    records = [rec(n, stray.get(n, OK)) for n in range(1, 407)]
    return Case(lines(HEADER, *records), 403, [50, 121, 406], True)


CASES = {
    "open-quote": _open_quote(),
    "two-stray-quotes": _two_stray_quotes(),
    "cut-off-write": _cut_off_write(),
    "last-record": _last_record(),
    "multi-line-reply": _multi_line_reply(),
    "issue-406": _issue_406(),
}


def load(route: str, data: bytes, env: dict[str, str], tmp_path: Path) -> None:
    """Load ``data`` by ``route``, as an operator would."""
    if route == "ingest":
        proc = run_cli(["ingest"], env, input=data)
    elif route == "import":  # a rotated file (a fresh one's open last record waits)
        path = tmp_path / "acct-2026-01-01-0000.csv"
        path.write_bytes(data)
        old = time.time() - 3600
        os.utime(path, (old, old))
        proc = run_cli(["import", str(path)], env)
    else:  # the pipe stops while the database is away, then replay loads its spool
        down = dict(env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0")
        proc = run_cli(["ingest"], down, input=data)
        assert proc.returncode == 75, proc.stderr.decode()
        proc = run_cli(["replay"], env)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize("route", ["ingest", "import", "replay"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_stray_quote_costs_only_its_record(
    name: str, route: str, cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    case = CASES[name]
    records = case.data.count(b"\n") - 1 - case.data.count(b"\r\n")  # less the header
    assert case.events + len(case.rejected) == records
    load(route, case.data, cli_env, tmp_path)
    assert count(conn, "SELECT count(*) FROM pmta.events") == case.events
    got = conn.execute("SELECT position, reason FROM pmta.rejects ORDER BY position").fetchall()
    reasons = [UNTERMINATED] * len(case.rejected)
    if case.torn_last:
        reasons[-1] = TORN
    assert got == list(zip(case.rejected, reasons, strict=True))
    # every good record is an event: the rejected ones are exactly the torn ones
    rcpts = {r[0] for r in conn.execute("SELECT rcpt FROM pmta.events").fetchall()}
    assert rcpts == {f"u{n}@example.com" for n in range(1, records + 1) if n not in case.rejected}
    if name == "multi-line-reply":
        diag = conn.execute("SELECT dsn_diag FROM pmta.events WHERE rcpt = 'u2@example.com'")
        assert diag.fetchone() == (
            "smtp;550-5.7.1 first line\r\n550 5.7.1 second line, with a comma",
        )
