"""The parser on its own: no database, no I/O."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest

from pmta_pipe import values
from pmta_pipe.fields import EVENT_COLUMNS
from pmta_pipe.framing import ChunkSplitter
from pmta_pipe.parse import ParsedBatch, RecordParser
from tests.helpers import framed

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
COL = {c: i for i, c in enumerate(EVENT_COLUMNS)}


records = framed  # the whole records of a stream, as the pipe cuts them


def parse(data: bytes, parser: RecordParser | None = None) -> ParsedBatch:
    return (parser or RecordParser("h")).parse(records(data), NOW)


def col(batch: ParsedBatch, i: int, name: str) -> str:
    return batch.rows[i][COL[name]]


def extra(batch: ParsedBatch, i: int) -> dict[str, str]:
    text = col(batch, i, "extra")
    return json.loads(text) if text else {}


HEADER = b"type,timeLogged,orig,rcpt,dlvSourceIp,dlvSize,bounceCat\n"


def test_maps_columns_by_header_not_position() -> None:
    a = parse(HEADER + b"d,2026-01-15 14:23:11-0700,o@x.com,R@Gmail.COM,10.0.0.1,123,\n")
    b = parse(
        b"type,bounceCat,dlvSize,dlvSourceIp,rcpt,orig,timeLogged\n"
        b"d,,123,10.0.0.1,R@Gmail.COM,o@x.com,2026-01-15 14:23:11-0700\n"
    )
    assert a.rows == b.rows
    assert col(a, 0, "rcpt") == "R@Gmail.COM"
    assert col(a, 0, "rcpt_domain") == "gmail.com"
    assert col(a, 0, "dlv_source_ip") == "10.0.0.1"
    assert col(a, 0, "dlv_size") == "123"
    assert col(a, 0, "time_logged") == "2026-01-15T14:23:11-07:00"


def test_identity_ignores_empty_columns_and_source() -> None:
    a = RecordParser("host-a").parse(
        records(b"type,timeLogged,rcpt\nd,2026-01-15 14:23:11-0700,r@x.com\n"), NOW
    )
    b = RecordParser("host-b").parse(
        records(b"type,timeLogged,rcpt,orcpt\nd,2026-01-15 14:23:11-0700,r@x.com,\n"), NOW
    )
    assert col(a, 0, "record_id") == col(b, 0, "record_id")
    c = parse(b"type,timeLogged,rcpt\nd,2026-01-15 14:23:12-0700,r@x.com\n")
    assert col(c, 0, "record_id") != col(a, 0, "record_id")


def test_header_change_mid_stream_remaps() -> None:
    data = HEADER + b"d,2026-01-15 14:23:11-0700,o@x.com,r@x.com,10.0.0.1,1,\n"
    data += b"type,rcpt,timeLogged\nb,z@y.org,2026-01-15 14:24:00-0700\n"
    batch = parse(data)
    assert batch.headers == 2
    assert col(batch, 1, "rcpt") == "z@y.org"
    assert col(batch, 1, "record_type") == "b"
    assert col(batch, 1, "dlv_source_ip") == ""


def test_header_persists_across_batches() -> None:
    p = RecordParser("h")
    p.parse(records(b"type,rcpt,timeLogged\n"), NOW)
    batch = p.parse(records(b"d,a@b.c,2026-01-15 14:23:11+0000\n"), NOW)
    assert col(batch, 0, "rcpt") == "a@b.c"
    assert batch.positions == [1]


def test_no_header_uses_v5_default_order() -> None:
    line = (
        b"d,2019-02-08 21:54:05+0000,2019-02-08 21:54:05+0000,AA@bounce.bar.com,D@1181.com,,"
        b"relayed,2.0.0 (success),smtp;250 DATA ok,foo (10.1.2.3),,api,foo (127.0.0.1),smtp,"
        b'10.1.2.3,10.1.2.4,"ENHANCEDSTATUSCODES,8BITMIME",41159,vmta48,JOB1,,1181.com/vmta48\n'
    )
    batch = parse(line)
    assert col(batch, 0, "dlv_esmtp_available") == "ENHANCEDSTATUSCODES,8BITMIME"
    assert col(batch, 0, "dlv_destination_ip") == "10.1.2.4"
    assert col(batch, 0, "job_id") == "JOB1"
    assert col(batch, 0, "queue") == "1181.com/vmta48"


def test_bom_before_header_is_ignored() -> None:
    batch = parse(b"\xef\xbb\xbf" + HEADER + b"d,2026-01-15 14:23:11-0700,o,r@x.com,,,\n")
    assert batch.headers == 1
    assert col(batch, 0, "rcpt") == "r@x.com"


def test_duplicate_column_names_lose_no_value() -> None:
    batch = parse(
        b"type,timeLogged,rcvSourceIp,rcvSourceIp,header_Subject,header_Subject,header_subject\n"
        b"r,2026-01-15 14:23:11-0700,1.1.1.1,2.2.2.2,Hi,Again,lower\n"
    )
    assert col(batch, 0, "rcv_source_ip") == "1.1.1.1"
    assert extra(batch, 0) == {
        "rcvSourceIp#2": "2.2.2.2",
        "header_Subject": "Hi",
        "header_Subject#2": "Again",
        "header_subject": "lower",
    }


def test_rfc4180_quoting_crlf_and_multiline() -> None:
    data = (
        b"type,timeLogged,dsnDiag,rcpt\r\n"
        b'b,2026-01-15 14:23:11-0700,"smtp;550 no ""RCPT TO:<a@b.c>""",a@b.c\r\n'
        b'b,2026-01-15 14:23:12-0700,"line one\r\nline two, still",c@d.e\r\n'
    )
    batch = parse(data)
    assert batch.records == 2
    assert col(batch, 0, "dsn_diag") == 'smtp;550 no "RCPT TO:<a@b.c>"'
    assert col(batch, 1, "dsn_diag") == "line one\r\nline two, still"
    assert col(batch, 1, "rcpt") == "c@d.e"


