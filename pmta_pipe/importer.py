"""``pmta-pipe import``: rotated accounting files (and stdin) into PostgreSQL.

Which files are read, and what the ledger decides for each: ``inputs``.

Compression is recognised from the content (``compression``). Each file is parsed
with a parser of its own (its own header), by the same ``reader.iter_batches``,
``parse.RecordParser`` and ``load.Loader`` as the pipe, so a record loaded by the
pipe and imported again from the accounting file is recognised and not added.
Records without any timestamp get the file's modification time as their received
time, so that importing the same file twice gives the same rows.

Threads and processes::

    main: find inputs, plan each (ledger) -> reader thread: read, decompress, cut,
    parse -> bounded queue -> main thread: Loader (COPY + upsert; ledger progress in
    the same transaction)

Parsing holds the GIL; the load mostly waits for PostgreSQL (working on the other
core), and psycopg releases the GIL meanwhile, so one process keeps about two cores
busy. The reader thread moves on to the next file while the previous one's last
batches load. ``jobs`` > 1 starts that many worker processes (spawned, each with
its own connections) that take files largest first; they send progress and
outcomes back over a queue. ``bench/import_speed.py`` measures both
(``docs/performance.md``): a second process helps when a core is idle.

The ledger (``ledger``, ``pmta.import_files``) makes re-runs cheap: unchanged
files are skipped after reading 64 KiB, a grown plain file is read on from where it
ended, an interrupted file from the last committed batch. A plain file modified in
the last ``HOLD_TAIL_SECONDS`` whose last line has no line break yet (PowerMTA is
writing it) is read up to its last complete line and left "not completed".

A file that cannot be read, or is damaged (truncated ``.gz``), is an error of that
file only: the records read before the damage are loaded (never a cut-off half
record), the ledger keeps the file not completed with the error, the other files are
imported, and the run exits 1 after its summary.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, cast

import psycopg

from pmta_pipe import compression, db, ledger
from pmta_pipe.config import Settings
from pmta_pipe.errors import DatabaseUnavailable, PmtaPipeError, SetupFault, first_line
from pmta_pipe.framing import is_header_record
from pmta_pipe.inputs import STDIN, FilePlan, find_inputs, plan_file
from pmta_pipe.load import Loader, LoadResult
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import RecordParser
from pmta_pipe.pipeline import Batch, Pipeline, Receipt
from pmta_pipe.progress import Progress, make_progress
from pmta_pipe.reader import iter_batches

log = logging.getLogger(__name__)

HOLD_TAIL_SECONDS = 300.0
MAX_PENDING_BATCHES = 1
RETRY_FOR = 120.0  # seconds the database may be away before the import gives up


@dataclass
class FileOutcome:
    """What importing one input did (the summary shows one per file)."""

    path: str
    status: str  # imported, skipped, failed, partial
    compression: str = ""
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    note: str = ""

    def add(self, result: LoadResult) -> None:
        self.records += result.records
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        self.rejected += result.rejected


@dataclass
class ImportSummary:
    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, status: str | None = None) -> int:
        return sum(1 for f in self.files if status is None or f.status == status)

    def totals(self) -> LoadResult:
        out = LoadResult()
        for f in self.files:
            out.add(LoadResult(f.records, f.inserted, f.duplicates, f.rejected))
        return out

    def as_dict(self) -> dict[str, Any]:
        t = self.totals()
        return {
            "files": self.total(),
            "imported": self.total("imported"),
            "skipped": self.total("skipped"),
            "partial": self.total("partial"),
            "failed": self.total("failed"),
            "records": t.records,
            "inserted": t.inserted,
            "duplicates": t.duplicates,
            "rejected": t.rejected,
            "seconds": round(self.seconds, 3),
            "per_file": [asdict(f) for f in self.files],
        }


# -- one process: read and parse here, load in the pipeline's thread ------------------


@dataclass
class _FileReceipt(Receipt):
    """A batch of an imported file: the ledger's progress commits with it."""

    plan: FilePlan
    outcome: FileOutcome
    records_read: int  # counted from the start of the file, header lines included
    header_line: str | None
    raw_bytes: int
    bar: Progress
    route = "import"

    def __post_init__(self) -> None:
        self.import_path = self.plan.name

    def in_transaction(self, conn: psycopg.Connection[Any], result: LoadResult) -> None:
        if self.plan.ledgered:
            ledger.record_progress(conn, self.plan.name, self.records_read, self.header_line,
                                   result)  # fmt: skip

    def committed(self, result: LoadResult) -> None:
        self.outcome.add(result)
        self.bar.advance(self.plan.name, self.raw_bytes, result.records)


@dataclass
class _FileEnd:
    """How reading one file ended."""

    records_read: int
    header_line: str | None
    bytes_done: int | None
    error: str | None
    held_back: int = 0


