"""``pmta-pipe import``: rotated accounting files (and stdin) into PostgreSQL.

Which files are read, and what the ledger decides for each: ``inputs``.

Compression is recognised from the content (``compression``). Each file is parsed
with a parser of its own (its own header), by the same ``reader.iter_batches``,
``parse.RecordParser`` and ``load.Loader`` as the pipe, so a record loaded by the
pipe and imported again from the accounting file is recognised and not added.
Records without any timestamp get the file's modification time as their received
time, so that importing the same file twice gives the same rows.

Threads::

    calling thread: find inputs, plan each (ledger); then per file: read, decompress,
    cut, parse -> bounded queue -> the pipeline's loader thread: Loader (COPY +
    upsert; ledger progress in the same transaction)

The compiled parser scans a batch without the GIL, and psycopg releases it while
PostgreSQL works (on the other core), so one pipeline keeps about two cores busy.
The calling thread moves on to the next file while the previous one's last batches
load. ``jobs`` > 1 runs that many pipelines at once, each in a thread of its own
with its own connections, taking files largest first (``_load_in_threads``): threads,
not processes, so that two pipelines cost one interpreter's memory.
``bench/run.py`` measures both (``docs/performance.md``).

The ledger (``ledger``, ``pmta.import_files``) makes re-runs cheap: unchanged
files are skipped after reading 64 KiB, a grown plain file is read on from where it
ended, an interrupted file from the last committed batch. Streams (``-``, FIFOs,
``<(zcat …)``, ``/dev/fd/N``: ``inputs``) are read once, all of it, and have no ledger
entry; a run with a stream uses one pipeline.

Damaged archives. A compressed file is first decompressed to nowhere
(``compression.verify``: gzip CRC-32 and ISIZE, bzip2 block CRCs, the xz check, a zstd
frame's content checksum when it has one), then loaded. That costs one more
decompression: on 1,000,000 records, 0.7 s for gzip against 55 s for the whole
import, 1 % (bzip2, the slowest to decode, 9.7 s; ``docs/operations.md``). A
*corrupt* file (a checksum mismatch, data the format cannot decode) loads nothing
and fails with a note; a *truncated* one (the data ends inside a member or frame: a
cut-off download) loads the complete records
before the cut and fails, as does a file that cannot be read. The ledger keeps
such a file not completed, with the error, so the intact copy is read in full (a
truncated one: on from its records already loaded); the other files are imported,
and the run exits 1 after its summary. A compressed stream is copied to an
anonymous temporary file first, so that it can be verified before it is loaded.

The last record. ``iter_batches`` is read one batch ahead, so that the input's last
record can be looked at before it is handed on:

* A plain file is read up to the size it had when the import planned it. In one
  modified in the last ``HOLD_TAIL_SECONDS`` (PowerMTA may be writing it), the last
  record is left for the next run when it has no line break yet, or when a quote
  left it open (a multi-line reply cut between its lines) or a JSON object is not
  closed yet (``framing.left_open``): never loaded, never rejected.
  The ledger row stays not completed, with ``bytes_done`` at that record's first
  byte; the next run seeks there, so it reads the whole record, once.
* Any other input (an older file, a verified compressed file, a stream) whose last
  record has no line break or an open quote: it is loaded when it is provably
  complete (its quotes closed and as many fields as its header; a JSON object
  closed), else it is rejected as ``TORN``. The ledger does not count that reject
  and its ``bytes_done`` is the record's first byte, so when the file grows the whole
  record is read again. A torn reject is removed in the transaction that reads the whole
  record (``_FileReceipt.in_transaction``): the record at the same position of a
  file from the same source whose text begins with the torn text (a grown file, a
  complete copy elsewhere, ``--force``). The blind spot: a line cut inside its last
  field (unquoted) has every field, and is loaded as it is.
* A damaged file's cut-off last record is dropped (nothing of it is loaded).
"""

from __future__ import annotations

import bisect
import logging
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, cast

import psycopg

