"""``pmta-pipe ingest``: PowerMTA's accounting pipe (stdin) into PostgreSQL.

Threads and hand-offs::

    stdin --StreamReader thread--> batch queue --main thread--> parse --> Loader --> PostgreSQL

The reader thread only cuts records and never waits for the database; the main
thread parses each batch with the stream's current header and loads it in one
transaction (``load``). The queue between them is bounded (``MAX_PENDING_BATCHES``).

End of input, SIGTERM and SIGINT all end the same way: stop reading, load what was
read, commit, exit 0.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pmta_pipe import db
from pmta_pipe.config import Settings
from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import RecordParser
from pmta_pipe.reader import RawBatch, StreamReader

log = logging.getLogger(__name__)

MAX_PENDING_BATCHES = 64


@dataclass
class IngestSummary:
    records: int
    inserted: int
    duplicates: int
    rejected: int
    seconds: float


def migrating_loader(conninfo: str, **kwargs: Any) -> Loader:
    """A ``Loader`` that brings the schema up to date on its first connection."""
    loader = Loader(conninfo, **kwargs)
    original = loader.connection
    migrated = False

    def connection() -> Any:
        nonlocal migrated
        if not migrated:
            with db.connect(conninfo, autocommit=True) as conn:
                apply_migrations(conn)
            migrated = True
        return original()

    loader.connection = connection  # type: ignore[method-assign]
    return loader


def _install_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing what was read", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_ingest(settings: Settings, fd: int = 0) -> IngestSummary:
    """Read accounting CSV from ``fd`` until end of input and load every record."""
    started = time.monotonic()
    target = db.resolve_target(settings)
    source = settings.source_name
    log.info("loading into %s as source %r", target.description, source)
    loader = migrating_loader(target.conninfo)
    pending: queue.Queue[RawBatch | None] = queue.Queue(maxsize=MAX_PENDING_BATCHES)
    reader = StreamReader(
        fd, pending.put, batch_rows=settings.batch_rows, batch_seconds=settings.batch_seconds
    )
    _install_signals(reader.request_stop)
    reader.start()
    parser = RecordParser(source)
    total = LoadResult()
    try:
        while True:
            raw = pending.get()
            if raw is None:
                break
            batch = parser.parse(raw.records, raw.received_at)
            if batch.headers:
                log.info("header: %d columns", parser.header.width)
            if not batch.records:
                continue
            result = loader.load(batch, parser.header_line)
            total.add(result)
            log.debug(
                "batch: %d records, %d inserted, %d duplicates, %d rejected",
                result.records, result.inserted, result.duplicates, result.rejected,
            )  # fmt: skip
    finally:
        reader.request_stop()
        loader.close()
    reader.join()
    if reader.error is not None:
        raise reader.error
    summary = IngestSummary(
        total.records, total.inserted, total.duplicates, total.rejected,
        time.monotonic() - started,
    )  # fmt: skip
    log.info(
        "done: %d records, %d inserted, %d duplicates, %d rejected in %.1f s",
        summary.records, summary.inserted, summary.duplicates, summary.rejected, summary.seconds,
    )  # fmt: skip
    return summary
