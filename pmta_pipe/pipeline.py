"""The one pipeline every command loads through: parse, load, acknowledge.

``ingest`` (the pipe), ``import`` (files), ``replay`` (the spool) and ``rejects
retry`` all hand their input to a ``Pipeline`` as ``Batch``-es: whole records, the
time they were received, and a ``Receipt`` that says where the batch came from and
what to do once it is committed. The pipeline::

    caller's thread:  Batch --parse (RecordParser, the input's own)--> rows + rejects
                      --> bounded queue
    loader thread:    Loader.load: one transaction with the events, rejects, the
                      pmta.ingest_batches row (and the hours the report rollups must
                      count again), receipt.in_transaction (the import ledger)
                      --COMMIT--> receipt.committed (the spool deletes what is loaded)

Parsing the next batch overlaps loading the previous one (psycopg releases the GIL
while PostgreSQL works). Receipts are acknowledged in submission order, in the
loader thread, right after their commit. The queue holds ``depth`` parsed batches,
so memory stays bounded and a slow database slows the caller (back-pressure: the
pipe's reader thread is never held by it, see ``ingest``).

The first error of the loader thread (``DatabaseUnavailable``, ``SetupFault``)
stops it; ``submit``, ``flush`` and ``close`` raise it; batches not committed are
never acknowledged, so they stay where they came from (spool, file).

Every committed batch writes one row to ``pmta.ingest_batches`` (route, source,
records = inserted + duplicates + rejected, the rejects PostgreSQL refused, the
first and last ``time_logged``, the spool segment and offset or the imported file),
in the batch's own transaction: the table is an exact account of what was loaded.
A batch that inserted rows also calls ``pmta.note_inserted(first, last)`` there,
which logs the hours of that range below the rollups' invalidation threshold
(``materialize``); a batch of duplicates only logs nothing.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.parse import ParsedBatch, RecordParser
from pmta_pipe.spool import SpooledBatch

log = logging.getLogger(__name__)

_BATCH_ROW = """
    INSERT INTO pmta.ingest_batches (
        route, source, records, inserted, duplicates, rejected, rejected_by_database,
        first_time_logged, last_time_logged, received_at, spool_segment, spool_offset,
        batch_records, import_path)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (spool_segment, spool_offset) DO NOTHING