from pmta_pipe import compression, db, ledger, materialize, parse
from pmta_pipe.config import Settings
from pmta_pipe.errors import DatabaseUnavailable, first_line
from pmta_pipe.framing import DEFAULT_MAX_RECORD_BYTES, is_header_record, left_open
from pmta_pipe.inputs import STDIN, FilePlan, find_inputs, plan_file
from pmta_pipe.load import Loader, LoadResult, reject_id
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import ParsedBatch, RecordParser, Reject
from pmta_pipe.pipeline import Batch, Pipeline, Receipt
from pmta_pipe.progress import Progress, make_progress
from pmta_pipe.reader import iter_batches

log = logging.getLogger(__name__)

HOLD_TAIL_SECONDS = 300.0
MAX_PENDING_BATCHES = 1
RETRY_FOR = 120.0  # seconds the database may be away before the import gives up
#: a record torn off by the end of a file, or of the pipe: one reason for both
TORN = parse.TORN
#: a torn text this long, with its type, time and the start of a third field, is
#: matched by its beginning wherever the whole record comes (a torn pipe record has a
#: position in the pipe's stream, not in the parallel accounting file)
_PREFIX_MATCH_BYTES = 32

#: torn rejects of this source by position: [(reject_id, raw text)]
TornRejects = dict[int, list[tuple[str, str]]]


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


# -- one pipeline: read and parse here, load in the pipeline's thread -----------------


@dataclass
class _FileReceipt(Receipt):
    """A batch of an imported file: the ledger's progress commits with it."""

    plan: FilePlan
    outcome: FileOutcome
    records_read: int  # counted from the start of the file, header lines included
    header_line: str | None
    raw_bytes: int
    bar: Progress
    torn: bool = False  # the file's torn last record: not counted in the ledger
    resolves: list[str] = field(default_factory=list)  # torn rejects this batch completes
    route = "import"

    def __post_init__(self) -> None:
        self.import_path = self.plan.name

    def in_transaction(self, conn: psycopg.Connection[Any], result: LoadResult) -> None:
        if self.resolves:  # the whole record is read in this transaction
            conn.execute(
                "DELETE FROM pmta.rejects WHERE reject_id = ANY(%s::uuid[]) AND reason = %s",
                (self.resolves, TORN),
            )
        if self.plan.ledgered:
            counted = LoadResult() if self.torn else result
            ledger.record_progress(conn, self.plan.name, self.records_read, self.header_line,
                                   counted)  # fmt: skip

    def committed(self, result: LoadResult) -> None:
        self.outcome.add(result)
        self.bar.advance(self.plan.name, self.raw_bytes, result.records)


class _FileParser(RecordParser):
    """The parser of one file, with the importer's two rules for torn last records.

    ``tear_last``: the batch parsed next is the file's last record alone, and it is
    not complete: it becomes one ``TORN`` reject. ``receipt``: the batch's receipt,
    told (before the batch is queued) which torn rejects of ``torn`` it completes and
    the header in force after it.
    """

    def __init__(self, source: str, torn: TornRejects) -> None:
        super().__init__(source)
        self.torn = torn
        self.tear_last = False
        self.receipt: _FileReceipt | None = None
        self.tore: tuple[str, str, int] | None = None  # (reject_id, raw, position) made

    def parse(
        self,
        records: Sequence[bytes],
        received_at: datetime,
        first_position: int | None = None,
        **kwargs: Any,
    ) -> ParsedBatch:
        out = super().parse(records, received_at, first_position, **kwargs)
        if self.tear_last:
            self.tear_last = False
            self._tear(out)
        if self.receipt is not None:
            if self.torn:
                self.receipt.resolves = _completions(out, self.torn)
            self.receipt.header_line = self.header_line
        return out

    def _tear(self, out: ParsedBatch) -> None:
        """The one record of ``out`` (an event or a reject) becomes a ``TORN`` reject."""
        if out.ids:
            raw, position = out.raw[0], out.positions[0]
            out.drop_rows()
        elif out.rejects:
            raw, position = out.rejects[0].raw, out.rejects[0].position
        else:
            return  # a header line: nothing to lose
        out.rejects[:] = [Reject(raw, TORN, position)]
        self.tore = (reject_id(raw), raw, position)


