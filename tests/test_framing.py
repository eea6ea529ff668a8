"""Record boundaries on their own: no database, no I/O. Every case counts every record."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pmta_pipe.fields import EVENT_COLUMNS
from pmta_pipe.framing import (
    DEFAULT_MAX_RECORD_BYTES,
    ChunkSplitter,
    count_positions,
    header_field,
    is_header_record,
    read_alone,
)
from pmta_pipe.parse import RecordParser

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
HEADER = b"type,timeLogged,orig,rcpt,dsnStatus,dsnDiag,jobId,vmta"


def rec(n: int, diag: bytes = b"smtp;250 ok", rtype: bytes = b"d") -> bytes:
    return b"%s,2026-01-01 00:%02d:%02d+0000,o@example.com,u%d@example.com,2.0.0,%s,j,v1" % (
        rtype, n // 60 % 60, n % 60, n, diag,
    )  # fmt: skip


def stream(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def frame(
    data: bytes, chunk: int = 0, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> list[bytes]:
    """The records of ``data``, checked to be the same whatever the chunk size."""
    results = []
    for size in (chunk,) if chunk else (1, 7, 64, len(data) or 1):
        s = ChunkSplitter(max_record_bytes)
        out: list[bytes] = []
        for i in range(0, len(data), size):
            s.feed(data[i : i + size], out)
        s.finish(out)
        results.append(out)
    assert all(r == results[0] for r in results)
    return results[0]


def parsed(records: list[bytes]) -> tuple[int, int, list[str]]:
    """(events, rejects, reject reasons) of the records parsed as one batch."""
    batch = RecordParser("h").parse(records, NOW)
    return len(batch.rows), len(batch.rejects), [r.reason for r in batch.rejects]


# -- resynchronisation -----------------------------------------------------------------


def test_an_opening_quote_never_closed_costs_only_its_record() -> None:
    torn = b'd,2026-01-01 00:00:05+0000,o@example.com,"u5@example.com,2.0.0,smtp;250 ok,j,v1'
    good = [rec(n) for n in range(1, 11)]
    records = frame(stream(HEADER, *good[:4], torn, *good[4:]))
    assert records == [HEADER, *good[:4], torn, *good[4:]]  # 1 header + 11 records
    assert count_positions(records) == (11, HEADER)
    assert parsed(records) == (10, 1, ["unterminated quoted field"])


def test_a_quote_inside_an_unquoted_field_is_one_event() -> None:
    stray = rec(3, diag=b'smtp;250 ok user "john doe')
    records = frame(stream(HEADER, rec(1), rec(2), stray, rec(4), rec(5)))
    assert records == [HEADER, rec(1), rec(2), stray, rec(4), rec(5)]
    assert parsed(records) == (5, 0, [])


def test_two_stray_quotes_far_apart_swallow_nothing_between() -> None:
    first = rec(1, diag=b'"smtp;451 try later')
    last = rec(32, diag=b'smtp;250 ok user "john doe')
    between = [rec(n) for n in range(2, 32)]  # 30 records
    records = frame(stream(HEADER, first, *between, last, rec(33)))
    assert records == [HEADER, first, *between, last, rec(33)]
    assert count_positions(records) == (33, HEADER)
    assert parsed(records) == (32, 1, ["unterminated quoted field"])


def test_a_cut_off_write_mid_file_with_no_header_after_it() -> None:
    whole = rec(3, diag=b'"smtp;550 5.1.1 mailbox unavailable"')
    cut = whole[: whole.index(b'"') + 12]  # the write stopped in the quoted reply
    records = frame(stream(HEADER, rec(1), rec(2), cut, *[rec(n) for n in range(4, 20)]))
    assert len(records) == 1 + 19 and records[3] == cut
    assert count_positions(records) == (19, HEADER)
    assert parsed(records) == (18, 1, ["unterminated quoted field"])


def test_a_cut_off_write_glued_to_the_next_record_is_one_reject() -> None:
    cut = b'd,2026-01-01 00:00:03+0000,o@example.com,"u3@exam'  # no line break written
    records = frame(stream(HEADER, rec(1), cut + rec(4), rec(5)))
    assert records == [HEADER, rec(1), cut + rec(4), rec(5)]
    assert parsed(records) == (2, 1, ["unterminated quoted field"])


@pytest.mark.parametrize("end", [b"\n", b""])
def test_a_stray_quote_in_the_last_record(end: bytes) -> None:
    last = rec(9, diag=b'"smtp;250 ok')
    good = [rec(n) for n in range(1, 9)]
    records = frame(b"\n".join([HEADER, *good, last]) + end)
    assert records == [HEADER, *good, last]
    assert count_positions(records) == (9, HEADER)
    assert parsed(records) == (8, 1, ["unterminated quoted field"])


def test_a_multi_line_reply_stays_one_record() -> None:
    multi = rec(2, diag=b'"smtp;550-5.7.1 first line\r\n550 5.7.1 second line, with a comma"')
    records = frame(stream(HEADER, rec(1), multi, rec(3)))
    assert records == [HEADER, rec(1), multi, rec(3)]
    batch = RecordParser("h").parse(records, NOW)
    assert (len(batch.rows), len(batch.rejects)) == (3, 0)
    diag = batch.rows[1][EVENT_COLUMNS.index("dsn_diag")]
    assert diag == "smtp;550-5.7.1 first line\r\n550 5.7.1 second line, with a comma"


def test_a_multi_line_field_of_blank_and_record_like_lines() -> None:
    # continuation lines that are blank, start with a type but no timestamp, or with
    # a comma, stay in the field
    multi = rec(2, diag=b'"smtp;550 one\n\nd,not a time\n,2026-01-01 00:00:00+0000\nend"')
    records = frame(stream(HEADER, multi, rec(3)))
    assert records == [HEADER, multi, rec(3)]
    assert parsed(records) == (2, 0, [])


def test_the_blind_spot_a_continuation_that_looks_like_a_record() -> None:
    # documented: a quoted line that itself looks like a whole record is taken for one
    head = rec(2, diag=b'"smtp;550 quoting the record')
    looks = rec(3, diag=b'smtp;250 ok"')
    records = frame(stream(HEADER, head, looks, rec(4)))
    assert records == [HEADER, head, looks, rec(4)]


def test_a_header_line_closes_an_open_quote() -> None:
    torn = rec(1, diag=b'"smtp;250')
    header2 = b"type,rcpt,timeLogged"
    records = frame(stream(HEADER, torn, header2, b"b,z@y.org,2026-01-01 00:00:09+0000"))
    assert records == [HEADER, torn, header2, b"b,z@y.org,2026-01-01 00:00:09+0000"]
    assert count_positions(records) == (2, header2)
    assert parsed(records) == (1, 1, ["unterminated quoted field"])


def test_other_types_resync_once_seen_on_a_record_that_opened_a_quote() -> None:
    custom = [rec(n, rtype=b"x-custom") for n in range(1, 4)]
    opening = rec(5, rtype=b"x-custom", diag=b'"smtp;250 a\nb"')  # x-custom seen here
    torn = rec(6, diag=b'"smtp;250')
    records = frame(stream(HEADER, custom[0], opening, torn, custom[1], custom[2]))
    assert records == [HEADER, custom[0], opening, torn, custom[1], custom[2]]
    # a type never seen on such a record does not begin a record
    other = rec(7, rtype=b"x-other")
    records = frame(stream(HEADER, torn, other, rec(8)))
    assert records == [HEADER, torn + b"\n" + other, rec(8)]


@pytest.mark.parametrize(
    "stamp",
    [b"2026-01-01 00:00:00+0000", b"2026-01-01T00:00:00Z", b"1767225600", b"01/01/2026 00:00:00"],
)
def test_every_timestamp_form_begins_a_record(stamp: bytes) -> None:
    torn = rec(1, diag=b'"smtp;250')
    line = b"t," + stamp + b",o,r,4.0.0,smtp;451,j,v1"
    assert frame(stream(torn, line)) == [torn, line]


def test_the_size_limit_is_still_the_backstop() -> None:
    torn = b'd,2026-01-01 00:00:00+0000,"' + b"x" * 50
    lines = [b"y" * 40 for _ in range(5)]  # do not begin like records
    records = frame(stream(torn, *lines, rec(9)), max_record_bytes=200)
    assert records == [b"\n".join([torn, *lines[:3]]), *lines[3:], rec(9)]


def test_an_endless_line_is_one_piece_the_parser_rejects() -> None:
    data = stream(HEADER, rec(1)) + b"A" * (3 * DEFAULT_MAX_RECORD_BYTES) + b"\n" + stream(rec(2))
    for chunk in (1 << 18, 1000, len(data)):  # the rest of the line is skipped across chunks
        records = frame(data, chunk=chunk)
        assert records == [HEADER, rec(1), b"A" * DEFAULT_MAX_RECORD_BYTES, rec(2)]
        assert count_positions(records) == (3, HEADER)
        events, rejects, _ = parsed(records)
        assert (events, rejects) == (2, 1)


def test_an_endless_line_with_an_odd_quote_starts_no_record() -> None:
    long = b'd,2026-01-01 00:00:00+0000,o@example.com,"' + b"C" * (DEFAULT_MAX_RECORD_BYTES + 5)
    for chunk in (1 << 18, len(long) + 200):
        records = frame(stream(HEADER, long, b"y" * 10, rec(2)), chunk=chunk)
        assert records == [HEADER, long[:DEFAULT_MAX_RECORD_BYTES], b"y" * 10, rec(2)]


def test_an_endless_last_line_without_a_break() -> None:
    data = stream(HEADER, rec(1)) + b"B" * (DEFAULT_MAX_RECORD_BYTES + 10)
    records = frame(data, chunk=4096)
    assert records == [HEADER, rec(1), b"B" * DEFAULT_MAX_RECORD_BYTES]


def test_the_406_record_stream_with_five_stray_quotes() -> None:
    # the measured case: 406 records, five of them with a quote that never closes
    stray = {
        50: b'"smtp;250 ok',  # opens a quoted field: a reject
        120: b'smtp;250 ok user "john doe',  # a quote in an unquoted field: an event
        121: b'"smtp;451 4.7.1 try again later',  # right after another one
        300: b'smtp;550 "no such user',
        406: b'"smtp;250 ok',  # the last record
    }
    lines = [rec(n, diag=stray.get(n, b"smtp;250 ok")) for n in range(1, 407)]
    records = frame(stream(HEADER, *lines), chunk=4096)
    assert records == [HEADER, *lines]
    assert count_positions(records) == (406, HEADER)
    assert parsed(records) == (403, 3, ["unterminated quoted field"] * 3)


# -- one detector of headers, one counter of positions ---------------------------------


@pytest.mark.parametrize(
    ("first", "expected"),
    [("type", True), ("TYPE", True), (" Type ", True), ("\ufefftype", True), ("types", False),
     ("typ", False), ('"type"', False), ("", False), ("t ype", False)],
)  # fmt: skip
def test_header_field(first: str, expected: bool) -> None:
    assert header_field(first) is expected


RAW = [
    b"type,timeLogged",
    b"TYPE,a",
    b" type ,a",
    b'"type",a',
    b'" Type ",a',
    b"\xef\xbb\xbftype,a",
    b'\xef\xbb\xbf"type",a',  # the quote is not at the start of the field: not a header
    b' "type",a',  # likewise
    b'"t"ype,a',  # csv reads "type"
    b'"ty""pe",a',
    b'"ty,pe",a',
    b'type,"unterminated',  # cannot be read alone: a reject, not a header
    b"type",
    b"type\r",
    b"types,a",
    b"d,2026-01-01 00:00:00+0000",
    b"",
    b" ",
    b"\r",
    b'""',
    b'" "',
    b'"',
    b'"""',
    b",",
    b",,,",
    b"a\rb,c",
    b"\x00type,a",
    b"\xef\xbb\xbf",
    b'd,x,"a\nb"',
    b'd,"a\nb',
]


