"""Load what the spool holds for no live process: ``pmta-pipe replay``, and ``ingest``'s recovery.

``submit_orphans`` claims every segment no live process holds (``spool.claim_orphans``)
and hands its batches to a ``pipeline.Pipeline``, each with a ``SegmentReceipt``:
the segment is parsed with the header in force at its start (its meta frame),
then header lines as they come, each batch with the time it was first received
(so records without a timestamp get the same identity as the first time). A batch
``pmta.ingest_batches`` shows as committed (a crash between commit and
acknowledgement) is skipped. Once its last batch is committed the segment is
deleted, or moved aside when it was damaged (``spool`` recovery rules).

``ingest`` calls it at start and every few minutes; ``replay_spool`` is the command,
for cron or a systemd timer: it loads the spool without reading stdin and returns
a ``ReplayResult`` (``cli`` prints it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pmta_pipe import db
from pmta_pipe.config import Settings
from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.parse import RecordParser
from pmta_pipe.pipeline import Batch, Pipeline, Receipt, Totals
from pmta_pipe.spool import BatchRef, ClaimedSegment, claim_orphans, list_files

log = logging.getLogger(__name__)

_COMMITTED = (
    "SELECT spool_offset FROM pmta.ingest_batches WHERE spool_segment = %s"
    " AND records >= batch_records"
)


class _SegmentProgress:
    """One claimed segment being loaded: finished when its last batch is committed."""

    def __init__(self, claimed: ClaimedSegment, batches: int) -> None:
        self.claimed = claimed
        self.left = batches
        self._committed: set[int] | None = None

    def committed_offsets(self, loader: Loader) -> set[int]:
        if self._committed is None:

            def query() -> set[int]:
                conn = loader.connection()
                rows = conn.execute(_COMMITTED, (self.claimed.name,)).fetchall()
                conn.commit()
                return {int(r[0]) for r in rows}

            self._committed = loader.run(query)
        return self._committed

    def one_committed(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.claimed.finish()


@dataclass
class SegmentReceipt(Receipt):
    """A batch of an orphaned segment."""

    progress: _SegmentProgress
    ref: BatchRef
    route = "replay"

    def __post_init__(self) -> None:
        self.spool_segment = self.ref.segment
        self.spool_offset = self.ref.offset

    def already_committed(self, loader: Loader) -> bool:
        return self.ref.offset in self.progress.committed_offsets(loader)

    def committed(self, result: LoadResult) -> None:
        self.progress.one_committed()


@dataclass
class Recovery:
    """The orphaned segments one call of ``submit_orphans`` handed to the pipeline."""

    segments: int = 0
    batches: int = 0
    damaged: int = 0
    claimed: list[ClaimedSegment] = field(default_factory=list)

    def release(self) -> None:
        """Unlock the segments not finished (the pipeline stopped before their end)."""
        for c in self.claimed:
            c.release()


def submit_orphans(
    folder: Path, pipeline: Pipeline, fallback_source: str, out: Recovery | None = None
) -> Recovery:
    """Hand every orphaned segment of ``folder`` to ``pipeline``, oldest first.

    The segments claimed are listed in ``out`` as they are claimed, so that a caller
    whose pipeline fails midway can ``release`` them.
    """
    out = Recovery() if out is None else out
    for claimed in claim_orphans(folder):
        out.claimed.append(claimed)
        reading = claimed.reading
        meta = reading.meta
        out.segments += 1
        out.batches += len(reading.batches)
        out.damaged += reading.damaged
        progress = _SegmentProgress(claimed, len(reading.batches))
        if not reading.batches:
            claimed.finish()
            continue
        parser = RecordParser(meta.source if meta else fallback_source)
        if meta is not None and meta.header_line is not None:
            parser.parse([meta.header_line.encode()], datetime.now(timezone.utc))
        log.info("loading spool segment %s left by an earlier run: %d batches, %d records",
                 reading.name, len(reading.batches), reading.records)  # fmt: skip
        for batch in reading.batches:
            receipt = SegmentReceipt(progress, batch.ref)
            pipeline.submit(Batch.from_spool(batch, receipt), parser)
    return out


@dataclass
class ReplayResult:
    """What ``pmta-pipe replay`` did."""

    folder: str
    segments: int = 0
    damaged: int = 0
    totals: Totals = field(default_factory=Totals)
    left_segments: int = 0  # held by a running ingest (its own business), or not loaded

    @property
    def result(self) -> LoadResult:
        return self.totals.result


def replay_spool(settings: Settings) -> ReplayResult:
    """Load every orphaned segment of the spool; ``DatabaseUnavailable`` after
    ``--drain-timeout`` seconds without the database, ``SetupFault`` at once."""
    folder = settings.spool_path
    out = ReplayResult(str(folder))
    if any(f.kind == "segment" for f in list_files(folder)):
        target = db.resolve_target(settings)
        log.info("replaying %s into %s", folder, target.description)
        loader = Loader(target.conninfo, migrate=True, retry_for=settings.drain_timeout,
                        max_wait=5.0)  # fmt: skip
        pipeline = Pipeline(loader, settings.source_name)
        recovery = Recovery()
        try:
            submit_orphans(folder, pipeline, settings.source_name, recovery)
            out.totals = pipeline.close()
        except BaseException:
            pipeline.abandon()
            raise
        finally:
            recovery.release()
        out.segments, out.damaged = recovery.segments, recovery.damaged
    out.left_segments = sum(1 for f in list_files(folder) if f.kind == "segment")
    return out
