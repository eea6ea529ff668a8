"""The loader's rollup derivations (pmta_pipe.rollups) against their SQL definitions in 0002."""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg

from pmta_pipe import rollups
from tests.conftest import SAMPLES
from tests.helpers import stream

Conn = psycopg.Connection[tuple[Any, ...]]

EDGE_CASES = [
    "",
    "   ",
    "\t",
    "smtp;",
    "SMTP; 550 5.1.1 <a@b.example>: Recipient address rejected",
    "  smtp;  421-4.7.28 [192.0.2.1 15] Our system has detected an unusual rate",
    "550-5.7.26 This mail is unauthenticated. https://support.google.com/mail/?p=x 4si1.2 - gsmtp",
    "550 5.7.1234 too many digits",
    "421 4.7.0. trailing dot",
    "4211 not a code",
    "250 2.0.0 OK 1700000000 a1b2c3d4e5f6g7h8.99 - gsmtp",
    "451 4.7.650 The mail server [203.0.113.9] has been temporarily rate limited due to IP"
    " reputation.",
    "554 5.7.9 Message not accepted for policy reasons. See https://help.yahoo.com/kb/postmaster",
    "550 SC-001 (BAY0-MC1-F8) Unfortunately, messages from 198.51.100.4 weren't sent.",
    "421 Service not available 2026-01-15 14:23:11 retry at 14:30",
    "450 4.2.0 <user@example.com>: Recipient address rejected: Greylisted, see "
    "http://postgrey.schweikert.ch/help/example.com.html",
    "550 from 2001:db8::1 and fe80::1:2:3 and a:b:c:d:e:f:1:2:3 and ::1",
    "delivery to 10.0.0.256.7 and 1.2.3.4.5 failed",
    "id=ABCDEF12345 queue 8F2A3B4C5D Q-1234567-x host mx-01.example.net",
    "mixed 123abc 12345678 abcdefgh 1234abcd- x_12345678 _9abcdefgh",
    "numbers 12 12a a12 1.2 -3 4- 5.",
    "many   spaces\tand\ttabs\r\nand lines",
    "x" * 300,
    "a@b@c d <e@f> g<h@i:j@k> (l@m)@n @o p@ q@@r 1@2 <s@t>>u",
    "0 00 1.5 -7 x9 9x 12-34 56.78 9_ _9 .9 9. 10,20;30",
    "smtp;550 " + "word " * 80,
    '<angle@brackets.example> (paren@x.example) [square@y.example] "quoted@z.example"',
    "url HTTPS://EXAMPLE.COM/Path?q=1) after",
    # the cases around the skipped replacements of pmta.diag_pattern (0012)
    "\tSMTP;  421 4.7.0\fno digits here",
    " \x0bsmtp;550 x\x0by",
    "smtp ;550 not a prefix",
    "no digit, no colon, no at, no dot",
    "one:colon 12:30 two::colons 1:2:3 fe80::1 ::",
    "dates 2024-01-02 and 2024-1-2 and a-b",
    "dots 1.2.3.4 and 1.2.3 and a.b",
    "non-ascii caf\u00e9 12 \u0663\u0664  x",
    "550 5.1.1  double  space\n",
    "head only 421",
    "421-4.7.0 \u00e9t\u00e9 mail@example.com",
]
STATUSES = ["", "4.4.7", " 5.1.1", "5.0.0 (undefined)", "4.7.1234", "2.0.0", "x"]


def sample_texts() -> list[str]:
    """Every field of the reference samples and of a generated stream."""
    texts: set[str] = set(EDGE_CASES)
    for data in (SAMPLES.read_bytes(), stream(3000, seed=7)):
        for row in csv.reader(io.StringIO(data.decode("utf-8", "replace"))):
            texts.update(row)
    return sorted(texts)