def test_invalid_utf8_and_nul_are_kept_readable() -> None:
    batch = parse(HEADER + b"d,2026-01-15 14:23:11-0700,o\xff\xfe,r\x00x@y.com,,,\n")
    assert col(batch, 0, "orig") == "o\ufffd\ufffd"
    assert col(batch, 0, "rcpt") == "r\ufffdx@y.com"
    assert "\x00" not in "".join(batch.rows[0])


@pytest.mark.parametrize("rtype", ["d", "b", "t", "tq", "r", "f", "rb", "rs", "x-custom"])
def test_every_record_type_is_kept(rtype: str) -> None:
    batch = parse(HEADER + rtype.encode() + b",2026-01-15 14:23:11-0700,,,,,\n")
    assert col(batch, 0, "record_type") == rtype


@pytest.mark.parametrize(
    ("text", "iso", "day"),
    [
        ("2026-01-15 14:23:11-0700", "2026-01-15T14:23:11-07:00", date(2026, 1, 15)),
        ("2026-01-15 20:23:11-0700", "2026-01-15T20:23:11-07:00", date(2026, 1, 16)),
        ("2026-01-15T14:23:11+05:30", "2026-01-15T14:23:11+05:30", date(2026, 1, 15)),
        ("2026-01-15T14:23:11Z", "2026-01-15T14:23:11+00:00", date(2026, 1, 15)),
        ("1178807903", "2007-05-10T14:38:23+00:00", date(2007, 5, 10)),
        ("01/15/2026 14:23:11-0700", "2026-01-15T14:23:11-07:00", date(2026, 1, 15)),
        ("2026-01-15 14:23:11.250+0000", "2026-01-15T14:23:11.250000+00:00", date(2026, 1, 15)),
    ],
)
def test_timestamp_formats(text: str, iso: str, day: date) -> None:
    assert values.parse_time(text) == (iso, day)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01 00:00:00+0000", "2026-02-30 1:00:00"])
def test_unreadable_timestamps(text: str) -> None:
    assert values.parse_time(text) is None


def test_fewer_fields_padded_more_fields_rejected() -> None:
    batch = parse(
        HEADER + b"d,2026-01-15 14:23:11-0700,o\nd,2026-01-15 14:23:11-0700,,,,,,,extra\n"
    )
    assert len(batch.rows) == 1
    assert col(batch, 0, "orig") == "o"
    assert len(batch.rejects) == 1
    assert batch.rejects[0].reason == "9 fields, more than the header's 7"
    assert batch.rejects[0].position == 2
    assert batch.rejects[0].raw == "d,2026-01-15 14:23:11-0700,,,,,,,extra"


def test_bad_type_or_time_rejected_bad_typed_value_kept_in_extra() -> None:
    batch = parse(
        HEADER
        + b",2026-01-15 14:23:11-0700,,,,,\n"
        + b"d,not a time,,,,,\n"
        + b"d,2026-01-15 14:23:11-0700,,r@x.com,999.1.1.1,abc,\n"
    )
    assert [r.reason for r in batch.rejects] == [
        "no record type",
        "unreadable timeLogged 'not a time'",
    ]
    assert col(batch, 0, "dlv_source_ip") == ""
    assert col(batch, 0, "dlv_size") == ""
    assert extra(batch, 0) == {"dlvSourceIp": "999.1.1.1", "dlvSize": "abc"}


