"""Load spooled batches into PostgreSQL: the batch ledger, orphan recovery, ``pmta-pipe replay``.

* ``BatchLedger`` is the loader's ``after_load`` hook: inside each batch's
  transaction it writes one row to ``pmta.ingest_batches`` (source, counts,
  first/last ``time_logged`` from ``batch_stage``, spool segment and offset). The row
  commits with the events or not at all, so it is an exact record of what is loaded.
* ``replay_segment`` loads one segment a process has claimed (``spool.claim``): it
  parses each batch with the header in force (from the segment's meta, then header
  lines as they come), skips batches the ledger shows as committed, then deletes the
  segment (or moves it aside when it was damaged: ``spool`` recovery rules).
* ``recover_orphans`` does that for every segment no live process holds: ``ingest``
  calls it at start and periodically, ``replay`` once.
* ``run_replay`` is the command: load the spool without reading stdin, for cron or
  a systemd timer. Exit 0 when no orphaned record is left (segments a running
  ``ingest`` holds are its own business), 75 (EX_TEMPFAIL) when the database stayed
  unreachable for ``--drain-timeout`` seconds and records are left in the spool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from pmta_pipe import db
from pmta_pipe.config import Settings
from pmta_pipe.errors import DatabaseUnavailable
from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.spool import (
    BatchRef,
    SpooledBatch,
    claim,
    list_files,
    move_aside,
    read_segment,
    scan_records,
)

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75
TMP_GRACE_SECONDS = 60.0  # a .tmp younger than this may be a segment being created

_LEDGER = """
    INSERT INTO pmta.ingest_batches AS b (
        source, records, inserted, duplicates, rejected, first_time_logged, last_time_logged,
        received_at, spool_segment, spool_offset, batch_records)
    SELECT %s, %s, %s, %s, %s, min(time_logged), max(time_logged), %s, %s, %s, %s
    FROM batch_stage
    ON CONFLICT (spool_segment, spool_offset) DO UPDATE SET
        records = b.records + excluded.records,
        inserted = b.inserted + excluded.inserted,
        duplicates = b.duplicates + excluded.duplicates,
        rejected = b.rejected + excluded.rejected,
        first_time_logged = least(b.first_time_logged, excluded.first_time_logged),
        last_time_logged = greatest(b.last_time_logged, excluded.last_time_logged),
        committed_at = excluded.committed_at
    WHERE b.records < b.batch_records
"""
# The WHERE: a batch split to isolate a refused record commits in parts, which add
# up; a batch already complete (a retry after a commit whose reply was lost) is not
# counted twice.


@dataclass
class LedgerEntry:
    source: str
    ref: BatchRef | None
    records: int
    received_at: datetime


class BatchLedger:
    """``Loader.after_load`` hook: the batch being loaded, written to ``pmta.ingest_batches``."""

    def __init__(self) -> None:
        self.current: LedgerEntry | None = None

    def __call__(self, conn: psycopg.Connection[Any], result: LoadResult) -> None:
        e = self.current
        if e is None:
            return
        conn.execute(
            _LEDGER,
            (
                e.source, result.records, result.inserted, result.duplicates, result.rejected,
                e.received_at, e.ref.segment if e.ref else None, e.ref.offset if e.ref else None,
                e.records,
            ),
        )  # fmt: skip


def migrating_loader(conninfo: str, **kwargs: Any) -> Loader:
    """A ``Loader`` that brings the schema up to date on its first connection."""
    return Loader(conninfo, migrate=True, **kwargs)


def load_spooled(
    loader: Loader, ledger: BatchLedger, parser: RecordParser, batch: SpooledBatch
) -> LoadResult:
    """Parse one spooled batch with ``parser`` (which follows the headers) and load it."""
    parsed = parser.parse(batch.records, batch.received_at, first_position=batch.first_position)
    if not parsed.records:
        return LoadResult()
    ledger.current = LedgerEntry(parser.source, batch.ref, parsed.records, batch.received_at)
    try:
        return loader.load(parsed, parser.header_line)
    finally:
        ledger.current = None


def committed_offsets(loader: Loader, segment: str) -> set[int]:
    """Offsets of the segment's batches the ledger shows complete (empty when unknown)."""
    try:
        conn = loader.connection()
        rows = conn.execute(
            "SELECT spool_offset FROM pmta.ingest_batches"
            " WHERE spool_segment = %s AND records >= batch_records",
            (segment,),
        ).fetchall()
        conn.commit()
    except psycopg.Error:
        loader.close()  # the load's own retries will deal with the database
        return set()
    return {int(r[0]) for r in rows}


