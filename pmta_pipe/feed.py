"""Loading what a process journaled: the queue from the spool to the pipeline, and its loop.

``ingest`` (the pipe) and ``serve`` (the HTTP webhook) both journal what they receive
in the spool first, and load it on the other side of a queue; this module is that
other side, shared so that both load the same way::

    journaling thread --push--> PendingQueue --get--> Feed.run (its own thread, or the
                                                        main thread for ingest)
                                                          | parse (the lane's parser)
                                                          v
                                                     pipeline.Pipeline --> Loader

* A ``Lane`` is one source's journal: its ``spool.SpoolWriter`` (segments whose meta
  hold that source and its header line) and its ``parse.RecordParser`` (that source's
  header mapping). ``ingest`` has one; ``serve`` one per source that posts.
* ``PendingQueue`` is unbounded in count and bounded in memory: ``push`` never blocks
  (the journaling side never waits for the database); beyond ``max_batches`` or
  ``max_bytes`` only a batch's place in the spool is queued and ``Feed`` reads it
  back (``SpoolWriter.read_batch``).
* ``Feed.run`` finds the database (starting the embedded one if that is the target),
  hands orphaned segments of dead processes to the same pipeline (at start and every
  ``RECOVER_SECONDS``: ``replay.submit_orphans``), starts the rollups' background
  materializer, then parses the queue in order and hands each batch to the loader
  thread (``pipeline.Pipeline``, ``LOAD_DEPTH`` batches ahead). Each committed batch is
  acknowledged to its lane's spool (``SpoolReceipt``) right after its commit. The
  loader retries transient errors forever and holds setup faults (shown to ``status``
  through the spool's fault note), so a database outage only makes the spool grow.
* The end: once the journaling side closes the queue (end of input, a signal), what
  is queued is loaded; ``drain`` starts the watch that gives up once nothing was
  committed for ``--drain-timeout`` seconds (cancelling a blocked statement); what is
  left stays in the spool for the next start or ``pmta-pipe replay``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pmta_pipe import db, materialize
from pmta_pipe.config import Settings
from pmta_pipe.errors import DatabaseUnavailable, PmtaPipeError, SetupFault, SpooledForLater
from pmta_pipe.load import FaultNotice, Loader, LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.pipeline import Batch, Pipeline, Receipt
from pmta_pipe.replay import Recovery, submit_orphans
from pmta_pipe.spool import BatchRef, SpooledBatch, SpoolWriter

log = logging.getLogger(__name__)

LOAD_DEPTH = 1  # parsed batches waiting for the loader thread
RECOVER_SECONDS = 60.0
RETRY_WAIT_MAX = 10.0  # longest pause between two attempts to reach the database


@dataclass
class Lane:
    """One source's journal and header mapping: its spool writer and its parser."""

    spool: SpoolWriter
    parser: RecordParser
    #: called in the loader thread after each of this lane's batches is committed
    on_committed: Callable[[SpooledBatch | None, LoadResult], None] | None = None
    #: ``pmta.ingest_batches.route`` of its batches: pipe (ingest) or webhook (serve)
    route: str = "pipe"

    @classmethod
    def of(cls, spool: SpoolWriter) -> Lane:
        return cls(spool, RecordParser(spool.source))


@dataclass
class SpoolReceipt(Receipt):
    """A batch this process journaled: acknowledged to its spool once committed."""

    lane: Lane
    ref: BatchRef | None  # None: the spool could not be written (memory only)
    batch: SpooledBatch | None = None

    def __post_init__(self) -> None:
        self.route = self.lane.route
        if self.ref is not None:
            self.spool_segment, self.spool_offset = self.ref.segment, self.ref.offset

    def committed(self, result: LoadResult) -> None:
        if self.ref is not None:
            self.lane.spool.committed(self.ref)
        if self.lane.on_committed is not None:
            self.lane.on_committed(self.batch, result)


@dataclass
class Pending:
    """A queued batch: its lane, its place in the spool, its records unless on disk only."""

    lane: Lane
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

    def push(self, lane: Lane, batch: SpooledBatch, nbytes: int, *, durable: bool = True) -> None:
        with self._cond:
            room = (
                self._in_memory < self.max_batches and self._memory_bytes + nbytes <= self.max_bytes
            )
            if room or not durable:
                self._items.append(Pending(lane, batch.ref if durable else None, batch, nbytes))
                self._in_memory += 1
                self._memory_bytes += nbytes
                if self._spilling and room:
                    self._spilling = False
                    log.info("loader caught up: batches are queued in memory again")
            else:
                self._items.append(Pending(lane, batch.ref, None, 0))
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


def fault_note(notice: FaultNotice | None) -> dict[str, str | None] | None:
    """A loader's setup-fault notice as the spool's fault note shows it to ``status``."""
    if notice is None:
        return None
    return {
        "sqlstate": notice.sqlstate,
        "message": notice.message,
        "hint": notice.hint,
        "since": notice.since.isoformat(),
    }