def test_diag_pattern_and_reply_code_match_sql(conn: Conn) -> None:
    texts = sample_texts()
    assert len(texts) > 500
    pairs = [(t, s) for t in texts for s in STATUSES[:2]] + [
        (t, s) for t in EDGE_CASES[:8] for s in STATUSES
    ]
    sql = conn.execute(
        "SELECT t, s, pmta.diag_pattern(nullif(t, '')),"
        " pmta.reply_code(nullif(t, ''), nullif(s, ''))"
        " FROM unnest(%s::text[], %s::text[]) AS u(t, s)",
        ([t for t, _ in pairs], [s for _, s in pairs]),
    ).fetchall()
    got = [(t, s, rollups.diag_pattern(t), rollups.reply_code(t, s)) for t, s in pairs]
    assert got == sql


def test_delivery_bins_match_sql(conn: Conn) -> None:
    seconds = [-5.0, 0.0, 0.5, 63.0, 63.99, 64.0, 65.0, 127.0, 128.0, 1000.0, 86399.5, 1e6,
               2**31 - 1.0, 2.0**31, 2.0**40]  # fmt: skip
    seconds += [float(s) for s in range(0, 5000, 7)]
    sql = conn.execute(
        "SELECT pmta.delivery_bin(s)"
        " FROM unnest(%s::float8[]) WITH ORDINALITY AS u(s, i) ORDER BY i",
        (seconds,),
    ).fetchall()
    assert [rollups.delivery_bin(s) for s in seconds] == [b for (b,) in sql]


def test_buckets_and_delivery_seconds_match_sql(conn: Conn) -> None:
    times = [
        ("2026-01-15T23:59:59-07:00", "2026-01-15T20:00:00+05:30", ""),
        ("2026-01-15T00:00:00+00:00", "2026-01-14T23:59:59.999999+00:00", ""),
        ("2026-03-29T01:30:00+01:00", "2026-03-28T01:30:00+01:00", ""),
        ("2026-01-15T12:00:00.250000+00:00", "", "17"),
        ("2026-01-15T12:00:00+00:00", "", ""),
        ("2026-01-16T00:00:05-07:00", "2026-01-15T23:59:59-07:00", ""),  # one offset
        ("2026-03-01T00:00:00+00:00", "2026-02-28T23:00:00+00:00", ""),
    ]
    sql = conn.execute(
        "SELECT pmta.utc_day(l::timestamptz), pmta.utc_hour(l::timestamptz),"
        " pmta.delivery_seconds('d', nullif(s, '')::integer, l::timestamptz,"
        "                       nullif(q, '')::timestamptz)"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u(l, q, s, i)"
        " ORDER BY i",
        ([t[0] for t in times], [t[1] for t in times], [t[2] for t in times]),
    ).fetchall()
    for (logged, queued, total), (day, hour, secs) in zip(times, sql, strict=True):
        assert rollups.buckets(logged) == (day.isoformat(), hour.isoformat())
        assert rollups.delivery_seconds(total, logged, queued) == secs


def test_buckets_of_a_whole_batch() -> None:
    """The per-hour shortcut of a batch in one whole-hour offset, and the general way."""
    one_offset = [f"2026-01-{d:02d}T{h:02d}:{m:02d}:07-07:00" for d in (14, 15) for h in range(24)
                  for m in (0, 59)]  # fmt: skip
    mixed = [*one_offset[:5], "2026-01-15T10:15:00+05:30", "2026-01-15T10:45:00.250000+05:30"]
    for times in (one_offset, mixed):
        days, hours = rollups._all_buckets(times)
        assert list(zip(days, hours, strict=True)) == [rollups.buckets(t) for t in times]
    assert rollups.buckets("2026-01-15T10:45:00+05:30") == (
        "2026-01-15T00:00:00+00:00",
        "2026-01-15T05:00:00+00:00",
    )


def test_rollup_key_matches_sql(conn: Conn) -> None:
    texts = ["", "gmail.com", "x" * 255, "x" * 256, "é" * 300, "😀" * 255 + "a", "a" * 10_000]
    sql = conn.execute(
        "SELECT pmta.rollup_key(t) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
        (texts,),
    ).fetchall()
    got = [rollups.rollup_key(t) for t in texts]
    assert got == [r[0] for r in sql]
    assert got[:3] == texts[:3]  # up to 255 characters: unchanged
    assert all(len(k) == 255 + 1 + 8 for k in got[3:])
