"""The loader's two ways in (plain COPY, upsert), its COPY formats, and the Pipeline around it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from pmta_pipe.errors import DatabaseUnavailable
from pmta_pipe.load import Loader, LoadResult, render_copy
from pmta_pipe.parse import ParsedBatch, RecordParser
from pmta_pipe.pipeline import Batch, Pipeline, Receipt
from tests.conftest import count
from tests.helpers import framed, stream

Conn = psycopg.Connection[tuple[object, ...]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
ALL = "SELECT * FROM pmta.events ORDER BY time_logged, record_id"


def parsed(data: bytes) -> ParsedBatch:
    return RecordParser("h").parse(framed(data), NOW)


def sub(batch: ParsedBatch, rows: slice) -> ParsedBatch:
    return ParsedBatch(
        source=batch.source,
        rows=batch.rows[rows],
        raw=batch.raw[rows],
        positions=batch.positions[rows],
        days=batch.days,
    )


class Recorder:
    """Bookkeeping hook: the rows inserted in each batch's transaction, as the database has them."""

    def __init__(self) -> None:
        self.inserted: list[set[str]] = []

    def __call__(
        self, conn: psycopg.Connection[Any], result: LoadResult, inserted: Sequence[Sequence[str]]
    ) -> None:
        from uuid import UUID

        keys = [str(UUID(r[1])) for r in inserted]
        rows = conn.execute(
            "SELECT record_id::text FROM pmta.events WHERE record_id = ANY(%s::uuid[])", (keys,)
        ).fetchall()
        assert len(rows) == result.inserted
        self.inserted.append({r[0] for r in rows})


def ids(batch: ParsedBatch) -> set[str]:
    from uuid import UUID

    return {str(UUID(r[1])) for r in batch.rows}


def test_fast_and_upsert_ways_give_identical_tables(dsn: str, conn: Conn) -> None:
    batch = parsed(stream(3000, days=2))
    fast = Loader(dsn)
    assert fast.load(batch).inserted == 3000
    assert fast.fast
    fast.close()
    by_fast = conn.execute(ALL).fetchall()
    conn.execute("TRUNCATE pmta.events")
    safe = Loader(dsn)
    safe.fast = False
    assert safe.load(batch).inserted == 3000
    safe.close()
    assert conn.execute(ALL).fetchall() == by_fast
    assert len(by_fast) == 3000


def test_duplicates_inside_one_batch(dsn: str, conn: Conn) -> None:
    batch = parsed(stream(500, days=1))
    twice = ParsedBatch(
        source=batch.source,
        rows=batch.rows + batch.rows[:100],
        raw=batch.raw + batch.raw[:100],
        positions=batch.positions + list(range(501, 601)),
        days=batch.days,
    )
    seen = Recorder()
    loader = Loader(dsn)
    result = loader.load(twice, bookkeeping=seen)
    assert (result.records, result.inserted, result.duplicates) == (600, 500, 100)
    assert seen.inserted == [ids(batch)]
    assert count(conn, "SELECT count(*) FROM pmta.events") == 500
    assert not loader.fast  # a batch with duplicates: upsert way from now on
    loader.close()


def test_batch_colliding_with_loaded_rows_then_back_to_fast(dsn: str, conn: Conn) -> None:
    batch = parsed(stream(3000, days=1))
    first, middle, last = sub(batch, slice(0, 1000)), sub(batch, slice(0, 2000)), batch
    seen = Recorder()
    loader = Loader(dsn)
    assert loader.load(first, bookkeeping=seen).inserted == 1000
    result = loader.load(middle, bookkeeping=seen)  # 1000 loaded already, 1000 new
    assert (result.inserted, result.duplicates) == (1000, 1000)
    assert seen.inserted[1] == ids(sub(batch, slice(1000, 2000)))
    assert not loader.fast
    newer = sub(batch, slice(2000, 3000))
    assert loader.load(newer, bookkeeping=seen).inserted == 1000  # upsert way, no duplicates
    assert loader.fast
    assert loader.load(last, bookkeeping=seen).inserted == 0  # fast way fails, upsert: none
    assert seen.inserted[3] == set()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 3000
    loader.close()