def test_time_falls_back_to_time_queued_then_received() -> None:
    batch = parse(
        b"type,timeQueued,bounceCat\nb,2016-05-29 01:10:51+0200,bad-domain\ntype,rcpt\nd,a@b.c\n"
    )
    assert col(batch, 0, "time_logged") == "2016-05-29T01:10:51+02:00"
    assert extra(batch, 0) == {"pmtaPipeTimeFrom": "timeQueued"}
    assert col(batch, 1, "time_logged") == NOW.isoformat()
    assert extra(batch, 1) == {"pmtaPipeTimeFrom": "received"}
    assert batch.days == {date(2016, 5, 28), date(2026, 3, 1)}


def test_unknown_columns_go_to_extra_under_original_name() -> None:
    batch = parse(
        b"type,timeLogged,header_X-Job,userString,arf_source-ip,someFutureField\n"
        b"f,2026-01-15 14:23:11-0700,J1,us,1.2.3.4,\n"
    )
    assert extra(batch, 0) == {"header_X-Job": "J1", "userString": "us", "arf_source-ip": "1.2.3.4"}


def test_case_variants_of_known_names() -> None:
    batch = parse(b"type,timeLogged,envid,reportingMTA\nf,2026-01-15 14:23:11-0700,E1,mx.example\n")
    assert col(batch, 0, "env_id") == "E1"
    assert col(batch, 0, "reporting_mta") == "mx.example"


def test_malformed_csv_rejected_and_following_records_read() -> None:
    batch = parse(
        HEADER + b"d,2026-01-15 14:23:11-0700,a\rb,r@x.com,,,\nd,2026-01-15 14:23:12-0700,,,,,\n"
    )
    assert len(batch.rejects) == 1
    assert batch.rejects[0].reason.startswith("malformed CSV")
    assert len(batch.rows) == 1


def test_unbalanced_quote_is_cut_at_the_size_limit() -> None:
    out: list[bytes] = []
    s = ChunkSplitter(max_record_bytes=100)
    s.feed(b'd,"open\n' + b"x" * 200 + b"\nd,next\n", out)
    s.finish(out)
    assert len(out) == 2
    assert out[1] == b"d,next"


def test_blank_lines_are_not_records() -> None:
    batch = parse(HEADER + b"\n\r\nd,2026-01-15 14:23:11-0700,,,,,\n\n")
    assert batch.records == 1


def test_a_record_with_an_open_quote_is_read_alone() -> None:
    good = [b"d,2026-01-15 14:23:%02d-0700,o,r%d@x.com,,1," % (n, n) for n in range(1, 5)]
    for torn in (
        b'd,2026-01-15 14:23:59-0700,o,"r@x.com,,1,',  # a field opened and never closed
        b'd,2026-01-15 14:23:59-0700,o,r"@x.com,,"1,',  # even quotes, still left open
        b'd,2026-01-15 14:23:59-0700,o,"r@x.com\nsecond line,,1,',  # torn over two lines
    ):
        for at in range(len(good) + 1):  # first, in between, last
            records = [HEADER.rstrip(b"\n"), *good[:at], torn, *good[at:]]
            batch = RecordParser("h").parse(records, NOW)
            assert len(batch.rows) == 4, (torn, at)
            assert [(r.raw, r.reason, r.position) for r in batch.rejects] == [
                (torn.decode(), "unterminated quoted field", at + 1)
            ]
            assert batch.positions == [p for p in range(1, 6) if p != at + 1]


def test_malformed_csv_after_an_open_quote_is_told_apart() -> None:
    records = [HEADER.rstrip(b"\n"), b'd,"open', b"d,a\rb", b"d,2026-01-15 14:23:11-0700,,,,,"]
    batch = RecordParser("h").parse(records, NOW)
    assert [(r.position, r.reason[:14]) for r in batch.rejects] == [
        (1, "unterminated q"),
        (2, "malformed CSV:"),
    ]
    assert batch.positions == [3]


def test_a_record_cut_at_the_limit_is_rejected() -> None:
    from pmta_pipe.framing import DEFAULT_MAX_RECORD_BYTES

    piece = b"A" * DEFAULT_MAX_RECORD_BYTES  # would read as a record of type "AAAA..."
    records = [HEADER.rstrip(b"\n"), piece, b"d,2026-01-15 14:23:11-0700,,,,,", piece + b"A"]
    batch = RecordParser("h").parse(records, NOW)
    assert [r.position for r in batch.rejects] == [1, 3]
    assert batch.rejects[0].reason.startswith("cut at the record limit")
    assert batch.positions == [2]
