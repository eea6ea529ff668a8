"""``pmta-pipe ingest``: PowerMTA's accounting pipe (stdin) into PostgreSQL, journal first.

Threads and hand-offs::

    stdin --reader thread--> spool (append + fsync) --> pending queue
                                                          |
    PostgreSQL <-- loader thread <-- parse (main thread) -+ (reads back batches kept on disk only)

* The reader thread (``reader.StreamReader`` with ``Journal`` as its sink) cuts
  records, journals each batch durably in the spool (``spool.SpoolWriter``) and queues
  it. It never waits for the loader or the database: the queue holds at most
  ``MAX_MEMORY_BATCHES`` batches (``MAX_MEMORY_BYTES``) in memory, and beyond that
  only their place in the spool ("on disk only"); the main thread reads those back.
* The main thread finds the database (starting the embedded one if that is the
  target), hands orphaned segments left by dead processes to the same pipeline (at
  start and every ``RECOVER_SECONDS``: ``replay.submit_orphans``), then parses the
  queue in order and hands each parsed batch to the loader thread
  (``pipeline.Pipeline``, at most ``LOAD_DEPTH`` batches ahead; migrations are applied
  on its first connection),
  so that parsing the next batch overlaps loading the previous one (psycopg releases
  the GIL while PostgreSQL works). Each committed batch is acknowledged to the spool
  from the loader thread, right after its commit; the spool deletes a segment once
  all its batches are committed. The loader retries transient errors forever
  (exponential backoff with jitter, capped; logged once when the database goes away
  and once when it is back), so a database outage only makes the spool grow.
* A fault of the setup (a missing GRANT, a dropped schema, a read-only database:
  ``faults``) is never a reject: the loader holds the batch and retries, logging an
  ERROR with the SQLSTATE and a hint when it starts and every few minutes, and the
  spool shows it to ``status`` (``fault-<pid>.json``) while it lasts; a schema that
  disappeared is migrated again before the next try. Reading and journaling go on.
* Spool full (``--spool-max-bytes``, every process's segments counted): the reader
  stops reading stdin, so PowerMTA blocks (and after its write-timeout drops the
  pipe and keeps the records in its accounting file, if one is configured); an ERROR
  with the counts is logged when it starts and at most once every ``FULL_LOG_SECONDS``
  while it lasts or recurs. Room is checked for the batch about to be written, so
  while reading this process never takes the spool past its limit (``Journal``).
  Nothing is ever dropped by pmta-pipe.
* End of input, SIGTERM, SIGINT and SIGHUP all end the same way: stop reading, load
  what was read, exit 0. If the database is unreachable (or a setup fault lasts)
  then, wait up to ``--drain-timeout`` seconds for it, then exit 75 (EX_TEMPFAIL)
  with the rest durably in the spool for the next ``ingest`` or ``pmta-pipe replay``.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from pmta_pipe import db, materialize
from pmta_pipe.config import Settings
from pmta_pipe.errors import DatabaseUnavailable, PmtaPipeError, SetupFault, SpooledForLater
from pmta_pipe.load import FaultNotice, Loader, LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.pipeline import Batch, Pipeline, Receipt
from pmta_pipe.reader import RawBatch, StreamReader
from pmta_pipe.replay import Recovery, submit_orphans
from pmta_pipe.spool import BatchRef, SpooledBatch, SpoolWriter

log = logging.getLogger(__name__)

MAX_MEMORY_BATCHES = 2  # beyond this, batches wait on disk only (bounded memory)
MAX_MEMORY_BYTES = 32 << 20
LOAD_DEPTH = 1  # parsed batches waiting for the loader thread
RECOVER_SECONDS = 60.0
FULL_LOG_SECONDS = 60.0  # the "spool full" ERROR, at most this often
FULL_POLL_SECONDS = 0.2  # how often a held batch tries again for room
RETRY_WAIT_MAX = 10.0  # longest pause between two attempts to reach the database


@dataclass
class IngestResult:
    """What one ``ingest`` run did: read = inserted + duplicates + rejected (+ left in spool)."""

    totals: LoadResult
    seconds: float
    recovered_segments: int = 0
    left_batches: int = 0
    left_records: int = 0  # journaled, not loaded: the next ingest or replay loads them
    error: PmtaPipeError | None = None  # why records were left (exit 75)


@dataclass
class _SpoolReceipt(Receipt):
    """A batch this process journaled: acknowledged to its spool once committed."""

    spool: SpoolWriter
    ref: BatchRef | None  # None: the spool could not be written (memory only)

    def __post_init__(self) -> None:
        if self.ref is not None:
            self.spool_segment, self.spool_offset = self.ref.segment, self.ref.offset

    def committed(self, result: LoadResult) -> None:
        if self.ref is not None:
            self.spool.committed(self.ref)


@dataclass
class Pending:
    """A queued batch: its place in the spool, and its records unless kept on disk only."""

    ref: BatchRef | None  # None: the spool could not be written (kept in memory only)
    batch: SpooledBatch | None
    nbytes: int


class PendingQueue:
    """Unbounded in count, bounded in memory: ``push`` never blocks."""

    def __init__(self, max_batches: int, max_bytes: int) -> None:
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._items: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_memory = 0
        self._memory_bytes = 0
        self._spilling = False
        self.spilled = 0

    def push(self, batch: SpooledBatch, nbytes: int, *, durable: bool = True) -> None:
        with self._cond:
            room = (
                self._in_memory < self.max_batches and self._memory_bytes + nbytes <= self.max_bytes
            )
            if room or not durable:
                self._items.append(Pending(batch.ref if durable else None, batch, nbytes))
                self._in_memory += 1
                self._memory_bytes += nbytes
                if self._spilling and room:
                    self._spilling = False
                    log.info("loader caught up: batches are queued in memory again")
            else:
                self._items.append(Pending(batch.ref, None, 0))
                self.spilled += 1
                if not self._spilling:
                    self._spilling = True
                    log.warning(
                        "loader behind by %d batches: new batches are kept on disk only",
                        len(self._items),
                    )
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self, timeout: float) -> Pending | bool | None:
        """The next batch; ``None`` at the end; ``False`` when ``timeout`` passed first."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                if item.batch is not None:
                    self._in_memory -= 1
                    self._memory_bytes -= item.nbytes
                return item
            return None if self._closed else False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Journal:
    """The reader's sink: journal each batch, queue it, and hold reading while the spool is full.

    Room is checked for the batch about to be written (``SpoolWriter.try_append``), so
    while reading, this process never takes the spool past ``--spool-max-bytes``; once
    a stop is requested, a batch already read is journaled whatever the limit. The
    "spool full" ERROR is logged at most once every ``FULL_LOG_SECONDS`` however often
    the spool fills up again (a spool hovering at its limit holds reading for each
    batch), and "reading resumed" only after a hold that logged it.
    """

    def __init__(
        self,
        spool: SpoolWriter,
        pending: PendingQueue,
        at_end: Callable[[], None],
    ) -> None:
        self.spool = spool
        self.pending = pending
        self.at_end = at_end
        self.stopping: Callable[[], bool] = lambda: False
        self.full_seconds = 0.0  # reading held for room, in all
        self.holds = 0  # times reading was held for room
        self._full_logged_at: float | None = None
        self._quiet_holds = 0  # holds since the last "spool full" ERROR, and their seconds
        self._quiet_seconds = 0.0

    def __call__(self, raw: RawBatch | None) -> None:
        if raw is None:
            self.pending.close()
            self.at_end()
            return
        self._append(raw)

    def _append(self, raw: RawBatch) -> SpooledBatch | None:
        failing_since: float | None = None
        held_since: float | None = None
        logged = False  # this hold logged the ERROR
        while True:
            stopping = self.stopping()
            try:
                if stopping:  # what was read is journaled, past the limit if need be
                    batch: SpooledBatch | None = self.spool.append(
                        raw.records, raw.received_at, raw.torn_last
                    )
                else:
                    batch = self.spool.try_append(raw.records, raw.received_at, raw.torn_last)
            except OSError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error("cannot write the spool in %s (%s): reading stdin is held until"
                              " it can be written", self.spool.folder, exc)  # fmt: skip
                if stopping:
                    # stopping and the disk refuses: load from memory, as without a spool
                    log.error("stopping with %d records not journaled", len(raw.records))
                    dummy = SpooledBatch(
                        BatchRef("", -1), raw.records, raw.received_at, 0, raw.torn_last
                    )
                    self.pending.push(dummy, raw.nbytes, durable=False)
                    return None
                time.sleep(1.0)
                continue
            if failing_since is not None:
                log.warning("spool writable again after %.0f s", time.monotonic() - failing_since)
                failing_since = None
            if batch is None:  # no room for this batch: hold reading
                now = time.monotonic()
                if held_since is None:
                    held_since = now
                    self.holds += 1
                if self._full_logged_at is None or now - self._full_logged_at >= FULL_LOG_SECONDS:
                    self._report_full(now - held_since)
                    self._full_logged_at = now
                    logged = True
                time.sleep(FULL_POLL_SECONDS)
                continue
            if held_since is not None:
                held = time.monotonic() - held_since
                self.full_seconds += held
                if logged:
                    log.warning("spool has room again: reading resumed after %.1f s", held)
                else:
                    self._quiet_holds += 1
                    self._quiet_seconds += held
            self.pending.push(batch, raw.nbytes)
            return batch

    def _report_full(self, held: float) -> None:
        segments, batches = self.spool.backlog()
        again = (
            f"; since the last report reading was also held {self._quiet_holds} times"
            f" ({self._quiet_seconds:.1f} s in all)"
            if self._quiet_holds
            else ""
        )
        log.error(
            "spool full: %d bytes in %s (limit %d); %d batches in %d segments wait for"
            " the database; not reading stdin, so PowerMTA is blocked (held %.0f s)%s",
            self.spool.folder_bytes(), self.spool.folder, self.spool.max_bytes,
            batches, segments, held, again,
        )  # fmt: skip
        self._quiet_holds, self._quiet_seconds = 0, 0.0


