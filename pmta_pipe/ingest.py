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
* The main thread runs ``feed.Feed``, the loading side ``serve`` shares: it finds
  the database (starting the embedded one if that is the target), hands orphaned
  segments left by dead processes to the same pipeline (at start and every
  ``feed.RECOVER_SECONDS``: ``replay.submit_orphans``), then parses the queue
  (``feed.PendingQueue``) in order and hands each parsed batch to the loader thread
  (``pipeline.Pipeline``, at most ``feed.LOAD_DEPTH`` batches ahead; migrations are
  applied on its first connection), so that parsing the next batch overlaps loading
  the previous one (psycopg releases the GIL while PostgreSQL works). Each committed
  batch is acknowledged to the spool from the loader thread, right after its commit;
  the spool deletes a segment once all its batches are committed. The loader retries
  transient errors forever (exponential backoff with jitter, capped; logged once when
  the database goes away and once when it is back), so a database outage only makes
  the spool grow.
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

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError
from pmta_pipe.feed import Feed, Lane, Pending, PendingQueue  # noqa: F401 (Pending: re-exported)
from pmta_pipe.load import LoadResult
from pmta_pipe.reader import RawBatch, StreamReader
from pmta_pipe.spool import BatchRef, SpooledBatch, SpoolWriter

log = logging.getLogger(__name__)

MAX_MEMORY_BATCHES = 2  # beyond this, batches wait on disk only (bounded memory)
MAX_MEMORY_BYTES = 32 << 20
FULL_LOG_SECONDS = 60.0  # the "spool full" ERROR, at most this often
FULL_POLL_SECONDS = 0.2  # how often a held batch tries again for room


@dataclass
class IngestResult:
    """What one ``ingest`` run did: read = inserted + duplicates + rejected (+ left in spool)."""

    totals: LoadResult
    seconds: float
    recovered_segments: int = 0
    left_batches: int = 0
    left_records: int = 0  # journaled, not loaded: the next ingest or replay loads them
    error: PmtaPipeError | None = None  # why records were left (exit 75)


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
        lane: Lane | SpoolWriter,
        pending: PendingQueue,
        at_end: Callable[[], None],
    ) -> None:
        lane = lane if isinstance(lane, Lane) else Lane.of(lane)
        self.lane = lane
        self.spool = lane.spool
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
                    self.pending.push(self.lane, dummy, raw.nbytes, durable=False)
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
            self.pending.push(self.lane, batch, raw.nbytes)
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


def run_ingest(settings: Settings, fd: int = 0) -> IngestResult:
    """Read accounting CSV from ``fd`` until end of input; journal and load every record."""
    started = time.monotonic()
    source = settings.source_name
    spool = SpoolWriter(settings.spool_path, source, max_bytes=settings.spool_max_bytes)
    lane = Lane.of(spool)
    pending = PendingQueue(MAX_MEMORY_BATCHES, MAX_MEMORY_BYTES)
    feed = Feed(settings, pending, source, spool, f"as source {source!r}")
    journal = Journal(lane, pending, feed.drain)
    reader = StreamReader(
        fd, journal, batch_rows=settings.batch_rows, batch_seconds=settings.batch_seconds
    )
    journal.stopping = lambda: reader.stopping
    _install_signals(reader.request_stop)
    reader.start()  # from here on, stdin is drained whatever the database does
    try:
        feed.run()
    finally:
        reader.request_stop()
        feed.stop()  # the run is ending: the drain watch stops, retries end
        reader.join()
        left_batches = spool.close()
        left_records = spool.left_records
    if reader.error is not None:
        raise reader.error
    result = IngestResult(
        feed.totals, time.monotonic() - started, feed.recovery.segments, left_batches,
        left_records,
    )  # fmt: skip
    result.error = feed.ending(
        left_batches, left_records, spool.folder,
        "the next 'pmta-pipe ingest' or by 'pmta-pipe replay'",
    )  # fmt: skip
    return result
