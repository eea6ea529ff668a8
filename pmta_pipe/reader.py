"""Read accounting input into batches of whole records.

* ``StreamReader``: a thread that drains a pipe (PowerMTA's, on stdin) as fast as
  it is written, and hands a ``RawBatch`` to a sink when ``batch_rows`` records are
  in, or ``batch_seconds`` after the first record of the batch arrived, or at end
  of input. It uses ``select`` so that the time limit holds while no data comes,
  and so that a stop request (SIGTERM) is noticed within a fraction of a second.
* ``iter_batches``: the same cutting for a file-like object (file import), without
  threads or time limits.

The reader never parses CSV or JSON beyond record boundaries (``framing``, which
tells the two apart by the stream's first non-blank byte): parsing and
loading happen elsewhere, so that reading never waits for them. The sink runs in
the reader thread: ``ingest`` journals each batch to the spool there (so a batch is
durable as soon as it is cut), and holds reading only while the spool is full.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

from pmta_pipe.framing import ChunkSplitter

log = logging.getLogger(__name__)

CHUNK = 1 << 18
_POLL = 0.2  # seconds between checks of the stop flag while no data arrives


@dataclass
class RawBatch:
    """Whole records as read, with the time the first of them arrived."""

    records: list[bytes]
    received_at: datetime
    nbytes: int = 0
    torn_last: bool = False  # the input ended inside the last record (see parse)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class StreamReader(threading.Thread):
    """Drains a file descriptor into ``sink`` batch by batch; ``sink(None)`` marks the end."""

    def __init__(
        self,
        fd: int,
        sink: Callable[[RawBatch | None], None],
        *,
        batch_rows: int,
        batch_seconds: float,
    ) -> None:
        super().__init__(name="pmta-pipe-reader", daemon=True)
        self.fd = fd
        self.sink = sink
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.records = 0
        self.bytes = 0
        self.error: BaseException | None = None
        self._stop_requested = threading.Event()

    def request_stop(self) -> None:
        """Stop reading soon: what was read so far is still handed on."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (a sink that waits checks this)."""
        return self._stop_requested.is_set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc
            self.sink(None)

    def _emit(
        self, batch: list[bytes], first_at: datetime, nbytes: int, torn_last: bool = False
    ) -> None:
        self.records += len(batch)
        self.sink(RawBatch(batch, first_at, nbytes, torn_last))

    def _run(self) -> None:
        splitter = ChunkSplitter()
        batch: list[bytes] = []
        nbytes = 0
        first_at = _now()
        deadline = 0.0
        while not self._stop_requested.is_set():
            wait = _POLL if not batch else max(0.0, min(_POLL, deadline - time.monotonic()))
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                chunk = os.read(self.fd, CHUNK)
                if not chunk:
                    # end of input: from here on the run is ending, as on a stop request
                    # (the last batch is journaled even past a full spool's limit, and
                    # the drain timeout starts)
                    self._stop_requested.set()
                    break
                self.bytes += len(chunk)
                nbytes += len(chunk)
                had = len(batch)
                splitter.feed(chunk, batch)
                if batch and not had:
                    first_at = _now()
                    deadline = time.monotonic() + self.batch_seconds
                while len(batch) >= self.batch_rows:
                    self._emit(batch[: self.batch_rows], first_at, nbytes)
                    batch = batch[self.batch_rows :]
                    nbytes = 0
                    first_at = _now()
                    deadline = time.monotonic() + self.batch_seconds
            if batch and time.monotonic() >= deadline:
                self._emit(batch, first_at, nbytes)
                batch, nbytes = [], 0
        had = len(batch)
        torn = splitter.finish(batch)  # end of input or a stop request, maybe mid-record
        if batch:
            self._emit(batch, first_at if had else _now(), nbytes, torn)
        self.sink(None)


def iter_batches(
    stream: BinaryIO, batch_rows: int, received_at: datetime | None = None
) -> Iterator[RawBatch]:
    """Cut a readable binary stream into batches of at most ``batch_rows`` records.

    ``received_at`` stamps every batch (for a file, its modification time, so that
    records without any timestamp get the same time on every import).
    """
    stamp = received_at or _now()
    splitter = ChunkSplitter()
    batch: list[bytes] = []
    nbytes = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        nbytes += len(chunk)
        splitter.feed(chunk, batch)
        while len(batch) >= batch_rows:
            yield RawBatch(batch[:batch_rows], stamp, nbytes)
            batch = batch[batch_rows:]
            nbytes = 0
    torn = splitter.finish(batch)
    if batch or nbytes:
        yield RawBatch(batch, stamp, nbytes, torn and bool(batch))
