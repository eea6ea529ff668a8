"""JSON accounting without a database: framing (every layout, resynchronisation, limits)
and parsing (mapping, values, identity shared with CSV, rejects, positions)."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pmta_pipe.framing import ChunkSplitter, count_positions, is_header_record, left_open
from pmta_pipe.jsonrecords import is_json_record, is_open, read_object
from pmta_pipe.parse import (
    CUT_JSON,
    NO_TYPE_JSON,
    TORN,
    UNTERMINATED_JSON,
    ParsedBatch,
    RecordParser,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
#: the reference's real JSON records, kept verbatim beside the CSV ones (tests/data)
JSON_SAMPLES = Path(__file__).resolve().parent / "data" / "pmta-json-samples.ndjson"

#: three records as PowerMTA's JSON accounting writes them (each type its own fields)
RECORDS: list[dict[str, str]] = [
    {
        "type": "d", "timeLogged": "2026-01-15 14:23:11-0700",
        "timeQueued": "2026-01-15 14:20:00-0700", "orig": "bounce@example.com",
        "rcpt": "bob@example.net", "dsnAction": "relayed", "dsnStatus": "2.0.0 (success)",
        "dsnDiag": "smtp;250 ok", "dlvSourceIp": "10.0.0.1", "dlvSize": "4096",
        "vmta": "vmta1", "jobId": "job-7", "header_x-job": "j7", "dlvTlsProtocol": "TLSv1.3",
    },
    {
        "type": "b", "timeLogged": "1768486991", "rcpt": "carol@example.org",
        "dsnAction": "failed", "dsnStatus": "5.1.1 (bad)", "dsnDiag": "smtp;550 no, such user",
        "bounceCat": "bad-mailbox", "header_x-job": "",
    },
    {
        "type": "t", "timeLogged": "2026-01-15 14:23:12+0000", "rcpt": "dan@example.com",
        "dsnDiag": 'smtp;421 "try later" {x} [y] \\ tab\there\nline two', "vmtaPool": "",
    },
]  # fmt: skip


def cut(data: bytes, step: int | None = None, limit: int = 1 << 20) -> tuple[list[bytes], bool]:
    """The records framing makes of ``data`` fed in pieces of ``step`` bytes (all at once
    when None), and what ``finish`` said."""
    splitter = ChunkSplitter(limit)
    out: list[bytes] = []
    if step is None:
        splitter.feed(data, out)
    else:
        for i in range(0, len(data), step):
            splitter.feed(data[i : i + step], out)
    return out, splitter.finish(out)


def cut_alike(data: bytes, limit: int = 1 << 20) -> list[bytes]:
    """The records of ``data``, checked to be the same whatever the chunks."""
    whole = cut(data, None, limit)
    for step in (1, 2, 7, 64):
        assert cut(data, step, limit) == whole, step
    return whole[0]


def parse(records: Sequence[bytes], parser: RecordParser | None = None) -> ParsedBatch:
    return (parser or RecordParser("h")).parse(records, NOW)


def by_column(batch: ParsedBatch, index: int = 0) -> dict[str, str]:
    from pmta_pipe.fields import EVENT_COLUMNS

    return dict(zip(EVENT_COLUMNS, batch.rows[index], strict=True))


def ndjson(records: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def csv_of(records: list[dict[str, str]]) -> bytes:
    """The same records as a CSV file with a header: the union of their fields."""
    names: list[str] = []
    for r in records:
        names += [k for k in r if k not in names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for r in records:
        writer.writerow([r.get(n, "") for n in names])
    return buf.getvalue().encode()


LAYOUTS = {
    "ndjson": ndjson(RECORDS),
    "ndjson-crlf": ndjson(RECORDS).replace(b"\n", b"\r\n"),
    "array": json.dumps(RECORDS).encode(),
    "array-per-line": b"[\n" + b",\n".join(json.dumps(r).encode() for r in RECORDS) + b"\n]\n",
    "back-to-back": b"".join(json.dumps(r).encode() for r in RECORDS),
    "pretty": b"\n".join(json.dumps(r, indent=2).encode() for r in RECORDS) + b"\n",
    "pretty-array": json.dumps(RECORDS, indent=4).encode(),
    "bom-and-blanks": b"\xef\xbb\xbf\n \n" + ndjson(RECORDS) + b"\n\n",
}


# -- framing ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_gives_the_same_records(layout: str) -> None:
    records = cut_alike(LAYOUTS[layout])
    assert len(records) == 3
    assert all(b"\n" not in r and b"\r" not in r for r in records)
    assert [json.loads(r) for r in records] == RECORDS
    reference = parse(cut_alike(LAYOUTS["ndjson"]))
    got = parse(records)
    assert (got.ids, got.times, got.positions, got.rejects) == (
        reference.ids,
        reference.times,
        [1, 2, 3],
        [],
    )
    assert [tuple(r) for r in got.rows] == [tuple(r) for r in reference.rows]


def test_a_record_is_as_long_as_its_bytes_in_the_input() -> None:
    data = b'[\r\n  {\r\n    "type": "d",\n    "rcpt": "a@b.c"\r\n  }\n]'
    (record,) = cut_alike(data)
    assert record == b'{      "type": "d",     "rcpt": "a@b.c"    }'
    assert len(record) == data.index(b"}") + 1 - data.index(b"{")


def test_strings_and_escapes_hide_brackets_and_quotes() -> None:
    rec = json.dumps({"type": "d", "dsnDiag": 'a } ] [ { " \\ ", x'}).encode()
    assert cut_alike(rec + b"\n" + rec) == [rec, rec]
    assert cut_alike(b'{"type":"d","x":"\\\\"}{"type":"b"}') == [
        b'{"type":"d","x":"\\\\"}',
        b'{"type":"b"}',
    ]


def test_a_string_open_at_the_end_of_a_line_ends_its_record() -> None:
    data = b'{"type":"d","rcpt":"a@b\n{"type":"b","rcpt":"c@d"}\n'
    assert cut_alike(data) == [b'{"type":"d","rcpt":"a@b', b'{"type":"b","rcpt":"c@d"}']


def test_a_line_beginning_with_a_brace_ends_an_open_object() -> None:
    data = b'{"type":"d","rcpt":\n\n  {"type":"b","rcpt":"c@d"}\n{"type":"t"}\n'
    assert cut_alike(data) == [b'{"type":"d","rcpt":', b'{"type":"b","rcpt":"c@d"}',
                               b'{"type":"t"}']  # fmt: skip


def test_values_that_are_not_objects_are_records_of_their_own() -> None:
    data = b'42\n"a string"\nnull\ntrue\n[1, 2]\n}\n{"type":"d"}\n'
    assert cut_alike(b'{"type":"d"}\n' + data) == [
        b'{"type":"d"}', b"42", b'"a string"', b"null", b"true", b"[1, 2]", b"}",
        b'{"type":"d"}',
    ]  # fmt: skip
    assert cut_alike(b'[{"type":"d"}, 5, "x", [1], {"type":"b"}]') == [
        b'{"type":"d"}', b'5, "x", [1],', b'{"type":"b"}',
    ]  # fmt: skip
    assert cut_alike(b'[{"type":"d"}, 5]\n{"type":"b"}') == [
        b'{"type":"d"}', b"5", b'{"type":"b"}',
    ]  # fmt: skip


def test_csv_is_cut_as_before() -> None:
    data = b'type,timeLogged,rcpt\nd,2026-01-15 14:23:11+0000,"a\nb@c"\n{"type":"d"}\n'
    assert cut_alike(data) == [b"type,timeLogged,rcpt", b'd,2026-01-15 14:23:11+0000,"a\nb@c"',
                               b'{"type":"d"}']  # fmt: skip
    assert cut(b"   \n\n") == ([], False)
    assert cut(b"") == ([], False)


def test_finish_says_when_the_input_ended_inside_a_record() -> None:
    assert cut(b'{"type":"d"}') == ([b'{"type":"d"}'], False)  # closed: whole
    assert cut(b'{"type":"d"}\n{"type":"b","rc') == ([b'{"type":"d"}', b'{"type":"b","rc'], True)
    assert cut(b'{\n "type": "d",\n') == ([b'{  "type": "d",'], True)  # last break not kept
    assert cut(b'{"type":"d"}\n42') == ([b'{"type":"d"}', b"42"], True)
    assert cut(b'[{"type":"d"}]') == ([b'{"type":"d"}'], False)


def test_the_whole_body_calling_convention_for_both_formats() -> None:
    for body, n in ((ndjson(RECORDS), 3), (csv_of(RECORDS), 4), (LAYOUTS["pretty-array"], 3)):
        s = ChunkSplitter()
        out: list[bytes] = []
        s.feed(body, out)
        s.finish(out)
        assert len(out) == n
        assert s.is_json == (n == 3)


def test_an_object_over_the_limit_is_cut_and_the_rest_of_it_skipped() -> None:
    big = json.dumps({"type": "d", "dsnDiag": "x" * 200, "n": {"a": [1, 2, {"b": "}"}]}}).encode()
    data = big + b"\n" + b'{"type":"b"}\n'
    s = ChunkSplitter(64)
    out: list[bytes] = []
    s.feed(data, out)
    s.finish(out)
    assert out == [big[:64], b'{"type":"b"}']
    assert s.skipped_bytes == len(big) - 64
    assert cut_alike(data, 64) == out
    line = b"garbage " * 20 + b"\n"  # a value that is not an object, over the limit
    assert cut_alike(b'{"type":"d"}\n' + line + b'{"type":"b"}', 64) == [
        b'{"type":"d"}', line[:64], b'{"type":"b"}',
    ]  # fmt: skip


def test_cutting_does_not_depend_on_the_chunks() -> None:
    """Seeded random JSON-ish streams: the same records, flags and skipped bytes whether
    fed whole or in pieces of 1, 2 or 5 bytes, with small and large limits."""
    rng = random.Random(14)
    pieces = [b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b",", b"a", b" ", b"\r", b":",
              b"\n\n\n", b"    "]  # fmt: skip
    for _ in range(3000):
        data = b"{" + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        limit = rng.choice((4, 8, 16, 1 << 20))
        runs = []
        for step in (None, 1, 2, 5):
            s = ChunkSplitter(limit)
            out: list[bytes] = []
            if step is None:
                s.feed(data, out)
            else:
                for i in range(0, len(data), step):
                    s.feed(data[i : i + step], out)
            runs.append((out, s.finish(out), s.skipped_bytes))
        assert all(run == runs[0] for run in runs), data
        assert all(b"\n" not in r and len(r) <= limit for r in runs[0][0]), data


def test_what_is_kept_while_an_object_is_open_is_bounded() -> None:
    """An object left open, then blank lines, blanks or one endless string: each is cut at
    the limit and the rest skipped, holding no more than about the limit in memory."""
    for head, filler in ((b'{"type":"d","a":', b"\n"), (b'{"type":"d","a":', b" "),
                         (b'{"type":"d","a":"', b"x"), (b"[", b" ")):  # fmt: skip
        s = ChunkSplitter(64)
        out: list[bytes] = []
        s.feed(head, out)
        for _ in range(2000):
            s.feed(filler * 50, out)
            assert len(s._json._buf) <= 64 + 50  # type: ignore[union-attr]
        s.feed(b'\n{"type":"b"}\n', out)
        s.finish(out)
        assert out[-1] == b'{"type":"b"}'
        assert len(out) == (1 if head == b"[" else 2)


def test_what_is_a_json_record() -> None:
    for rec in (b'{"type":"d"}', b"  {", b"[1]", b"]", b"}", b"42", b'"x"', b"null", b"-1.5e3",
                b"\xef\xbb\xbf{}"):  # fmt: skip
        assert is_json_record(rec), rec
    for rec in (b"d,2026-01-15 14:23:11+0000", b"type,timeLogged", b"type", b"hello", b"",
                b'"d","x"', b"4 2"):  # fmt: skip
        assert not is_json_record(rec), rec
    assert not is_header_record(b'{"type","timeLogged"}')
    assert is_open(b'{"type":"d"') and is_open(b'{"a":"b}') and is_open(b'{"a":[{}')
    assert not is_open(b'{"type":"d"}') and not is_open(b'{"a":"\\"}"}') and not is_open(b"}")
    assert left_open(b'{"a":"\\""') and not left_open(b'{"a":"\\""}')
    assert left_open(b'd,x,"open') and not left_open(b'd,x,"closed"')


# -- parsing ----------------------------------------------------------------------------


def test_both_reference_samples_load() -> None:
    batch = parse(cut_alike(JSON_SAMPLES.read_bytes()))
    assert batch.rejects == [] and batch.positions == [1, 2]
    t, d = by_column(batch, 0), by_column(batch, 1)
    assert (t["record_type"], t["time_logged"], t["time_queued"]) == (
        "t", "2023-02-23T18:00:36+00:00", "2023-02-23T13:15:11+00:00",
    )  # fmt: skip
    assert (t["dlv_tls_protocol"], t["dlv_tls_cipher"]) == (
        "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384",
    )  # fmt: skip
    assert (t["dlv_source_ip"], t["rcpt_domain"], t["dlv_size"]) == ("172.20.0.10", "example.com",
                                                                      "")  # fmt: skip
    extra = json.loads(t["extra"])
    assert extra["header_x-job"] == "258654" and "header_x-virtual-mta" not in extra  # empty
    assert len(extra) == 9
    assert (d["record_type"], d["time_logged"], d["rcpt"], d["extra"]) == (
        "d", "2013-10-21T17:49:48+00:00", "info@postmastery.net", "",
    )  # fmt: skip


def test_non_string_values_are_their_text() -> None:
    rec = (b'{"type": "d", "timeLogged": 1768486991, "dlvSize": 4096, "totalSecondsQueued": 7,'
           b' "rcpt": null, "x-flag": true, "x-off": false, "x-ratio": 1.50, "x-big": 1e400,'
           b' "orig": "a\\u0000b\\ud800c"}')  # fmt: skip
    batch = parse([rec])
    assert batch.rejects == []
    row = by_column(batch)
    assert (row["time_logged"], row["dlv_size"], row["total_seconds_queued"], row["rcpt"]) == (
        "2026-01-15T14:23:11+00:00", "4096", "7", "",
    )  # fmt: skip
    assert row["orig"] == "a\ufffdb\ufffdc"
    assert json.loads(row["extra"]) == {
        "x-flag": "true", "x-off": "false", "x-ratio": "1.50", "x-big": "1e400",
    }  # fmt: skip


def test_names_map_like_csv_header_names() -> None:
    rec = (
        b'{" TYPE ": " d ", "TimeLogged": "2026-01-15 14:23:11+0000", "RCPT": "a@B.c",'
        b' "envid": "e1", "header_X-Job": "J", " userString ": "u", "dlvsize": "12"}'
    )
    batch = parse([rec])
    row = by_column(batch)
    assert (row["record_type"], row["rcpt"], row["env_id"], row["dlv_size"]) == (
        "d", "a@B.c", "e1", "12",
    )  # fmt: skip
    assert json.loads(row["extra"]) == {"header_X-Job": "J", "userString": "u"}
    dup = parse([b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000","x":"1","x":"2","rcpt":"a",'
                 b'"RCPT":"b"}'])  # fmt: skip
    row = by_column(dup)
    assert row["rcpt"] == "a"
    assert json.loads(row["extra"]) == {"x": "1", "x#2": "2", "RCPT#2": "b"}


def test_keys_differ_by_record_type_in_one_batch() -> None:
    records = [json.dumps(r).encode() for r in RECORDS] * 2
    batch = parse(records)
    assert batch.positions == [1, 2, 3, 4, 5, 6] and batch.ids[:3] == batch.ids[3:]
    assert by_column(batch, 1)["bounce_cat"] == "bad-mailbox"
    assert by_column(batch, 0)["bounce_cat"] == ""


def test_bad_json_records_are_rejects_with_a_reason_and_the_next_loads() -> None:
    good = b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000","rcpt":"a@b.c"}'
    data = b"\n".join([
        good,
        b'{"type":"d","rcpt":"torn',  # string open at the end of the line
        good,
        b'{"type":"d" "rcpt":"x"}',  # a comma missing
        b"42", b'"a string"', b"null", b"[1, 2]", b"}",
        b'{"rcpt":"no type"}', b'{"type":"","rcpt":"empty type"}', b'{"type":null}',
        b'{"type":"d","rcpt":{"nested":"object"}}', b'{"type":"d","rcpt":["an","array"]}',
        b'{"type":"d","timeLogged":"yesterday"}',
        good,
    ]) + b"\n"  # fmt: skip
    batch = parse(cut_alike(data))
    reasons = [(r.position, r.reason) for r in batch.rejects]
    assert reasons == [
        (2, UNTERMINATED_JSON),
        (4, "not valid JSON: Expecting ',' delimiter (column 13)"),
        (5, "not a JSON object but a number"),
        (6, "not a JSON object but a string"),
        (7, "not a JSON object but null"),
        (8, "not a JSON object but an array"),
        (9, "not valid JSON: Expecting value (column 1)"),
        (10, NO_TYPE_JSON),
        (11, NO_TYPE_JSON),
        (12, NO_TYPE_JSON),
        (13, "the value of 'rcpt' is an object: accounting values are text"),
        (14, "the value of 'rcpt' is an array: accounting values are text"),
        (15, "unreadable timeLogged 'yesterday'"),
    ]
    assert batch.positions == [1, 3, 16]
    assert batch.rejects[0].raw == '{"type":"d","rcpt":"torn'
    assert batch.rejects[6].raw == "}"
    assert len(set(batch.ids)) == 1


def test_hostile_json() -> None:
    deep = b'{"type":"d","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    batch = parse(cut_alike(deep + b"\n" + b'{"type":"b","timeLogged":"1768486991"}'))
    assert [r.position for r in batch.rejects] == [1] and batch.positions == [2]
    assert batch.rejects[0].reason.startswith(("not valid JSON", "the value of 'x' is an array"))
    huge = b'{"type":"d","dsnDiag":"' + b"x" * (1 << 20) + b'"}'
    s = ChunkSplitter()
    out: list[bytes] = []
    s.feed(huge + b'\n{"type":"b"}\n', out)
    s.finish(out)
    assert len(out) == 2 and len(out[0]) == 1 << 20 and s.skipped_bytes == len(huge) - (1 << 20)
    batch = parse(out)
    assert [(r.position, r.reason) for r in batch.rejects] == [(1, CUT_JSON)]
    assert batch.positions == [2]
    unterminated = b'{"type":"d","dsnDiag":"never closed ' + b"y" * 5000
    assert parse(cut_alike(unterminated)).rejects[0].reason == UNTERMINATED_JSON


def test_positions_agree_with_count_positions() -> None:
    data = (
        b"type,timeLogged,rcpt\nd,2026-01-15 14:23:11+0000,a@b\n\n"
        b'{"type":"d","timeLogged":"1768486991"}\n42\n{"rcpt":"x"}\n'
        b'"type"\ntype,rcpt\nd,x@y\n'
    )
    records = cut_alike(data)
    parser = RecordParser("h")
    batch = parser.parse(records, NOW)
    positions, header = count_positions(records)
    assert positions == batch.records == parser.next_position - 1 == 6
    assert header == b"type,rcpt"


def test_a_json_record_does_not_change_the_csv_header() -> None:
    parser = RecordParser("h")
    data = (
        b"type,timeLogged,rcpt,jobId\n"
        b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000","jobId":"json","rcpt":"j@x"}\n'
        b"d,2026-01-15 14:23:12+0000,c@x,csv\n"
    )
    batch = parser.parse(cut_alike(data), NOW)
    assert [by_column(batch, i)["job_id"] for i in (0, 1)] == ["json", "csv"]
    assert parser.header_line == "type,timeLogged,rcpt,jobId"
    assert parser.header.names == ("type", "timeLogged", "rcpt", "jobId")


def test_one_identity_for_csv_and_json() -> None:
    from_csv = parse(cut_alike(csv_of(RECORDS)))
    shuffled = [dict(reversed(list(r.items()))) for r in RECORDS]  # another order
    without_empty = [{k: v for k, v in r.items() if v} for r in RECORDS]  # empty ones left out
    for records in (RECORDS, shuffled, without_empty):
        from_json = parse(cut_alike(ndjson(records)))
        assert from_json.ids == from_csv.ids and from_json.times == from_csv.times
        assert [tuple(r) for r in from_json.rows] == [tuple(r) for r in from_csv.rows]
    # the identity rule is the one rows already have: these are the ids the CSV records
    # had before JSON was read at all
    assert from_csv.ids == [
        "751ed9b381ac526437f626da26fdcff6",
        "a07c14de9c1c30fe9b7861cd6650b4bc",
        "69579861a62a94ea322f453b4b472379",
    ]


def test_a_torn_last_json_record() -> None:
    parser = RecordParser("h")
    whole = b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000"}'
    assert parser.is_whole(whole) and not parser.is_whole(whole[:-1])
    batch = parser.parse([whole, whole[:-1]], NOW, torn_last=True)
    assert batch.positions == [1] and [(r.position, r.reason) for r in batch.rejects] == [(2, TORN)]
    batch = RecordParser("h").parse([whole], NOW, torn_last=True)
    assert batch.positions == [1] and batch.rejects == []


def test_read_object() -> None:
    assert read_object('{"a": "b", "n": -0.5}') == ((("a", "n"), ["b", "-0.5"]), None)
    assert read_object("[]") == (None, "not a JSON object but an array")
    assert read_object("{}") == (((), []), None)
    assert read_object('{"a":"tab\there"}') == ((("a",), ["tab\there"]), None)  # a raw tab
    assert read_object('{"a\\u0000":"\\ud800"}') == ((("a\ufffd",), ["\ufffd"]), None)
