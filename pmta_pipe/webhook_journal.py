"""The webhook's journal: each posted body into the spool, one lane per source, before the 200.

``serve`` hands every decoded body here (in one worker thread, so bodies are
journaled one after the other and queued in that order). Each source has a
``feed.Lane`` of its own: a ``spool.SpoolWriter`` whose segments name that source
and the header line in force (a segment's meta holds one source and one header
line, as for ``ingest``), and a ``parse.RecordParser`` with that source's header
mapping. A body is journaled whole or not at all while there is room:

* room is checked for all the bytes the body adds (its batch frames and a segment
  head) against ``--spool-max-bytes`` (every process's segments counted); without
  room nothing is written and the answer is ``503`` with ``Retry-After``;
* the body's batches are appended and ``fsync``-ed (``SpoolWriter.append``), then
  queued for loading (``feed.PendingQueue``): from here a crash loses nothing, the
  next ``serve``, ``ingest`` or ``pmta-pipe replay`` loads the segment;
* a write the disk refuses midway is a ``503`` too; what was written of the body
  still loads, and the same body posted again adds no row (``record_id``).

The lanes also account what is journaled and not yet committed (for ``/metrics``:
batches and the age of the oldest), and call ``on_committed`` for every commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pmta_pipe.feed import Lane, PendingQueue
from pmta_pipe.framing import count_positions
from pmta_pipe.load import LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.spool import SpooledBatch, SpoolWriter, batch_frame_bytes

log = logging.getLogger(__name__)

FULL_LOG_SECONDS = 60.0  # the "spool full" WARNING, at most this often
HEAD_ALLOWANCE = 4096  # room kept for a new segment's head (MAGIC, meta, header line)
MAX_SOURCES = 10_000  # lanes at most (the peer address names a source without a header)

#: (source, records committed as inserted/duplicates/rejected, seconds since the 200)
CommitHook = Callable[[str, LoadResult, float | None], None]


@dataclass
class Journaled:
    """The outcome of journaling one body: ``records`` taking a position, or ``why`` not."""

    ok: bool
    records: int = 0
    batches: int = 0
    why: str = ""


class WebhookJournal:
    """One lane per source, all in one spool folder; ``journal`` runs in one thread."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        pending: PendingQueue,
        on_committed: CommitHook,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.pending = pending
        self.on_committed = on_committed
        self.lanes: dict[str, Lane] = {}
        self._last_start_us = 0
        self._full_logged_at: float | None = None
        self._full_refused = 0  # bodies refused for room since the last WARNING
        self._lock = threading.Lock()
        self._unloaded: dict[tuple[str, int], float] = {}  # batch -> monotonic time of its 200

    def _lane(self, source: str) -> Lane:
        lane = self.lanes.get(source)
        if lane is None:
            if len(self.lanes) >= MAX_SOURCES:
                raise OverflowError(f"more than {MAX_SOURCES} sources")
            spool = SpoolWriter(self.folder, source, max_bytes=self.max_bytes)
            # segment names sort by writer start, then pid: keep each lane's start distinct
            spool.started_us = max(spool.started_us, self._last_start_us + 1)
            self._last_start_us = spool.started_us
            lane = Lane(spool, RecordParser(source), self._committed_hook(source), "webhook")
            self.lanes[source] = lane
        return lane

    def _committed_hook(self, source: str) -> Callable[[SpooledBatch | None, LoadResult], None]:
        def hook(batch: SpooledBatch | None, result: LoadResult) -> None:
            since: float | None = None
            if batch is not None:
                with self._lock:
                    at = self._unloaded.pop((batch.ref.segment, batch.ref.offset), None)
                if at is not None:
                    since = time.monotonic() - at
            self.on_committed(source, result, since)

        return hook

    def journal(
        self, source: str, batches: list[list[bytes]], received_at: datetime, torn_last: bool
    ) -> Journaled:
        """Journal one body's batches durably and queue them (see the module docstring)."""
        try:
            lane = self._lane(source)
        except OverflowError as exc:
            return Journaled(False, why=f"{exc}: restart serve to forget old ones")
        spool = lane.spool
        adds = HEAD_ALLOWANCE + sum(batch_frame_bytes(b) for b in batches)
        held = spool.folder_bytes()
        if held and held + adds > self.max_bytes:
            self._full_refused += 1
            now = time.monotonic()
            if self._full_logged_at is None or now - self._full_logged_at >= FULL_LOG_SECONDS:
                log.warning("spool full: %d bytes in %s (limit %d): %d bodies answered 503 since"
                            " the last report (PowerMTA keeps them and posts them again)", held,
                            self.folder, self.max_bytes, self._full_refused)  # fmt: skip
                self._full_logged_at, self._full_refused = now, 0
            return Journaled(False, why="the spool is full (--spool-max-bytes): retry later")
        records = done = 0
        for i, records_of in enumerate(batches):
            torn = torn_last and i == len(batches) - 1
            try:
                batch = spool.append(records_of, received_at, torn)
            except OSError as exc:
                log.error("cannot write the spool in %s (%s): a body from %s answered 503"
                          " after %d of its %d batches", self.folder, exc, source, done,
                          len(batches))  # fmt: skip
                return Journaled(False, records, done, "the spool cannot be written: retry later")
            with self._lock:
                self._unloaded[(batch.ref.segment, batch.ref.offset)] = time.monotonic()
            self.pending.push(lane, batch, sum(map(len, records_of)))
            records += count_positions(records_of)[0]
            done += 1
        return Journaled(True, records, done)

    def unloaded(self) -> tuple[int, float]:
        """Batches journaled and not committed, and the age in seconds of the oldest (0: none)."""
        with self._lock:
            if not self._unloaded:
                return 0, 0.0
            return len(self._unloaded), time.monotonic() - min(self._unloaded.values())

    def close(self) -> tuple[int, int]:
        """Release every lane's spool: (batches, records) left in it for the next start."""
        batches = records = 0
        for lane in self.lanes.values():
            batches += lane.spool.close()
            records += lane.spool.left_records
        return batches, records