def _text_at(out: ParsedBatch, position: int) -> str | None:
    """The raw text of the record of ``out`` at ``position``, if it has one."""
    i = bisect.bisect_left(out.positions, position)
    if i < len(out.positions) and out.positions[i] == position:
        return out.raw[i]
    for r in out.rejects:
        if r.position == position:
            return r.raw
    return None


def _completions(out: ParsedBatch, torn: TornRejects) -> list[str]:
    """The torn rejects whose whole record ``out`` holds: at their position, a longer
    text that begins with theirs; or, for a torn text long enough to name its record
    (``_PREFIX_MATCH_BYTES``, three fields begun), a longer text anywhere that begins
    with it."""
    if not out.positions and not out.rejects:
        return []
    found = []
    for position, candidates in torn.items():
        text = _text_at(out, position)
        found += [i for i, raw in candidates if _completed(raw, text, out.raw)]
    return found


def _completed(raw: str, at_position: str | None, texts: Sequence[str]) -> bool:
    """The torn text ``raw`` is the beginning of a longer text: the one at its position,
    or, when it is long enough to name its record, any of ``texts``."""
    if at_position is not None and len(at_position) > len(raw) and at_position.startswith(raw):
        return True
    if len(raw) < _PREFIX_MATCH_BYTES or raw.count(",") < 2:
        return False
    return any(len(t) > len(raw) and t.startswith(raw) for t in texts)


def fetch_torn_rejects(conn: psycopg.Connection[Any], source: str) -> TornRejects:
    """The ``TORN`` rejects of ``source`` that a whole record may still complete."""
    torn: TornRejects = {}
    for rid, raw, position in conn.execute(
        "SELECT replace(reject_id::text, '-', ''), raw_line, position FROM pmta.rejects"
        " WHERE source = %s AND reason = %s AND position IS NOT NULL",
        (source, TORN),
    ):
        torn.setdefault(int(position), []).append((str(rid), str(raw)))
    return torn


@dataclass
class _FileEnd:
    """How reading one file ended."""

    records_read: int
    header_line: str | None
    bytes_done: int | None
    error: str | None
    held_back: int = 0  # bytes of a last record left for the next run
    torn: tuple[str, str, int] | None = None  # the torn last record rejected


def _open(plan: FilePlan) -> BinaryIO:
    if plan.name == STDIN:
        return cast(BinaryIO, sys.stdin.buffer)
    f = open(plan.name, "rb")  # noqa: SIM115 -- closed by _read_file; a FIFO waits for a writer
    if plan.seek_to:
        f.seek(plan.seek_to)
    return f


def _open_quote(record: bytes) -> bool:
    """The record ends inside a quoted field or an open JSON object (framing joined lines
    until the input ended)."""
    return len(record) < DEFAULT_MAX_RECORD_BYTES and left_open(record)


def _prepare(plan: FilePlan, raw: BinaryIO, outcome: FileOutcome) -> tuple[BinaryIO, str | None]:
    """The reader to load from, or an error: streams sniffed, compressed data verified."""
    data = raw
    if plan.stream:
        plan.kind, data = compression.sniff(raw)
        outcome.compression = plan.kind
        if plan.kind != "plain":  # verified before loading, so kept aside first
            spool = cast(BinaryIO, tempfile.TemporaryFile(prefix="pmta-pipe-import-"))  # noqa: SIM115
            shutil.copyfileobj(data, spool, 1 << 20)
            spool.seek(0)
            data = spool
    if plan.kind == "plain":
        return data, None
    started = time.monotonic()
    check = compression.verify(data, plan.kind)
    log.info("%s: %s checked in %.1f s: %s (%d bytes decompressed)", plan.name, plan.kind,
             time.monotonic() - started, check.state, check.decompressed)  # fmt: skip
    if not check.checksummed:
        log.warning("%s: a zstd frame without a content checksum: only its structure can be"
                    " checked", plan.name)  # fmt: skip
    data.seek(0)
    if check.state == "corrupt":
        return data, f"corrupt {plan.kind} data: {check.message} (nothing loaded)"
    if check.state == "unreadable":
        return data, f"cannot read: {check.message} (nothing loaded)"
    return data, None