@dataclass
class ReplayResult:
    segments: int = 0
    batches: int = 0
    skipped: int = 0  # batches already committed before
    damaged: int = 0
    total: LoadResult = field(default_factory=LoadResult)


def replay_segment(
    path: Path, fd: int, loader: Loader, ledger: BatchLedger, fallback_source: str,
    out: ReplayResult,
) -> None:  # fmt: skip
    """Load a claimed segment (``fd`` holds its lock), then delete it or move it aside."""
    reading = read_segment(path, fd)
    meta = reading.meta
    parser = RecordParser(meta.source if meta else fallback_source)
    now = datetime.now(timezone.utc)
    if meta is not None and meta.header_line is not None:
        parser.parse([meta.header_line.encode()], now)
    done = committed_offsets(loader, reading.name) if reading.batches else set()
    for batch in reading.batches:
        if batch.ref.offset in done:
            out.skipped += 1
            _, header = scan_records(batch.records)
            if header is not None:
                parser.parse([header.encode()], now)
            continue
        out.total.add(load_spooled(loader, ledger, parser, batch))
        out.batches += 1
    if reading.torn_bytes:
        log.info("spool segment %s: ignored an incomplete last write (%d bytes, never durable)",
                 reading.name, reading.torn_bytes)  # fmt: skip
    if reading.damaged:
        out.damaged += 1
        why = "no valid meta frame" if meta is None else f"{reading.corrupt_bytes} bytes unreadable"
        move_aside(path, f"{why}; {reading.records} records in intact batches were loaded")
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    out.segments += 1
    log.info("replayed spool segment %s: %d batches (%d of them committed before)",
             reading.name, len(reading.batches), len(done))  # fmt: skip


def recover_orphans(
    folder: Path, loader: Loader, ledger: BatchLedger, fallback_source: str
) -> ReplayResult:
    """Load every segment in ``folder`` that no live process holds, oldest first."""
    out = ReplayResult()
    for f in list_files(folder):
        if f.kind == "tmp" and time.time() - f.mtime > TMP_GRACE_SECONDS:
            fd = claim(f.path)
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    f.path.unlink()  # a segment whose creation was interrupted: no records
                os.close(fd)
            continue
        if f.kind != "segment":
            continue
        fd = claim(f.path)
        if fd is None:
            continue  # a live process owns it
        try:
            replay_segment(f.path, fd, loader, ledger, fallback_source, out)
        finally:
            os.close(fd)
    return out


def run_replay(settings: Settings) -> int:
    """``pmta-pipe replay``: load what the spool holds, without reading stdin."""
    folder = settings.spool_path
    if not any(f.kind == "segment" for f in list_files(folder)):
        print(f"spool {folder} is empty")
        return 0
    target = db.resolve_target(settings)
    log.info("replaying %s into %s", folder, target.description)
    ledger = BatchLedger()
    loader = migrating_loader(target.conninfo, retry_for=settings.drain_timeout,
                              max_wait=5.0, after_load=ledger)  # fmt: skip
    code = 0
    try:
        result = recover_orphans(folder, loader, ledger, settings.source_name)
    except DatabaseUnavailable as exc:
        log.error("%s", exc)
        result, code = None, EX_TEMPFAIL
    finally:
        loader.close()
    left = [f for f in list_files(folder) if f.kind == "segment"]
    if result is not None:
        t = result.total
        print(
            f"replayed {result.segments} segments: {t.records} records, {t.inserted} inserted,"
            f" {t.duplicates} duplicates, {t.rejected} rejected"
            f" ({result.skipped} batches were already committed)"
        )
        if result.damaged:
            print(f"{result.damaged} damaged segments moved aside (*.corrupt): see the log")
    if left:
        print(f"{len(left)} segments left in {folder} (held by a running pmta-pipe ingest,"
              " or not loaded: see the log)")  # fmt: skip
    else:
        print(f"spool {folder} is empty")
    return code