@pytest.mark.parametrize("record", RAW)
def test_is_header_record_agrees_with_the_parser(record: bytes) -> None:
    parser = RecordParser("h")
    batch = parser.parse([record], NOW)
    assert is_header_record(record) is (batch.headers == 1)


def test_count_positions_agrees_with_the_parser() -> None:
    records = [rec(1), *RAW, rec(2), b'd,"open', rec(3), b"type,a,b", b"  "]
    for i in range(len(records)):
        batch = records[i:] + records[:i]  # every record once first, once last
        parser = RecordParser("h")
        parser.parse(batch, NOW)
        positions, header = count_positions(batch)
        assert positions == parser.next_position - 1
        expected = None if parser.header_line is None else parser.header_line
        assert (None if header is None else header.decode().rstrip("\r\n")) == expected


def test_count_positions_counts_records_cut_at_the_limit() -> None:
    cut = b"type," + b"a" * DEFAULT_MAX_RECORD_BYTES
    assert not is_header_record(cut)
    assert count_positions([HEADER, cut, rec(1)]) == (2, HEADER)
    parser = RecordParser("h")
    batch = parser.parse([HEADER, cut, rec(1)], NOW)
    assert (len(batch.rows), len(batch.rejects), parser.next_position) == (1, 1, 3)


def test_read_alone() -> None:
    assert read_alone(b'd,"a,b",c') == ["d", "a,b", "c"]
    assert read_alone(b'd,"a\nb",c') == ["d", "a\nb", "c"]
    assert read_alone(b'd,"open') is None
    assert read_alone(b"a\rb") is None
    assert read_alone(b"") == []