def _read_file(
    plan: FilePlan,
    pipeline: Pipeline,
    outcome: FileOutcome,
    bar: Progress,
    *,
    source: str,
    batch_rows: int,
    torn: TornRejects,
) -> _FileEnd:
    """Read, decompress, cut and hand one file to ``pipeline``, batch by batch."""
    parser = _FileParser(source, torn)
    stamp = plan.mtime or datetime.now(timezone.utc)
    records_read = plan.records_read if plan.seek_to else 0  # counted from where reading starts
    hold = (
        not plan.stream
        and plan.kind == "plain"
        and plan.mtime is not None
        and time.time() - plan.mtime.timestamp() < HOLD_TAIL_SECONDS
    )
    try:
        raw = _open(plan)
    except OSError as exc:
        return _FileEnd(records_read, None, None, f"cannot read: {exc.strerror or exc}")
    data = raw
    try:
        data, error = _prepare(plan, raw, outcome)
        if error is not None:
            return _FileEnd(records_read, None, None, error)
        limit = None  # a plain file is read as it was planned: PowerMTA may append to it
        if not plan.stream and plan.kind == "plain" and plan.size is not None:
            limit = plan.size - plan.seek_to
        guard, counter = compression.open_records(
            data, plan.kind, hold_unterminated_tail=hold, limit=limit
        )
        if plan.header_line:
            parser.parse([plan.header_line.encode()], stamp)
        parser.next_position = plan.next_position
        skip = plan.skip_records
        reported = 0

        def submit(records: list[bytes], *, tear: bool = False) -> None:
            nonlocal skip, records_read, reported
            read = len(records)
            if skip:
                passed, records = records[:skip], records[skip:]
                skip -= len(passed)
                for rec in passed:
                    if is_header_record(rec):
                        parser.parse([rec], stamp)
                parser.next_position = plan.next_position
            if not tear:  # a torn last record is read again, whole, later
                records_read += read
            receipt = _FileReceipt(
                plan, outcome, records_read, None, counter.count - reported, bar, torn=tear
            )
            parser.receipt, parser.tear_last = receipt, tear
            try:
                pipeline.submit(Batch(records, stamp, receipt), parser)
            finally:
                parser.receipt, parser.tear_last = None, False
            reported = counter.count

        last: list[bytes] = []
        for batch in iter_batches(cast(BinaryIO, guard), batch_rows, stamp):
            if last:
                submit(last)
            last = batch.records
        # the last record: whole, left for the next run, torn, or cut off by damage
        final = last[-1] if len(last) > skip else None
        unterminated = final is not None and bool(guard.tail.strip()) and final.endswith(guard.tail)
        open_quote = final is not None and _open_quote(final)
        held = guard.dropped if guard.error is None else 0
        torn_bytes = 0
        if final is None or not (unterminated or open_quote):
            if last:
                submit(last)
        elif guard.error is not None:
            submit(last[:-1])  # a cut-off half record: dropped
        elif hold:
            submit(last[:-1])
            held += len(final) + 1
        else:
            submit(last[:-1])
            # an old file will not grow: every field and the quotes closed are enough
            if parser.is_whole(final, last_field_closed=False):
                submit([final])
            else:
                submit([final], tear=True)
                torn_bytes = len(final) + (0 if unterminated else 1)
        if guard.error is not None:
            if plan.kind == "plain":
                error = f"cannot read: {guard.error}"
            elif isinstance(guard.error, EOFError):
                error = f"truncated {plan.kind} data: {guard.error}"
            else:
                error = f"corrupt {plan.kind} data: {guard.error}"
            return _FileEnd(records_read, parser.header_line, None, error)
        end = plan.seek_to + guard.consumed - torn_bytes - (held - guard.dropped)
        return _FileEnd(records_read, parser.header_line, end, None, held, parser.tore)
    finally:
        for f in {id(raw): raw, id(data): data}.values():
            if f is not sys.stdin.buffer:
                f.close()


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
        rollups = materialize.Background(
            target.conninfo, interval=settings.rollup_interval, grace=settings.rollup_grace
        ).start()
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
        if any(p.stream for p in todo):
            jobs = 1  # a stream is read once, in order, by one pipeline
        try:
            if jobs <= 1:
                _load_all(settings, target.conninfo, ledger_conn, todo, source, bar, summary.files)
            else:
                _load_in_threads(settings, target.conninfo, todo, source, bar, summary, jobs)
        finally:
            bar.close()
            # the import ends once loaded: what it leaves unmaterialized is counted live
            # by the views until the next step (ingest's, serve's, ``pmta-pipe rollup``)
            rollups.stop()
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
        torn = fetch_torn_rejects(ledger_conn, source)
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
            if plan.stream:
                log.info("%s: a stream, read once (no ledger entry)", plan.name)
            else:
                log.info("%s: %s, %s", plan.name, plan.kind, plan.note or "reading")
            bar.start_file(plan.name, plan.size)
            end = _read_file(
                plan, pipeline, outcome, bar, source=source, batch_rows=settings.batch_rows,
                torn=torn,
            )  # fmt: skip
            pipeline.flush()  # every batch of the file committed before the ledger says so
            if end.torn is not None:  # a later file may hold the whole record
                rid, raw, position = end.torn
                torn.setdefault(position, []).append((rid, raw))
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