def _install_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing what was read", signal.Signals(signum).name)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def _fault_note(notice: FaultNotice | None) -> dict[str, str | None] | None:
    if notice is None:
        return None
    return {
        "sqlstate": notice.sqlstate,
        "message": notice.message,
        "hint": notice.hint,
        "since": notice.since.isoformat(),
    }


def run_ingest(settings: Settings, fd: int = 0) -> IngestResult:
    """Read accounting CSV from ``fd`` until end of input; journal and load every record."""
    started = time.monotonic()
    source = settings.source_name
    spool = SpoolWriter(settings.spool_path, source, max_bytes=settings.spool_max_bytes)
    interrupt = threading.Event()  # set: stop waiting for the database
    loaders: list[Loader] = []
    pipelines: list[Pipeline] = []

    def drain_watch(ended_at: float) -> None:
        """After end of input: give up once nothing was committed for --drain-timeout
        seconds (the database away, a setup fault, a statement blocked: cancel it). A
        healthy database loading a backlog keeps committing, and is never cut off."""
        while not interrupt.wait(0.2):
            last = max([ended_at, *(p.progressed_at for p in pipelines)])
            if time.monotonic() - last >= settings.drain_timeout:
                interrupt.set()
                for each in loaders:
                    each.cancel()

    def at_end() -> None:
        watch = threading.Thread(
            target=drain_watch, args=(time.monotonic(),), name="pmta-pipe-drain", daemon=True
        )
        watch.start()

    pending = PendingQueue(MAX_MEMORY_BATCHES, MAX_MEMORY_BYTES)
    journal = Journal(spool, pending, at_end)
    reader = StreamReader(
        fd, journal, batch_rows=settings.batch_rows, batch_seconds=settings.batch_seconds
    )
    journal.stopping = lambda: reader.stopping
    _install_signals(reader.request_stop)
    reader.start()  # from here on, stdin is drained whatever the database does

    parser = RecordParser(source)
    recovery = Recovery()
    pipeline: Pipeline | None = None
    rollups: materialize.Background | None = None
    error: PmtaPipeError | None = None
    totals = LoadResult()
    try:
        target = db.resolve_target(settings)
        log.info("loading into %s as source %r; spool %s", target.description, source,
                 spool.folder)  # fmt: skip
        loader = Loader(
            target.conninfo, migrate=True, interrupt=interrupt, max_wait=RETRY_WAIT_MAX,
            hold_setup_faults=True, on_fault=lambda n: spool.report_fault(_fault_note(n)),
        )  # fmt: skip
        loaders.append(loader)
        # connect first: the schema is made (migrated) even for a stream of header lines
        pipeline = Pipeline(loader, source, depth=LOAD_DEPTH, connect_first=True)
        pipelines.append(pipeline)
        # the report rollups, materialized in a thread of their own (never in the load's way)
        rollups = materialize.Background(
            target.conninfo, interval=settings.rollup_interval, grace=settings.rollup_grace
        ).start()
        submit_orphans(spool.folder, pipeline, source, recovery)
        next_scan = time.monotonic() + RECOVER_SECONDS
        while True:
            item = pending.get(max(0.05, next_scan - time.monotonic()))
            if item is None:
                break
            if isinstance(item, Pending):
                batch = item.batch
                if batch is None:
                    assert item.ref is not None  # only durable batches are kept on disk only
                    batch = spool.read_batch(item.ref)
                receipt = _SpoolReceipt(spool, item.ref)
                pipeline.submit(Batch.from_spool(batch, receipt), parser)
            if time.monotonic() >= next_scan:
                submit_orphans(spool.folder, pipeline, source, recovery)
                next_scan = time.monotonic() + RECOVER_SECONDS
        totals = pipeline.close().result
        pipeline = None
    except (DatabaseUnavailable, SetupFault) as exc:
        error = exc
    finally:
        reader.request_stop()
        interrupt.set()  # the run is ending: the drain watch stops, retries end
        if rollups is not None:  # no last step: the end of input must end the process soon
            rollups.stop()
        if pipeline is not None:
            totals = pipeline.totals.result
            pipeline.abandon()
        recovery.release()
        reader.join()
        left_batches = spool.close()
        left_records = spool.left_records
    if reader.error is not None:
        raise reader.error
    if recovery.segments:
        log.warning("recovered %d spool segments left by earlier runs (%d batches)",
                    recovery.segments, recovery.batches)  # fmt: skip
    result = IngestResult(
        totals, time.monotonic() - started, recovery.segments, left_batches, left_records
    )
    if error is not None or left_batches:
        why = error.message if error is not None else "the database did not take them in time"
        result.error = SpooledForLater(
            f"{left_records} records ({left_batches} batches) left in the spool {spool.folder}"
            f" after {settings.drain_timeout:g} s: {why}",
            "they are loaded by the next 'pmta-pipe ingest' or by 'pmta-pipe replay'"
            + (f"; {error.hint}" if error is not None and error.hint else ""),
        )
    return result