def _open(plan: FilePlan) -> BinaryIO:
    if plan.name == STDIN:
        return cast(BinaryIO, sys.stdin.buffer)
    f = open(plan.name, "rb")  # noqa: SIM115 -- closed by _read_file
    if plan.seek_to:
        f.seek(plan.seek_to)
    return f


def _read_file(
    plan: FilePlan,
    pipeline: Pipeline,
    outcome: FileOutcome,
    bar: Progress,
    *,
    source: str,
    batch_rows: int,
) -> _FileEnd:
    """Read, decompress, cut and hand one file to ``pipeline``, batch by batch."""
    parser = RecordParser(source)
    stamp = plan.mtime or datetime.now(timezone.utc)
    records_read = plan.records_read if plan.seek_to else 0  # counted from where reading starts
    hold = (
        plan.kind == "plain"
        and plan.mtime is not None
        and time.time() - plan.mtime.timestamp() < HOLD_TAIL_SECONDS
    )
    try:
        raw = _open(plan)
    except OSError as exc:
        return _FileEnd(records_read, None, None, f"cannot read: {exc.strerror or exc}")
    try:
        guard, counter = compression.open_records(raw, plan.kind, hold_unterminated_tail=hold)
        if plan.header_line:
            parser.parse([plan.header_line.encode()], stamp)
        parser.next_position = plan.next_position
        skip = plan.skip_records
        reported = 0
        for batch in iter_batches(cast(BinaryIO, guard), batch_rows, stamp):
            records = batch.records
            if skip:
                passed, records = records[:skip], records[skip:]
                skip -= len(passed)
                for rec in passed:
                    if is_header_record(rec):
                        parser.parse([rec], stamp)
                parser.next_position = plan.next_position
            records_read += len(batch.records)
            receipt = _FileReceipt(plan, outcome, records_read, None, counter.count - reported, bar)
            pipeline.submit(Batch(records, stamp, receipt), parser)
            receipt.header_line = parser.header_line  # the header in force after the batch
            reported = counter.count
        error = None
        if guard.error is not None:
            error = f"damaged {plan.kind} data: {guard.error}"
        return _FileEnd(
            records_read, parser.header_line, plan.seek_to + guard.consumed, error,
            guard.dropped if guard.error is None else 0,
        )  # fmt: skip
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def import_files(
    settings: Settings,
    paths: Sequence[str],
    *,
    force: bool = False,
    jobs: int = 1,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import ``paths`` (files, folders, globs, ``-``); the library entry point."""
    started = time.monotonic()
    names = find_inputs(paths)
    target = db.resolve_target(settings)
    source = settings.source_name
    log.info("importing %d inputs into %s as source %r", len(names), target.description, source)
    summary = ImportSummary()
    try:
        ledger_conn = db.connect(target.conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to the database: {first_line(exc)}",
            "check --dsn and that PostgreSQL is running",
        ) from exc
    with ledger_conn:
        apply_migrations(ledger_conn)
        plans = [plan_file(ledger_conn, n, force=force) for n in names]
        todo = [p for p in plans if p.action in ("read", "resume")]
        for p in plans:
            if p.action == "skip":
                summary.files.append(FileOutcome(p.name, "skipped", p.kind, note=p.note))
                log.info("%s: skipped (%s)", p.name, p.note)
            elif p.action == "fail":
                summary.files.append(FileOutcome(p.name, "failed", note=p.note))
                log.error("%s: %s", p.name, p.note)
        total_bytes = sum((p.size or 0) - p.seek_to for p in todo)
        bar = progress or make_progress(total_bytes, len(todo))
        jobs = min(jobs, len(todo))
        if any(p.name == STDIN for p in todo):
            jobs = 1  # standard input belongs to this process
        try:
            if jobs <= 1:
                _load_all(settings, target.conninfo, ledger_conn, todo, source, bar, summary.files)
            else:
                _load_in_workers(settings, target.conninfo, todo, source, bar, summary, jobs)
        finally:
            bar.close()
    summary.seconds = time.monotonic() - started
    return summary


def _load_all(
    settings: Settings,
    conninfo: str,
    ledger_conn: psycopg.Connection[Any],
    plans: Iterable[FilePlan],
    source: str,
    bar: Progress,
    outcomes: list[FileOutcome],
) -> None:
    """Import ``plans`` one after the other through one pipeline."""
    pipeline = Pipeline(Loader(conninfo, retry_for=RETRY_FOR), source, depth=MAX_PENDING_BATCHES)
    try:
        for plan in plans:
            outcome = FileOutcome(plan.name, "imported", plan.kind, note=plan.note)
            if plan.ledgered:
                assert plan.mtime is not None and plan.size is not None
                ledger.begin_file(
                    ledger_conn, path=plan.name, fingerprint=plan.fingerprint,
                    fingerprint_bytes=plan.fingerprint_bytes, size=plan.size,
                    mtime=plan.mtime, compression=plan.kind, source=source,
                    fresh=plan.action == "read",
                )  # fmt: skip
            log.info("%s: %s, %s", plan.name, plan.kind, plan.note or "reading")
            bar.start_file(plan.name, plan.size)
            end = _read_file(
                plan, pipeline, outcome, bar, source=source, batch_rows=settings.batch_rows
            )
            pipeline.flush()  # every batch of the file committed before the ledger says so
            _finish(ledger_conn, plan, end, outcome, bar)
            outcomes.append(outcome)
        pipeline.close()
    except DatabaseUnavailable as exc:
        pipeline.abandon()
        raise DatabaseUnavailable(
            exc.message,
            "run the same import again when it is back: finished files are skipped "
            "and this one resumes",
        ) from exc
    except BaseException:
        pipeline.abandon()
        raise


# -- several files at once: worker processes -----------------------------------------


class _QueueProgress:
    """Progress of a worker process, sent to the parent, which draws it."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def start_file(self, name: str, size: int | None) -> None:
        self.events.put(("start", name, size))

    def advance(self, name: str, nbytes: int, records: int) -> None:
        self.events.put(("advance", name, nbytes, records))

    def end_file(self, name: str, records: int, note: str) -> None:
        self.events.put(("end", name, records, note))

    def close(self) -> None:
        pass


def _work(settings: Settings, conninfo: str, source: str, tasks: Any, events: Any) -> None:
    """A worker process: import the plans it takes from ``tasks`` until a ``None``."""
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr,
        format="%(asctime)s pmta-pipe[%(process)d] %(levelname)s %(message)s",
    )  # fmt: skip
    outcomes: list[FileOutcome] = []
    try:
        with db.connect(conninfo, autocommit=True) as conn:
            plans = iter(tasks.get, None)
            _load_all(settings, conninfo, conn, plans, source, _QueueProgress(events), outcomes)
        events.put(("done", outcomes, None))
    except PmtaPipeError as exc:
        events.put(("done", outcomes, (type(exc).__name__, exc.message, exc.hint)))
    except BaseException as exc:
        events.put(("done", outcomes, ("PmtaPipeError", f"{type(exc).__name__}: {exc}", None)))