"""
# ON CONFLICT: a spooled batch committed once already (a replay after a crash that
# came between the commit and the spool's acknowledgement) is not counted twice.


class Receipt:
    """Where a batch came from, and what to do once it is committed (subclassed per route).

    ``in_transaction`` runs inside the batch's transaction (before COMMIT);
    ``committed`` right after it, in the loader thread, in submission order;
    ``already_committed`` lets a route skip a batch the database holds already.
    """

    route = "pipe"
    spool_segment: str | None = None
    spool_offset: int | None = None
    import_path: str | None = None

    def in_transaction(self, conn: psycopg.Connection[Any], result: LoadResult) -> None:
        """Bookkeeping that must commit with the batch (the import ledger)."""

    def committed(self, result: LoadResult) -> None:
        """The batch is in the database (or had nothing to load)."""

    def already_committed(self, loader: Loader) -> bool:
        """True when this batch was committed before (it is then acknowledged, not loaded)."""
        return False


@dataclass
class Batch:
    """Whole records of one input, when they were received, and their receipt."""

    records: Sequence[bytes]
    received_at: datetime
    receipt: Receipt
    first_position: int | None = None  # None: go on from the parser's last position
    torn_last: bool = False  # the input ended inside the last record (``parse`` decides)

    @classmethod
    def from_spool(cls, spooled: SpooledBatch, receipt: Receipt) -> Batch:
        """A batch as the spool journaled it: its time, first position and torn flag."""
        return cls(
            spooled.records, spooled.received_at, receipt, spooled.first_position,
            spooled.torn_last,
        )  # fmt: skip


@dataclass
class Totals:
    """What a pipeline loaded: read = inserted + duplicates + rejected."""

    result: LoadResult = field(default_factory=LoadResult)
    batches: int = 0
    skipped_batches: int = 0  # committed before (replay of a partly loaded segment)


@dataclass
class _Item:
    batch: Batch
    parsed: ParsedBatch
    header_line: str | None


_STOP = object()
_FLUSH_POLL = 0.2


def tune_gc() -> None:
    """For a process that loads: a batch makes thousands of row tuples, none of them in a
    reference cycle, so the cycle collector's default (a pass every 700 allocations) only
    rescans them; a first threshold of 50,000 saves about a sixth of the parser's CPU
    (``bench/candidates/RESULTS.md``, ``docs/performance.md``) and changes nothing loaded."""
    gc.freeze()  # what start-up made (modules, classes) is not scanned again
    gc.set_threshold(50_000, 20, 20)


def _time_range(times: Sequence[str]) -> tuple[datetime | None, datetime | None]:
    """Earliest and latest of ``times`` (time_logged: canonical ISO texts with offsets)."""
    if not times:
        return None, None
    moments = [datetime.fromisoformat(t) for t in set(times)]
    return min(moments), max(moments)


def record_batch(
    conn: psycopg.Connection[Any],
    receipt: Receipt,
    source: str,
    result: LoadResult,
    times: Sequence[str],
    received_at: datetime,
) -> None:
    """Write the batch's ``pmta.ingest_batches`` row (call inside its transaction), and,
    when it inserted rows, log the hours of its time range the rollups must count again."""
    first, last = _time_range(times)
    conn.execute(
        _BATCH_ROW,
        (
            receipt.route, source, result.records, result.inserted, result.duplicates,
            result.rejected, result.rejected_by_database, first, last, received_at,
            receipt.spool_segment, receipt.spool_offset, result.records, receipt.import_path,
        ),
    )  # fmt: skip
    if result.inserted:
        conn.execute("SELECT pmta.note_inserted(%s, %s)", (first, last))


class Pipeline:
    """Parses batches in the caller's thread and loads them in a thread of its own."""

    def __init__(
        self, loader: Loader, source: str, *, depth: int = 1, connect_first: bool = False
    ) -> None:
        self.loader = loader
        self.connect_first = connect_first  # connect (and migrate) before any batch comes
        self.source = source
        self.totals = Totals()
        self.progressed_at = time.monotonic()  # when a batch was last committed
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="pmta-pipe-loader", daemon=True)
        self._thread.start()

    # -- the caller's side --------------------------------------------------
    def submit(self, batch: Batch, parser: RecordParser) -> ParsedBatch:
        """Parse ``batch`` with ``parser`` (which follows the input's header lines) and
        queue it; blocks while ``depth`` batches wait already."""
        parsed = parser.parse(
            batch.records, batch.received_at, batch.first_position, torn_last=batch.torn_last
        )
        self._put(_Item(batch, parsed, parser.header_line))
        return parsed

    def _put(self, item: object) -> None:
        with self._idle:
            self._pending += 1
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=_FLUSH_POLL)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        """Wait until every batch submitted so far is committed (or raise the loader's error)."""
        with self._idle:
            while self._pending and self.error is None and self._thread.is_alive():
                self._idle.wait(_FLUSH_POLL)
        self._raise_error()

    def close(self) -> Totals:
        """Load what was submitted, stop the thread; return the totals (or raise its error)."""
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=_FLUSH_POLL)
                break
            except queue.Full:
                continue
        self._thread.join()
        self.loader.close()
        self._raise_error()
        return self.totals

    def abandon(self) -> None:
        """Stop without waiting for the database (after an error or an interrupt)."""
        self.error = self.error or _Abandoned()
        self._thread.join(timeout=5)
        self.loader.close()

    def _raise_error(self) -> None:
        if self.error is not None and not isinstance(self.error, _Abandoned):
            raise self.error

    # -- the loader thread ---------------------------------------------------
    def _run(self) -> None:
        if self.connect_first:
            try:
                self.loader.run(self.loader.connection)
            except BaseException as exc:  # handed to the submitting thread
                self.error = exc
                return
        while True:
            try:
                item = self._queue.get(timeout=_FLUSH_POLL)
            except queue.Empty:
                if self.error is not None:
                    return
                continue
            if item is _STOP or self.error is not None:
                return
            try:
                self._load(item)
            except BaseException as exc:  # handed to the submitting thread
                self.error = exc
                with self._idle:
                    self._idle.notify_all()
                return
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _load(self, item: _Item) -> None:
        batch, parsed = item.batch, item.parsed
        receipt = batch.receipt
        if not parsed.records:  # header lines only: nothing to load
            receipt.committed(LoadResult())
            return
        if receipt.already_committed(self.loader):
            self.totals.skipped_batches += 1
            receipt.committed(LoadResult())
            return

        def bookkeeping(
            conn: psycopg.Connection[Any], result: LoadResult, inserted: Sequence[tuple[str, str]]
        ) -> None:
            source = parsed.source or self.source
            record_batch(conn, receipt, source, result, parsed.times, batch.received_at)
            receipt.in_transaction(conn, result)

        result = self.loader.load(
            parsed, item.header_line, received_at=batch.received_at, bookkeeping=bookkeeping,
        )  # fmt: skip
        self.totals.result.add(result)
        self.totals.batches += 1
        self.progressed_at = time.monotonic()
        log.debug(
            "batch: %d records = %d inserted + %d duplicates + %d rejected",
            result.records, result.inserted, result.duplicates, result.rejected,
        )  # fmt: skip
        receipt.committed(result)


class _Abandoned(Exception):
    """The pipeline was stopped by its owner."""