def test_values_text_format_cannot_carry_go_as_csv(dsn: str, conn: Conn) -> None:
    data = (
        b"type,timeLogged,rcpt,dsnDiag,header_X\n"
        b'd,2026-01-15 14:23:11-0700,a@x.com,"tab\there",\n'
        b'd,2026-01-15 14:23:12-0700,b@x.com,"back\\slash",\n'
        b'd,2026-01-15 14:23:13-0700,c@x.com,"two\nlines\r\n",q"uote\n'
    )
    batch = parsed(data)
    assert render_copy(batch.rows)[0] == "csv"
    assert render_copy(parsed(stream(10)).rows)[0] == "text"
    loader = Loader(dsn)
    assert loader.load(batch).inserted == 3
    loader.close()
    got = conn.execute("SELECT dsn_diag, extra FROM pmta.events ORDER BY rcpt").fetchall()
    assert got == [
        ("tab\there", None),
        ("back\\slash", None),
        ("two\nlines\r\n", {"header_X": 'q"uote'}),
    ]


class Tagged(Receipt):
    """A receipt that notes its tag and result when its batch is committed."""

    def __init__(self, tag: int, done: list[tuple[object, int]]) -> None:
        self.tag, self.done = tag, done

    def committed(self, result: LoadResult) -> None:
        self.done.append((self.tag, result.inserted))


def test_pipeline_loads_every_batch_in_order(dsn: str, conn: Conn) -> None:
    records = framed(stream(2500, days=2))
    header, body = records[0], records[1:]
    done: list[tuple[object, int]] = []
    pipeline = Pipeline(Loader(dsn), "h")
    parser = RecordParser("h")
    parser.parse([header], NOW)
    for i in range(5):
        part = body[i * 500 : (i + 1) * 500]
        pipeline.submit(Batch(part, NOW, Tagged(i, done)), parser)
    total = pipeline.close().result
    assert done == [(i, 500) for i in range(5)]
    assert (total.records, total.inserted) == (2500, 2500)
    assert count(conn, "SELECT count(*) FROM pmta.events") == 2500
    assert count(conn, "SELECT sum(records) FROM pmta.ingest_batches") == 2500


def test_pipeline_hands_on_the_loading_error() -> None:
    pipeline = Pipeline(Loader("postgresql://nobody@127.0.0.1:1/none", retry_for=0), "h")
    pipeline.submit(Batch(framed(stream(10)), NOW, Receipt()), RecordParser("h"))
    with pytest.raises(DatabaseUnavailable):
        pipeline.close()


def _round_trips(trace: str) -> list[str]:
    """The client's messages in a libpq trace that wait for the server's answer: the
    message, and a query's first word."""
    trips = []
    for line in trace.splitlines():
        parts = line.split("\t")
        if parts[0] != "F" or parts[2].strip() not in ("Query", "Sync", "CopyDone"):
            continue
        word = parts[3].strip().strip('"').split()[0] if parts[2] == "Query" else ""
        trips.append(f"{parts[2]} {word}".strip())
    return trips


def test_a_batch_of_new_records_takes_five_round_trips(dsn: str, conn: Conn, tmp_path: Any) -> None:
    """BEGIN, COPY, its end, one pipeline for the bookkeeping, COMMIT: no savepoint."""
    batch = parsed(stream(2000, days=1))
    loader = Loader(dsn)
    seen = Recorder()
    assert loader.load(sub(batch, slice(0, 1000))).inserted == 1000  # partitions made
    path = tmp_path / "trace"
    with path.open("w") as out:
        pgconn = loader.connection().pgconn
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        result = loader.load(sub(batch, slice(1000, 2000)), bookkeeping=seen)
        pgconn.untrace()
    assert result.inserted == 1000
    assert _round_trips(path.read_text()) == [
        "Query BEGIN", "Query COPY", "CopyDone", "Sync", "Query COMMIT"
    ]  # fmt: skip
    assert seen.inserted == [ids(sub(batch, slice(1000, 2000)))]
    loader.close()
