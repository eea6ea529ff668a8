"""Report views on crafted data with known answers: every count and rate asserted exactly."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any

import psycopg
import pytest

from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.reader import iter_batches

Conn = psycopg.Connection[tuple[Any, ...]]

HEADER = [
    "type", "timeLogged", "timeQueued", "totalSecondsQueued", "rcpt", "dsnStatus", "dsnDiag",
    "bounceCat", "dlvSourceIp", "vmta", "vmtaPool", "jobId", "repSourceIp", "queue",
]  # fmt: skip
D1, D2 = date(2026, 3, 1), date(2026, 3, 2)
IP1, IP2 = "10.0.0.1", "10.0.0.2"
GMAIL_421 = (
    "smtp;421 4.7.0 [{ip} {n}] Our system has detected an unusual rate of unsolicited mail "
    "originating from your IP address. "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError "
    "{id} - gsmtp"
)
YAHOO_TSS04 = (
    "smtp;421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume "
    "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
GREYLIST = "smtp;450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://x.example/"


def rec(rtype: str, when: str, rcpt: str = "", **kw: str) -> list[str]:
    """One record as a row in HEADER order; keyword names are the PowerMTA field names."""
    fields = {"type": rtype, "timeLogged": when, "rcpt": rcpt, **kw}
    return [fields.get(name, "") for name in HEADER]


def to_bytes(rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def note_inserted(conn: Any, result: LoadResult, rows: Sequence[Sequence[str]]) -> None:
    """The rollups' part of a batch's bookkeeping (``pipeline.record_batch``)."""
    if result.inserted:
        times = sorted({datetime.fromisoformat(r[0]) for r in rows})
        conn.execute("SELECT pmta.note_inserted(%s, %s)", (times[0], times[-1]))


def load_bytes(dsn: str, data: bytes, source: str = "test-host", batch_rows: int = 1000) -> int:
    """Load an accounting stream in-process, in batches, as ingest does; return rows inserted."""
    parser = RecordParser(source)
    loader = Loader(dsn, retry_for=5)
    inserted = 0
    try:
        for raw in iter_batches(io.BytesIO(data), batch_rows):
            parsed = parser.parse(raw.records, raw.received_at)
            result = loader.load(parsed, parser.header_line, bookkeeping=note_inserted)
            inserted += result.inserted
    finally:
        loader.close()
    return inserted


def crafted() -> list[list[str]]:
    """A day of traffic whose every count is worked out by hand in the tests below."""
    t = "2026-03-01 10:{:02d}:00+0000"
    rows: list[list[str]] = []
    # gmail.com on IP1 (vmta v1, pool p1, job j1): 6 d, 2 b (1 expired), 2 t
    for i, secs in enumerate([10, 10, 20, 30, 40, 50]):
        rows.append(rec("d", t.format(i), f"u{i}@gmail.com", totalSecondsQueued=str(secs),
                        dlvSourceIp=IP1, vmta="v1", vmtaPool="p1", jobId="j1"))  # fmt: skip
    rows.append(rec("b", t.format(10), "x@gmail.com", dsnStatus="5.1.1 (bad mailbox)",
                    dsnDiag="smtp;550 5.1.1 <x@gmail.com> user unknown", bounceCat="bad-mailbox",
                    dlvSourceIp=IP1, vmta="v1", vmtaPool="p1", jobId="j1"))  # fmt: skip
    rows.append(rec("b", t.format(11), "y@gmail.com", dsnStatus="4.4.7 (expired)",
                    dsnDiag="smtp;421 4.4.7 connection timed out", bounceCat="message-expired",
                    dlvSourceIp=IP1, vmta="v1", vmtaPool="p1", jobId="j1"))  # fmt: skip
    for i, (n, ident) in enumerate([("15", "a1si123456qkb.12"), ("7", "zz9xq88877abc.3")]):
        diag = GMAIL_421.format(ip=f"10.0.0.{i + 1}", n=n, id=ident)
        rows.append(rec("t", t.format(12 + i), f"d{i}@gmail.com", dsnStatus="4.7.0 (x)",
                        dsnDiag=diag, dlvSourceIp=IP1, vmta="v1", vmtaPool="p1",
                        jobId="j1"))  # fmt: skip
    # hotmail.com on IP1: 1 t (greylisting)
    rows.append(rec("t", t.format(14), "g@hotmail.com", dsnStatus="4.2.0 (x)",
                    dsnDiag=GREYLIST.format(rcpt="g@hotmail.com"), dlvSourceIp=IP1,
                    vmta="v1", vmtaPool="p1", jobId="j1"))  # fmt: skip
    # yahoo.com on IP2 (vmta v2, pool p2, job j2): 3 d queued 90 s before, 1 b, 4 t
    for i in range(3):
        rows.append(rec("d", t.format(20 + i), f"y{i}@yahoo.com",
                        timeQueued=f"2026-03-01 10:{18 + i:02d}:30+0000",
                        dlvSourceIp=IP2, vmta="v2", vmtaPool="p2", jobId="j2"))  # fmt: skip
    rows.append(rec("b", t.format(23), "s@yahoo.com", dsnStatus="5.7.1 (spam)",
                    dsnDiag="smtp;554 5.7.9 Message not accepted for policy reasons",
                    bounceCat="spam-related", dlvSourceIp=IP2, vmta="v2", vmtaPool="p2",
                    jobId="j2"))  # fmt: skip
    for i in range(4):
        rows.append(rec("t", t.format(24 + i), f"t{i}@yahoo.com", dsnStatus="4.7.0 (x)",
                        dsnDiag=YAHOO_TSS04.format(ip=IP2), dlvSourceIp=IP2, vmta="v2",
                        vmtaPool="p2", jobId="j2"))  # fmt: skip
    # example.org (no provider listed) on IP2: 1 d without any queue time
    rows.append(rec("d", t.format(30), "e@example.org", dlvSourceIp=IP2, vmta="v2",
                    vmtaPool="p2", jobId="j2"))  # fmt: skip
    # received: 3 gmail, 2 yahoo (no IP)
    rows += [rec("r", t.format(40 + i), f"r{i}@gmail.com", jobId="j1") for i in range(3)]
    rows += [rec("r", t.format(43 + i), f"r{i}@yahoo.com", jobId="j2") for i in range(2)]
    # a complaint about a gmail delivery from IP1, a remote bounce, a queue-wide deferral
    rows.append(rec("f", t.format(50), "u0@gmail.com", repSourceIp=IP1, jobId="j1"))
    rows.append(rec("rb", t.format(51), "q@yahoo.com", dsnStatus="5.1.1 (x)",
                    dsnDiag="smtp;550 5.1.1 no such user", bounceCat="bad-mailbox",
                    jobId="j2"))  # fmt: skip
    rows.append(rec("tq", t.format(52), queue="hotmail.com/v1", dsnStatus="4.4.1 (x)",
                    dsnDiag="smtp;421 4.4.1 connection refused", vmta="v1"))  # fmt: skip
    # 23:30 at UTC-5 is 04:30 UTC the next day: a delivery of day 2
    rows.append(rec("d", "2026-03-01 23:30:00-0500", "late@gmail.com", dlvSourceIp=IP1,
                    vmta="v1", vmtaPool="p1", jobId="j1"))  # fmt: skip
    return rows


@pytest.fixture
def loaded(dsn: str, conn: Conn) -> Conn:
    assert load_bytes(dsn, to_bytes(crafted()), batch_rows=7) == 29
    return conn


def _key(row: tuple[Any, ...]) -> tuple[tuple[bool, str], ...]:
    return tuple((v is None, str(v)) for v in row)


def rows(conn: Conn, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` with IPs as text, sorted independently of the database collation."""
    got = [tuple(str(v) if hasattr(v, "packed") else v for v in r) for r in conn.execute(sql)]
    return sorted(got, key=_key)