# -- several files at once: pipelines in threads -------------------------------------


class _SharedProgress:
    """One progress display for several pipelines: their threads take turns."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.lock = threading.Lock()

    def start_file(self, name: str, size: int | None) -> None:
        with self.lock:
            self.bar.start_file(name, size)

    def advance(self, name: str, nbytes: int, records: int) -> None:
        with self.lock:
            self.bar.advance(name, nbytes, records)

    def end_file(self, name: str, records: int, note: str) -> None:
        with self.lock:
            self.bar.end_file(name, records, note)

    def close(self) -> None:
        pass


def _load_in_threads(
    settings: Settings,
    conninfo: str,
    plans: list[FilePlan],
    source: str,
    bar: Progress,
    summary: ImportSummary,
    jobs: int,
) -> None:
    """``jobs`` pipelines, each in a thread with its own connections, take files largest
    first; the first error stops the others taking new files, and is raised.

    Threads, not processes: the work that holds the GIL (framing, the parser's Python
    glue) is a small share of an import, the compiled parser scans without it and
    psycopg and zlib release it while they wait or work, so two pipelines keep both
    cores busy in one process, at the memory of one interpreter, not three
    (``docs/performance.md``)."""
    tasks: queue.SimpleQueue[FilePlan] = queue.SimpleQueue()
    for plan in sorted(plans, key=lambda p: -(p.size or 0)):
        tasks.put(plan)
    failed = threading.Event()
    shared = _SharedProgress(bar)
    outcomes: list[list[FileOutcome]] = [[] for _ in range(jobs)]
    errors: list[BaseException] = []

    def take() -> Iterator[FilePlan]:
        while not failed.is_set():
            try:
                yield tasks.get_nowait()
            except queue.Empty:
                return

    def work(i: int) -> None:
        try:
            with db.connect(conninfo, autocommit=True) as conn:
                _load_all(settings, conninfo, conn, take(), source, shared, outcomes[i])
        except BaseException as exc:  # raised in the calling thread, below
            errors.append(exc)
            failed.set()

    # daemon threads: an interrupt ends the command at once, as it does with one
    # pipeline; what they had not committed is rolled back, the ledger resumes it
    threads = [
        threading.Thread(target=work, args=(i,), name=f"pmta-pipe-import-{i + 1}", daemon=True)
        for i in range(jobs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for done in outcomes:
        summary.files.extend(done)
    if errors:
        raise errors[0]


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
        outcome.note = f"last record ({end.held_back} bytes) not complete yet: run again to read it"
    elif end.torn is not None:
        outcome.note = (
            f"last record (position {end.torn[2]}) torn: rejected until the whole record"
            " is imported"
        )
        log.warning("%s: %s", plan.name, outcome.note)
    if plan.ledgered:
        ledger.finish_file(
            ledger_conn, plan.name, records_read=end.records_read, header_line=end.header_line,
            completed=not end.error and not end.held_back, bytes_done=end.bytes_done,
            error=end.error,
        )  # fmt: skip
    bar.end_file(plan.name, outcome.records, outcome.status)