@dataclass
class Feed:
    """The loading side of a journaling process (see the module docstring).

    ``run`` loads until the queue is closed and empty (or the drain gives up);
    ``stop`` ends what ``run`` started (call it in a ``finally``); ``totals``,
    ``recovery`` and ``error`` say what happened.
    """

    settings: Settings
    pending: PendingQueue
    fallback_source: str  # for an orphaned segment without a readable meta frame
    fault_spool: SpoolWriter  # whose fault note shows a setup fault to ``status``
    label: str  # for the first log line: "as source 'x'"
    interrupt: threading.Event = field(default_factory=threading.Event)
    totals: LoadResult = field(default_factory=LoadResult)
    recovery: Recovery = field(default_factory=Recovery)
    error: PmtaPipeError | None = None
    target_description: str | None = None
    _loaders: list[Loader] = field(default_factory=list)
    _pipelines: list[Pipeline] = field(default_factory=list)
    _pipeline: Pipeline | None = None
    _rollups: materialize.Background | None = None

    @property
    def progressed_at(self) -> float | None:
        """When a batch was last committed (``time.monotonic``), if the pipeline runs."""
        return max((p.progressed_at for p in self._pipelines), default=None)

    def drain(self) -> None:
        """The input ended: from now on, give up once nothing was committed for
        ``--drain-timeout`` seconds (the database away, a setup fault, a statement
        blocked: cancelled). A healthy database loading a backlog keeps committing,
        and is never cut off."""
        ended_at = time.monotonic()

        def watch() -> None:
            while not self.interrupt.wait(0.2):
                last = max([ended_at, *(p.progressed_at for p in self._pipelines)])
                if time.monotonic() - last >= self.settings.drain_timeout:
                    self.interrupt.set()
                    for each in self._loaders:
                        each.cancel()

        threading.Thread(target=watch, name="pmta-pipe-drain", daemon=True).start()

    def run(self) -> None:
        """Load the queue until it is closed and empty; a database that stays away past
        the drain, or a setup fault, ends it with ``error`` set."""
        settings = self.settings
        try:
            target = db.resolve_target(settings)
            self.target_description = target.description
            log.info("loading into %s %s; spool %s", target.description, self.label,
                     self.fault_spool.folder)  # fmt: skip
            spool = self.fault_spool
            loader = Loader(
                target.conninfo, migrate=True, interrupt=self.interrupt,
                max_wait=RETRY_WAIT_MAX, hold_setup_faults=True,
                on_fault=lambda n: spool.report_fault(fault_note(n)),
            )  # fmt: skip
            self._loaders.append(loader)
            # connect first: the schema is made (migrated) even for a stream of header lines
            pipeline = Pipeline(loader, self.fallback_source, depth=LOAD_DEPTH, connect_first=True)
            self._pipeline = pipeline
            self._pipelines.append(pipeline)
            # the report rollups, materialized in a thread of their own (never in the load's way)
            self._rollups = materialize.Background(
                target.conninfo, interval=settings.rollup_interval, grace=settings.rollup_grace
            ).start()
            folder = self.fault_spool.folder
            submit_orphans(folder, pipeline, self.fallback_source, self.recovery)
            next_scan = time.monotonic() + RECOVER_SECONDS
            while True:
                item = self.pending.get(max(0.05, next_scan - time.monotonic()))
                if item is None:
                    break
                if isinstance(item, Pending):
                    batch = item.batch
                    if batch is None:
                        assert item.ref is not None  # only durable batches are on disk only
                        batch = item.lane.spool.read_batch(item.ref)
                    receipt = SpoolReceipt(item.lane, item.ref, batch)
                    pipeline.submit(Batch.from_spool(batch, receipt), item.lane.parser)
                    del batch, item  # the queue bounds memory: hold no records here
                if time.monotonic() >= next_scan:
                    submit_orphans(folder, pipeline, self.fallback_source, self.recovery)
                    next_scan = time.monotonic() + RECOVER_SECONDS
            self.totals = pipeline.close().result
            self._pipeline = None
        except (DatabaseUnavailable, SetupFault) as exc:
            self.error = exc

    def ending(
        self, left_batches: int, left_records: int, folder: Path, loaded_by: str
    ) -> SpooledForLater | None:
        """After ``stop``: log the spool segments of earlier runs this run loaded, and
        return the error the process ends with when batches were left in the spool
        (``folder``; ``loaded_by`` names the commands that will load them), else None."""
        if self.recovery.segments:
            log.warning("recovered %d spool segments left by earlier runs (%d batches)",
                        self.recovery.segments, self.recovery.batches)  # fmt: skip
        error = self.error
        if error is None and not left_batches:
            return None
        why = error.message if error is not None else "the database did not take them in time"
        return SpooledForLater(
            f"{left_records} records ({left_batches} batches) left in the spool {folder}"
            f" after {self.settings.drain_timeout:g} s: {why}",
            f"they are loaded by {loaded_by}"
            + (f"; {error.hint}" if error is not None and error.hint else ""),
        )

    def stop(self) -> None:
        """End the run: retries end, the rollups stop (no last step: an end of input must
        end the process soon), an unfinished pipeline is abandoned, claimed orphans released."""
        self.interrupt.set()
        if self._rollups is not None:
            self._rollups.stop()
            self._rollups = None
        if self._pipeline is not None:
            self.totals = self._pipeline.totals.result
            self._pipeline.abandon()
            self._pipeline = None
        self.recovery.release()