def same(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> bool:
    return got == sorted(expected, key=_key)


def test_delivery_summary(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.delivery_summary ORDER BY day")
    assert same(
        got,
        [
            (D1, 5, 10, 3, 1, 7, 1, 10 / 13, 3 / 13, 1 / 10),
            (D2, 0, 1, 0, 0, 0, 0, 1.0, 0.0, 0.0),
        ],
    )


def test_delivery_by_domain_and_provider(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.delivery_by_domain")
    assert same(got, [
        (D1, "example.org", "example.org", 1, 0, 0, 1.0),
        (D1, "gmail.com", "Gmail", 6, 2, 2, 6 / 8),
        (D1, "hotmail.com", "Microsoft", 0, 0, 1, None),  # its tq record is not a deferral
        (D1, "yahoo.com", "Yahoo", 3, 1, 4, 3 / 4),
        (D2, "gmail.com", "Gmail", 1, 0, 0, 1.0),
    ])  # fmt: skip
    got = rows(loaded, "SELECT * FROM pmta.delivery_by_provider ORDER BY day, provider")
    assert same(
        got,
        [
            (D1, "example.org", 1, 0, 0, 1.0),
            (D1, "Gmail", 6, 2, 2, 6 / 8),
            (D1, "Microsoft", 0, 0, 1, None),
            (D1, "Yahoo", 3, 1, 4, 3 / 4),
            (D2, "Gmail", 1, 0, 0, 1.0),
        ],
    )


def test_ip_summaries(loaded: Conn) -> None:
    got = rows(
        loaded,
        "SELECT day, dlv_source_ip, delivered, bounced, deferred, attempts, bounce_rate,"
        " deferral_rate FROM pmta.ip_summary ORDER BY day, dlv_source_ip",
    )
    assert same(
        got,
        [
            (D1, IP1, 6, 2, 3, 11, 2 / 11, 3 / 11),
            (D1, IP2, 4, 1, 4, 9, 1 / 9, 4 / 9),
            (D2, IP1, 1, 0, 0, 1, 0.0, 0.0),
        ],
    )
    got = rows(
        loaded,
        "SELECT day, dlv_source_ip, provider, delivered, bounced, deferred, attempts, bounce_rate,"
        " deferral_rate FROM pmta.ip_provider_summary ORDER BY day, dlv_source_ip, provider",
    )
    assert same(
        got,
        [
            (D1, IP1, "Gmail", 6, 2, 2, 10, 2 / 10, 2 / 10),
            (D1, IP1, "Microsoft", 0, 0, 1, 1, 0.0, 1.0),
            (D1, IP2, "example.org", 1, 0, 0, 1, 0.0, 0.0),
            (D1, IP2, "Yahoo", 3, 1, 4, 8, 1 / 8, 4 / 8),
            (D2, IP1, "Gmail", 1, 0, 0, 1, 0.0, 0.0),
        ],
    )


def test_deferral_codes_and_patterns(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.deferral_codes ORDER BY day, provider, code")
    assert same(
        got,
        [
            (D1, "Gmail", "421 4.7.0", 2),
            (D1, "Microsoft", "450 4.2.0", 1),
            (D1, "Yahoo", "421 4.7.0", 4),
        ],
    )
    got = rows(
        loaded,
        "SELECT provider, pattern, category, n FROM pmta.deferral_patterns ORDER BY provider",
    )
    assert same(got, [
        ("Gmail", "421 4.7.0 [<ip> <n>] Our system has detected an unusual rate of unsolicited "
         "mail originating from your IP address. <url> <id> - gsmtp", "rate-limit", 2),
        ("Microsoft", "450 4.2.0 <addr>: Recipient address rejected: Greylisted, see <url>",
         "greylisting", 1),
        ("Yahoo", "421 4.7.0 [TSS04] Messages from <ip> temporarily deferred due to unexpected "
         "volume or user complaints - <ip>; see <url>", "rate-limit", 4),
    ])  # fmt: skip
    example = loaded.execute(
        "SELECT example FROM pmta.deferral_patterns WHERE provider = 'Gmail'"
    ).fetchone()
    assert example == (GMAIL_421.format(ip=IP1, n="15", id="a1si123456qkb.12"),)
    got = rows(
        loaded,
        "SELECT provider, record_type, category, n FROM pmta.diag_patterns"
        " WHERE record_type <> 't' ORDER BY provider, record_type, category",
    )
    assert same(
        got,
        [
            ("Gmail", "b", "connection", 1),
            ("Gmail", "b", "unknown-user", 1),
            ("Microsoft", "tq", "connection", 1),
            ("Yahoo", "b", "policy-block", 1),
            ("Yahoo", "rb", "unknown-user", 1),
        ],
    )


def test_diag_rule_edits_apply_at_once(loaded: Conn) -> None:
    loaded.execute(
        "INSERT INTO pmta.diag_rules (priority, provider, pattern, category)"
        " VALUES (1, 'Yahoo', 'TSS04', 'yahoo-volume')"
    )
    got = loaded.execute(
        "SELECT category FROM pmta.deferral_patterns WHERE provider = 'Yahoo'"
    ).fetchall()
    assert got == [("yahoo-volume",)]
    with pytest.raises(psycopg.errors.InvalidRegularExpression):
        loaded.execute(
            "INSERT INTO pmta.diag_rules (priority, pattern, category) VALUES (1, '(', 'x')"
        )


DIAG_PATTERNS_BY_ROW = """
    SELECT day, provider, record_type, pattern, category, sum(n)::bigint, min(example)
    FROM pmta.daily_diag GROUP BY 1, 2, 3, 4, 5
"""


def test_diag_patterns_classify_once_per_pattern_as_daily_diag_does_per_row(
    loaded: Conn,
) -> None:
    """diag_patterns finds each (provider, pattern)'s category once; the answer is the
    one of classifying every pmta.daily_diag row, whatever the rules say."""
    view = "SELECT * FROM pmta.diag_patterns"
    assert same(rows(loaded, view), rows(loaded, DIAG_PATTERNS_BY_ROW))
    loaded.execute(
        "INSERT INTO pmta.diag_rules (priority, provider, pattern, category) VALUES"
        " (1, 'Yahoo', 'TSS04', 'yahoo-volume'), (2, NULL, '^4', 'any-4xx'),"
        " (1, 'Gmail', 'gsmtp$', 'gmail-text')"
    )
    got = rows(loaded, view)
    assert same(got, rows(loaded, DIAG_PATTERNS_BY_ROW))
    assert {r[4] for r in got} >= {"yahoo-volume", "any-4xx", "gmail-text"}


def test_bounce_categories(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.bounce_categories ORDER BY provider, bounce_cat")
    assert same(
        got,
        [
            (D1, "Gmail", "bad-mailbox", "hard", 1, 0),
            (D1, "Gmail", "message-expired", "soft", 1, 0),
            (D1, "Yahoo", "bad-mailbox", "hard", 0, 1),
            (D1, "Yahoo", "spam-related", "block", 1, 0),
        ],
    )
    got = loaded.execute(
        "SELECT c, pmta.bounce_class(c) FROM unnest(ARRAY['inactive-mailbox', 'bad-domain',"
        " 'quota-issues', 'no-answer-from-host', 'relaying-issues', 'routing-errors',"
        " 'bad-connection', 'policy-related', 'content-related', 'virus-related',"
        " 'bad-configuration', 'invalid-sender', 'protocol-errors', 'other']) c"
    ).fetchall()
    assert [k for _, k in got] == [
        *("hard", "hard"),
        *("soft",) * 5,
        *("block",) * 3,
        *("other",) * 4,
    ]


def test_job_vmta_and_complaint_views(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.job_summary ORDER BY day, job_id NULLS LAST")
    assert same(
        got,
        [
            (D1, "j1", 3, 6, 2, 1, 3, 1, 0, 6 / 8, 2 / 8, 1 / 6),
            (D1, "j2", 2, 4, 1, 0, 4, 0, 1, 4 / 5, 1 / 5, 0.0),
            (D2, "j1", 0, 1, 0, 0, 0, 0, 0, 1.0, 0.0, 0.0),
        ],
    )
    got = rows(loaded, "SELECT * FROM pmta.vmta_summary")
    assert same(
        got,
        [
            # the tq record only counts in the diag views
            (D1, "v1", "p1", 0, 6, 2, 1, 3, 11, 6 / 8, 2 / 11, 3 / 11),
            (D1, "v2", "p2", 0, 4, 1, 0, 4, 9, 4 / 5, 1 / 9, 4 / 9),
            (D2, "v1", "p1", 0, 1, 0, 0, 0, 1, 1.0, 0.0, 0.0),
            (D1, None, None, 5, 0, 0, 0, 0, 0, None, None, None),  # the r records
        ],
    )
    got = rows(
        loaded,
        "SELECT day, provider, job_id, dlv_source_ip, complaints, delivered, complaint_rate"
        " FROM pmta.complaints WHERE complaints > 0",
    )
    assert got == [(D1, "Gmail", "j1", IP1, 1, 6, 1 / 6)]


def test_time_to_deliver(loaded: Conn) -> None:
    got = rows(loaded, "SELECT * FROM pmta.time_to_deliver ORDER BY day, provider")
    # gmail: 10 10 20 30 40 50 s (exact bins, nearest rank); yahoo: three deliveries of 90 s
    # in bin [88, 92): 88 + 4 * (p * 3) / 3; example.org and day 2 have no queue time
    assert got == [(D1, "Gmail", 6, 20.0, 50.0, 50.0), (D1, "Yahoo", 3, 90.0, 91.6, 91.96)]


def test_delivery_bin_edges(conn: Conn) -> None:
    got = conn.execute(
        "SELECT s, pmta.delivery_bin(s), pmta.delivery_bin_lower(pmta.delivery_bin(s)),"
        " pmta.delivery_bin_upper(pmta.delivery_bin(s))"
        " FROM unnest(ARRAY[-3, 0, 63.9, 64, 67, 68, 127, 128, 1000, 86400]::float8[]) s"
    ).fetchall()
    assert got == [
        (-3.0, 0, 0, 0), (0.0, 0, 0, 0), (63.9, 63, 63, 63), (64.0, 64, 64, 68),
        (67.0, 64, 64, 68), (68.0, 65, 68, 72), (127.0, 79, 124, 128), (128.0, 80, 128, 136),
        (1000.0, 127, 992, 1024), (86400.0, 229, 86016, 90112),
    ]  # fmt: skip


def test_hourly(loaded: Conn) -> None:
    got = rows(
        loaded,
        "SELECT time, received, delivered, bounced, expired, deferred, complaints, remote_bounces"
        " FROM pmta.hourly ORDER BY time",
    )
    assert same(
        got,
        [
            (datetime(2026, 3, 1, 10, tzinfo=timezone.utc), 5, 10, 3, 1, 7, 1, 1),
            (datetime(2026, 3, 2, 4, tzinfo=timezone.utc), 0, 1, 0, 0, 0, 0, 0),
        ],
    )
    got = rows(
        loaded,
        "SELECT time, dlv_source_ip, delivered, bounced, deferred FROM pmta.hourly_by_ip"
        " ORDER BY time, dlv_source_ip",
    )
    assert same(
        got,
        [
            (datetime(2026, 3, 1, 10, tzinfo=timezone.utc), IP1, 6, 2, 3),
            (datetime(2026, 3, 1, 10, tzinfo=timezone.utc), IP2, 4, 1, 4),
            (datetime(2026, 3, 2, 4, tzinfo=timezone.utc), IP1, 1, 0, 0),
        ],
    )


def test_provider_edit_relabels_past_data(loaded: Conn) -> None:
    loaded.execute("INSERT INTO pmta.mailbox_providers VALUES ('example.org', 'Example')")
    loaded.execute(
        "UPDATE pmta.mailbox_providers SET provider = 'Outlook' WHERE provider = 'Microsoft'"
    )
    got = rows(
        loaded,
        "SELECT provider, delivered FROM pmta.delivery_by_provider WHERE day = '2026-03-01'",
    )
    assert got == [("Example", 1), ("Gmail", 6), ("Outlook", 0), ("Yahoo", 3)]
    loaded.execute("DELETE FROM pmta.mailbox_providers WHERE domain = 'gmail.com'")
    got = rows(
        loaded, "SELECT provider FROM pmta.deferral_codes WHERE code = '421 4.7.0' ORDER BY 1"
    )
    assert got == [("Yahoo",), ("gmail.com",)]


def test_every_view_and_column_has_a_comment(conn: Conn) -> None:
    missing = conn.execute(
        """SELECT c.relname || coalesce('.' || a.attname, '')
           FROM pg_class c
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                AND col_description(c.oid, a.attnum) IS NULL
           WHERE c.relnamespace = 'pmta'::regnamespace AND c.relkind = 'v'
             AND (a.attname IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NULL)"""
    ).fetchall()
    assert missing == []


def alert_rows() -> list[list[str]]:
    """Traffic that opens exactly three alerts on 2026-03-02 (see test_ip_alerts)."""

    def many(rtype: str, day: int, ip: str, dom: str, k: int, **kw: str) -> list[list[str]]:
        return [
            rec(
                rtype,
                f"2026-03-0{day} 08:{i // 60:02d}:{i % 60:02d}+0000",
                f"{rtype}{i}.{ip}@{dom}",
                dlvSourceIp=ip,
                **kw,
            )
            for i in range(k)
        ]

    return [
        *many("d", 1, "10.9.9.9", "gmail.com", 200),  # delivered on day 1 ...
        *many("t", 2, "10.9.9.9", "gmail.com", 150),  # ... only deferrals on day 2
        *many("d", 2, "10.9.9.8", "yahoo.com", 97),
        *many("b", 2, "10.9.9.8", "yahoo.com", 3, bounceCat="bad-mailbox"),  # 3 % bounces
        *many("d", 2, "10.9.9.7", "yahoo.com", 98),
        *many("b", 2, "10.9.9.7", "yahoo.com", 2, bounceCat="bad-mailbox"),  # 2 %: not above
        *many("d", 2, "10.9.9.6", "yahoo.com", 50),
        *many("b", 2, "10.9.9.6", "yahoo.com", 10, bounceCat="bad-mailbox"),  # too few attempts
    ]


def test_ip_alerts(dsn: str, conn: Conn) -> None:
    assert load_bytes(dsn, to_bytes(alert_rows())) == 610
    got = rows(
        conn,
        "SELECT day, dlv_source_ip, provider, alert, observed, threshold, attempts"
        " FROM pmta.ip_alerts",
    )
    assert same(got, [
        (D2, "10.9.9.8", None, "ip_bounce_rate", 0.03, 0.02, 100),
        (D2, "10.9.9.9", "Gmail", "ip_provider_deferral_rate", 1.0, 0.1, 150),
        (D2, "10.9.9.9", None, "ip_stopped_delivering", 0.0, 0.0, 150),
    ])  # fmt: skip
    conn.execute(
        "UPDATE pmta.alert_thresholds SET min_attempts = 50 WHERE alert = 'ip_bounce_rate'"
    )
    got = rows(
        conn, "SELECT dlv_source_ip, observed FROM pmta.ip_alerts WHERE alert = 'ip_bounce_rate'"
    )
    assert same(got, [("10.9.9.6", 10 / 60), ("10.9.9.8", 0.03)])