def _load_in_workers(
    settings: Settings,
    conninfo: str,
    plans: list[FilePlan],
    source: str,
    bar: Progress,
    summary: ImportSummary,
    jobs: int,
) -> None:
    """``jobs`` processes, each with its own connection, take files largest first."""
    ctx = multiprocessing.get_context("spawn")  # no inherited connections or threads
    tasks: Any = ctx.Queue()
    events: Any = ctx.Queue()
    for plan in sorted(plans, key=lambda p: -(p.size or 0)):
        tasks.put(plan)
    for _ in range(jobs):
        tasks.put(None)
    workers = [
        ctx.Process(target=_work, args=(settings, conninfo, source, tasks, events), daemon=True)
        for _ in range(jobs)
    ]
    for w in workers:
        w.start()
    failure: tuple[str, str, str | None] | None = None
    running = jobs
    try:
        while running:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers) and events.empty():
                    failure = failure or ("PmtaPipeError", "an import process died", None)
                    break
                continue
            kind = event[0]
            if kind == "start":
                bar.start_file(event[1], event[2])
            elif kind == "advance":
                bar.advance(event[1], event[2], event[3])
            elif kind == "end":
                bar.end_file(event[1], event[2], event[3])
            else:
                running -= 1
                summary.files.extend(event[1])
                failure = failure or event[2]
    finally:
        for w in workers:
            w.join(timeout=5 if failure is None else 0.5)
            if w.is_alive():
                w.terminate()
                w.join()
    if failure is not None:
        name, message, hint = failure
        cls = {"DatabaseUnavailable": DatabaseUnavailable, "SetupFault": SetupFault}.get(
            name, PmtaPipeError
        )
        raise cls(message, hint)


def _finish(
    ledger_conn: psycopg.Connection[Any],
    plan: FilePlan,
    end: _FileEnd,
    outcome: FileOutcome,
    bar: Progress,
) -> None:
    if end.error:
        outcome.status, outcome.note = "failed", end.error
        log.error("%s: %s (%d records before it were loaded)", plan.name, end.error,
                  outcome.records)  # fmt: skip
    elif end.held_back:
        outcome.status = "partial"
        outcome.note = f"last line ({end.held_back} bytes) not complete yet: run again to read it"
    if plan.ledgered:
        ledger.finish_file(
            ledger_conn, plan.name, records_read=end.records_read, header_line=end.header_line,
            completed=not end.error and not end.held_back, bytes_done=end.bytes_done,
            error=end.error,
        )  # fmt: skip
    bar.end_file(plan.name, outcome.records, outcome.status)
