"""Load one parsed batch into PostgreSQL: COPY, rejects and bookkeeping in one transaction.

``Loader.load`` takes a ``ParsedBatch`` and, in one transaction:

1. (before it, in a short transaction of its own) creates the daily partitions the
   batch needs (``pmta.ensure_partitions``), so that loaders never hold partition locks;
   a day ``prune`` sealed (``pmta.pruned_days``) gets none, and the batch's records of
   it are counted as duplicates, not loaded (its materialized rollups count them already);
2. inserts the rows into ``pmta.events``, one of two ways, with no savepoint (the
   transaction holds nothing else yet, so rolling it back whole is as good as a
   savepoint, and costs no round trips in the usual case):

   * fast way (new records, the usual case): ``COPY`` straight into ``pmta.events``.
     A ``unique_violation`` (a record already loaded, or twice in the batch) rolls
     the transaction back and the batch is loaded again the safe way;
   * safe way: ``COPY`` into the temporary ``batch_stage``, then one
     ``INSERT … ON CONFLICT DO NOTHING RETURNING record_id`` in key order.

   A record PostgreSQL refuses rolls that transaction back too, and the batch is
   loaded again inside savepoints that isolate the record (below);

   After a batch with duplicates the loader keeps to the safe way (a replay would
   otherwise do every insert twice) until a batch comes with none;
3. stores the batch's rejects in ``pmta.rejects``;
4. runs the caller's ``bookkeeping`` (the ``pmta.ingest_batches`` row, the hours to
   count again for the report rollups, the import ledger), so that it commits with
   the events or not at all; then COMMIT. The rejects and the bookkeeping go out in
   one pipeline (``conn.pipeline()``): one round trip for all of their statements.
   A batch of new records costs 5 round trips: BEGIN, COPY, its end, the pipeline,
   COMMIT.

The report rollups are not maintained here: ``materialize`` counts them in bulk from
``pmta.events``, and the bookkeeping of a batch that inserted rows logs the hours it
touched below the invalidation threshold (``pipeline.record_batch``).

What goes wrong is sorted by ``faults.classify``:

* a record's fault (a value PostgreSQL refuses): the insert is split in halves, each
  in a savepoint of the same transaction, until the refused record is alone; it
  goes to ``pmta.rejects`` (stage ``database``, with the SQLSTATE and the server's
  message) and every other record loads. The batch still commits once, whole;
* transient: retried with backoff (tenacity, exponential with jitter, capped) on a
  new connection, for ``retry_for`` seconds (``None``: until ``interrupt`` is set);
* the setup's fault: never a reject. With ``hold_setup_faults`` (``ingest``) it is
  retried like a transient error, an ERROR with the SQLSTATE and a hint is logged
  when it starts and every ``SETUP_LOG_SECONDS``, ``on_fault`` is told (the spool
  shows it to ``status``), and a schema that disappeared is migrated again on the
  next connection. Without it (``import``, ``replay``), ``SetupFault`` is raised.

The COPY data is the batch's ``ParsedBatch.lines``, made by the parser (the
compiled one in C): PostgreSQL's text format (tab-separated, empty = NULL) when no
value holds a tab, line break, carriage return or backslash, otherwise CSV for the
whole batch (``copy_format``), exactly as ``render_copy`` writes the rows. The
loader never builds row tuples: the sealed-day filter, the upsert's count and the
bookkeeping read ``ids`` and ``times``, and isolating a refused record slices the
lines. See ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, TypeVar

import psycopg
import tenacity
from psycopg import errors as pg_errors

from pmta_pipe import db, faults, values
from pmta_pipe.errors import DatabaseUnavailable, MigrationError, SetupFault, first_line
from pmta_pipe.faults import Fault
from pmta_pipe.fields import EVENT_COLUMNS
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import ParsedBatch, Reject

log = logging.getLogger(__name__)

T = TypeVar("T")
SETUP_LOG_SECONDS = 300.0  # a lasting setup fault is logged again this often

_COLS = ", ".join(EVENT_COLUMNS)
_SETUP = (
    "SET TIME ZONE 'UTC'",
    "SET temp_buffers = '32MB'",  # before the first use of a temporary table
    "CREATE TEMP TABLE IF NOT EXISTS batch_stage (LIKE pmta.events) ON COMMIT DELETE ROWS",
)
_COPY_CSV = "COPY {table} ({columns}) FROM STDIN (FORMAT csv)"
_COPY_TEXT = "COPY {table} ({columns}) FROM STDIN (FORMAT text, NULL '')"
_TEXT_UNSAFE = ("\\", "\r")
_UPSERT = f"""
    INSERT INTO pmta.events ({_COLS})
    SELECT {_COLS} FROM batch_stage ORDER BY time_logged, record_id
    ON CONFLICT DO NOTHING
    RETURNING record_id
"""
_SEALED = "SELECT day FROM pmta.pruned_days WHERE day = ANY(%s::date[])"
_REJECT = """
    INSERT INTO pmta.rejects
        (reject_id, source, reason, raw_line, position, header_line, received_at, stage, sqlstate)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (reject_id) DO UPDATE SET
        reason = excluded.reason, stage = excluded.stage, sqlstate = excluded.sqlstate
"""

#: the in-transaction hook: (connection, result, (time_logged, record_id) of each row
#: inserted) -> None
Bookkeeping = Callable[[psycopg.Connection[Any], "LoadResult", Sequence[tuple[str, str]]], None]


@dataclass
class LoadResult:
    """What loading did: records = inserted + duplicates + rejected."""

    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_database: int = 0  # of rejected: refused by PostgreSQL, not by the parser

    def add(self, other: LoadResult) -> None:
        self.records += other.records
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.rejected_by_database += other.rejected_by_database


@dataclass(frozen=True)
class FaultNotice:
    """A setup fault that holds the batches back, as ``status`` shows it."""

    sqlstate: str | None
    message: str
    hint: str
    since: datetime


@dataclass(frozen=True)
class _Refused:
    """A record PostgreSQL refused, isolated by splitting its batch."""

    reject: Reject
    sqlstate: str | None


class _Isolate(Exception):
    """The batch's transaction without savepoints failed on a record (a duplicate or a
    value PostgreSQL refuses): load it again in savepoints that isolate the record."""

    def __init__(self, *, duplicate: bool) -> None:
        super().__init__()
        self.duplicate = duplicate  # a duplicate in the fast way: the upsert way next


class _PartitionMissing(Exception):
    """A partition this process created was dropped since (``pmta-pipe prune``)."""


def render_copy(rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    """COPY data for ``rows`` and its format: ``("text", data)`` or ``("csv", data)``.

    The reference for ``ParsedBatch.lines`` (``tests/test_fastpath.py`` checks both
    parsers' lines against it)."""
    if not rows:
        return "text", ""
    data = "\n".join(map("\t".join, rows))
    width = len(rows[0])
    if (
        data.count("\t") == len(rows) * (width - 1)  # no tab inside a value, equal widths
        and data.count("\n") == len(rows) - 1  # no line break inside a value
        and not any(map(data.__contains__, _TEXT_UNSAFE))
    ):
        return "text", data + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return "csv", buf.getvalue()


def _copy_statement(table: str, fmt: str, columns: str = _COLS) -> str:
    return (_COPY_TEXT if fmt == "text" else _COPY_CSV).format(table=table, columns=columns)


def reject_id(raw: str) -> str:
    return hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()


class _Backoff:
    """Logs once per state change (down / back), and a lasting setup fault every few minutes."""

    def __init__(self, on_fault: Callable[[FaultNotice | None], None] | None) -> None:
        self.on_fault = on_fault
        self.down_since: float | None = None
        self.fault: FaultNotice | None = None
        self._fault_logged = 0.0

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and faults.is_setup(exc):
            self._setup_fault(exc)
        elif self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database unavailable (%s); retrying with backoff", first_line(exc))

    def _setup_fault(self, exc: BaseException) -> None:
        notice = FaultNotice(
            faults.sqlstate(exc), faults.describe(exc), faults.setup_hint(exc),
            self.fault.since if self.fault else datetime.now(timezone.utc),
        )  # fmt: skip
        new = self.fault is None or self.fault.message != notice.message
        now = time.monotonic()
        if new or now - self._fault_logged >= SETUP_LOG_SECONDS:
            self._fault_logged = now
            log.error(
                "the database refuses every batch: %s (hint: %s); the records stay in the "
                "spool and loading is retried", notice.message, notice.hint,
            )  # fmt: skip
        self.fault = notice
        if new and self.on_fault is not None:
            self.on_fault(notice)

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("database back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
        if self.fault is not None:
            log.warning("the setup fault is fixed (%s): loading again", self.fault.message)
            self.fault = None
            if self.on_fault is not None:
                self.on_fault(None)


class Loader:
    """Owns one connection and loads batches through it, reconnecting as needed."""

    def __init__(
        self,
        conninfo: str,
        *,
        retry_for: float | None = None,
        max_wait: float = 30.0,
        interrupt: threading.Event | None = None,
        migrate: bool = False,
        hold_setup_faults: bool = False,
        on_fault: Callable[[FaultNotice | None], None] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.migrate = migrate  # bring the schema up to date before the next connection
        self.retry_for = retry_for  # seconds before giving up; None = never
        self.max_wait = max_wait
        # once set, errors are not retried any more and backoff sleeps end
        self.interrupt = interrupt
        self.hold_setup_faults = hold_setup_faults
        self._conn: psycopg.Connection[Any] | None = None
        self._in_use: psycopg.Connection[Any] | None = None  # what cancel() cancels
        self._days: set[date] = set()  # days whose partition exists
        self._sealed: set[date] = set()  # days pruned (pmta.pruned_days): nothing loads
        self._backoff = _Backoff(on_fault)
        self.fast = True  # try the fast way first (see the module docstring)

    # -- connection -------------------------------------------------------
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if self.migrate:
                with db.connect(self.conninfo, autocommit=True) as admin:
                    self._in_use = admin  # cancel() reaches a migration waiting for a lock
                    if apply_migrations(admin):
                        self._days.clear()
                self.migrate = False
            conn = db.connect(self.conninfo, autocommit=True)
            self._in_use = conn
            try:
                for stmt in _SETUP:
                    conn.execute(stmt)
            except BaseException:
                conn.close()
                raise
            conn.autocommit = False
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def cancel(self) -> None:
        """Cancel the statement in flight, if any (from another thread): with ``interrupt``
        set, the load then gives up at once instead of waiting for a blocked statement."""
        conn = self._in_use
        if conn is None or conn.closed:
            return
        cancel = getattr(conn, "cancel_safe", None) or conn.cancel  # cancel_safe: psycopg 3.2
        with contextlib.suppress(Exception):
            cancel()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _retryable(self, exc: BaseException) -> bool:
        fault = faults.classify(exc)
        return fault is Fault.TRANSIENT or (fault is Fault.SETUP and self.hold_setup_faults)

    def _retrying(self, stop_after: float | None) -> tenacity.Retrying:
        stop: Any = (
            tenacity.stop_never if stop_after is None else tenacity.stop_after_delay(stop_after)
        )
        sleep: Callable[[float], Any] = time.sleep
        interrupt = self.interrupt
        if interrupt is not None:
            stop = tenacity.stop_any(stop, tenacity.stop_when_event_set(interrupt))
            sleep = interrupt.wait
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._retryable),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=self.max_wait),
            stop=stop,
            sleep=sleep,
            before_sleep=self._backoff.before_sleep,
            reraise=True,
        )

    # -- loading ----------------------------------------------------------
    def load(
        self,
        batch: ParsedBatch,
        header_line: str | None = None,
        *,
        received_at: datetime | None = None,
        bookkeeping: Bookkeeping | None = None,
    ) -> LoadResult:
        """Load ``batch`` exactly once, retrying as ``faults`` decides; see the module docstring.

        ``bookkeeping`` runs inside the batch's transaction, after the events and
        rejects. Raises
        ``DatabaseUnavailable`` when the database stays away longer than
        ``retry_for`` (or ``interrupt`` is set), ``SetupFault`` for a fault of the
        setup that is not held (or still there when ``interrupt`` is set).
        """
        stamp = received_at or datetime.now(timezone.utc)

        def attempt() -> LoadResult:
            try:
                return self._load_once(batch, header_line, stamp, bookkeeping)
            except _PartitionMissing:
                self._days.clear()  # dropped since we made it: make it again, once
                return self._load_once(batch, header_line, stamp, bookkeeping)

        return self.run(attempt)

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which uses ``connection()``), retrying as ``faults`` decides."""
        try:
            for attempt in self._retrying(self.retry_for):
                with attempt:
                    try:
                        result = work()
                    except BaseException as exc:
                        self._after_failure(exc)
                        raise
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc
        except MigrationError as exc:  # a schema newer than this pmta-pipe: the setup's fault
            raise SetupFault(exc.message, exc.hint) from exc
        self._backoff.recovered()
        return result

    def _after_failure(self, exc: BaseException) -> None:
        fault = faults.classify(exc)
        if fault is None:
            return
        self._drop_connection()
        if faults.sqlstate(exc) in faults.SCHEMA_MISSING:
            if self.hold_setup_faults:
                log.warning("the pmta schema is missing: migrating again before the next try")
            self.migrate = True
            self._days.clear()

    @staticmethod
    def _wrap(exc: psycopg.Error) -> Exception:
        if faults.is_transient(exc):
            return DatabaseUnavailable(
                f"database unavailable: {first_line(exc)}",
                "the records stay in the spool; run 'pmta-pipe replay' when it is back",
            )
        return SetupFault(
            f"the database refuses the batch: {faults.describe(exc)}",
            faults.setup_hint(exc),
            faults.sqlstate(exc),
        )

    def _ensure_partitions(self, conn: psycopg.Connection[Any], days: set[date]) -> None:
        """Create the partitions ``days`` need, except for sealed (pruned) days, in a short
        transaction of its own; a day known sealed is looked up again (it may be reopened)."""
        missing = sorted(days - self._days - self._sealed)
        recheck = sorted(days & self._sealed)
        if not missing and not recheck:
            return
        found = conn.execute(_SEALED, ([*missing, *recheck],)).fetchall()
        sealed = {row[0] for row in found}
        self._sealed.difference_update(set(recheck) - sealed)  # reopened meanwhile
        self._sealed.update(sealed)
        make = [d for d in (*missing, *recheck) if d not in sealed]
        if make:
            conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (make,))
        conn.commit()
        self._days.update(make)

    def _load_once(
        self,
        batch: ParsedBatch,
        header_line: str | None,
        received_at: datetime,
        bookkeeping: Bookkeeping | None,
    ) -> LoadResult:
        conn = self.connection()
        self._ensure_partitions(conn, batch.days)
        rows = _Rows(batch.copy_format, batch.lines, batch.ids, batch.times, batch.raw,
                     batch.positions)  # fmt: skip
        if batch.days & self._sealed:  # records of pruned days: duplicates, not loaded
            rows = rows.take([j for j, t in enumerate(rows.times) if not self._is_sealed(t)])
        # the usual case, without a savepoint: BEGIN, COPY, the bookkeeping, COMMIT; a
        # duplicate in the fast way: once more by the upsert; a refused record (the
        # transaction rolled back whole: only the insert was in it): in savepoints
        while rows.ids:
            try:
                return self._transaction(conn, batch, rows, header_line, received_at,
                                         bookkeeping, isolate=False)  # fmt: skip
            except _Isolate as exc:
                if not exc.duplicate:
                    break
        return self._transaction(conn, batch, rows, header_line, received_at, bookkeeping,
                                 isolate=True)  # fmt: skip

    def _transaction(
        self,
        conn: psycopg.Connection[Any],
        batch: ParsedBatch,
        rows: _Rows,
        header_line: str | None,
        received_at: datetime,
        bookkeeping: Bookkeeping | None,
        *,
        isolate: bool,
    ) -> LoadResult:
        """The batch's one transaction. Without ``isolate``, the rows are COPYed into
        pmta.events with no savepoint, and a duplicate or a refused record raises
        ``_Isolate`` (the transaction rolled back); with it, in savepoints that isolate
        a refused record and take the upsert way on a duplicate."""
        result = LoadResult(records=batch.records)
        with conn.transaction(), conn.cursor() as cur:
            inserted: Sequence[tuple[str, str]] = []
            refused: list[_Refused] = []
            if rows.ids and not isolate:
                inserted = self._insert_plain(cur, rows)
            elif rows.ids:
                inserted, refused = self._insert_isolating(conn, cur, rows)
            parser_rejects = [(r, None) for r in batch.rejects]
            all_rejects = [*parser_rejects, *((x.reject, x.sqlstate) for x in refused)]
            result.inserted = len(inserted)
            result.rejected = len(all_rejects)
            result.rejected_by_database = len(refused)
            result.duplicates = len(batch.ids) - len(refused) - len(inserted)
            # the rejects and the bookkeeping (several statements) in one round trip
            with conn.pipeline():
                if all_rejects:
                    cur.executemany(
                        _REJECT,
                        [
                            (
                                reject_id(r.raw), batch.source, r.reason, r.raw, r.position,
                                header_line, received_at,
                                "parser" if state is None else "database", state,
                            )
                            for r, state in all_rejects
                        ],
                    )  # fmt: skip
                if bookkeeping is not None:
                    bookkeeping(conn, result, inserted)
        for x in refused:  # committed: now they are in pmta.rejects
            # the server's message may quote the value (an address): it is in
            # pmta.rejects.reason; the log gets the position and the SQLSTATE only
            log.warning("record %s refused by the database (SQLSTATE %s): stored in "
                        "pmta.rejects", x.reject.position, x.sqlstate)  # fmt: skip
        return result

    def _is_sealed(self, time_logged: str) -> bool:
        parsed = values.parse_time(time_logged)
        return parsed is not None and parsed[1] in self._sealed

    def _insert_isolating(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], rows: _Rows
    ) -> tuple[Sequence[tuple[str, str]], list[_Refused]]:
        """Insert ``rows`` in a savepoint; a record PostgreSQL refuses is isolated by
        halving, each half in a savepoint."""
        try:
            with conn.transaction():  # a savepoint inside the batch's transaction
                return self._insert_rows(conn, cur, rows), []
        except psycopg.Error as exc:
            if isinstance(exc, pg_errors.CheckViolation) and exc.diag.constraint_name is None:
                raise _PartitionMissing from exc  # "no partition of relation found for row"
            if not faults.is_record_fault(exc):
                raise
            if len(rows.ids) == 1:
                reason = f"refused by the database: {first_line(exc)}"
                reject = Reject(rows.raws[0], reason, rows.positions[0])
                return [], [_Refused(reject, exc.sqlstate)]
        half = len(rows.ids) // 2
        log.info("splitting a batch of %d records to isolate a refused record", len(rows.ids))
        a_rows, a_refused = self._insert_isolating(conn, cur, rows.part(0, half))
        b_rows, b_refused = self._insert_isolating(conn, cur, rows.part(half, len(rows.ids)))
        return [*a_rows, *b_rows], [*a_refused, *b_refused]

    def _insert_plain(self, cur: psycopg.Cursor[Any], rows: _Rows) -> Sequence[tuple[str, str]]:
        """Insert ``rows`` outside any savepoint, by COPY into pmta.events (the fast way)
        or the upsert; ``_Isolate`` on a duplicate in the fast way (the upsert way from
        now on) or on a record PostgreSQL refuses."""
        fast = self.fast
        try:
            if not fast:
                return self._upsert(cur, rows, "".join(rows.lines), clear=False)
            with cur.copy(_copy_statement("pmta.events", rows.fmt)) as copy:
                copy.write("".join(rows.lines))
        except psycopg.Error as exc:
            if fast and isinstance(exc, pg_errors.UniqueViolation):
                self.fast = False
                log.debug("batch has records already loaded: taking the upsert way")
                raise _Isolate(duplicate=True) from exc
            if isinstance(exc, pg_errors.CheckViolation) and exc.diag.constraint_name is None:
                raise _PartitionMissing from exc  # "no partition of relation found for row"
            if faults.is_record_fault(exc):
                raise _Isolate(duplicate=False) from exc
            raise
        return list(zip(rows.times, rows.ids, strict=True))

    def _insert_rows(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], rows: _Rows
    ) -> Sequence[tuple[str, str]]:
        """Insert ``rows`` into pmta.events; return ``(time_logged, record_id)`` of those
        inserted."""
        data = "".join(rows.lines)
        if self.fast:
            try:
                with conn.transaction():
                    with cur.copy(_copy_statement("pmta.events", rows.fmt)) as copy:
                        copy.write(data)
                    return list(zip(rows.times, rows.ids, strict=True))
            except pg_errors.UniqueViolation:
                self.fast = False
                log.debug("batch has records already loaded: taking the upsert way")
        return self._upsert(cur, rows, data, clear=True)

    def _upsert(
        self, cur: psycopg.Cursor[Any], rows: _Rows, data: str, *, clear: bool
    ) -> Sequence[tuple[str, str]]:
        """COPY into batch_stage, INSERT … ON CONFLICT DO NOTHING RETURNING; ``clear``
        empties batch_stage for another insert in the same transaction (COMMIT does
        it otherwise: ON COMMIT DELETE ROWS)."""
        with cur.copy(_copy_statement("batch_stage", rows.fmt)) as copy:
            copy.write(data)
        cur.execute(_UPSERT)
        new_ids = {record_id.hex for (record_id,) in cur.fetchall()}
        if clear:
            cur.execute("DELETE FROM batch_stage")
        if len(new_ids) == len(rows.ids):
            self.fast = True  # no duplicates: back to the fast way for the next batch
        inserted = []
        for t, record_id in zip(rows.times, rows.ids, strict=True):
            if record_id in new_ids:  # a record twice in the batch was inserted once
                new_ids.discard(record_id)
                inserted.append((t, record_id))
        return inserted


@dataclass(frozen=True)
class _Rows:
    """The rows to insert, as the parser prepared them: their COPY lines (all in one
    format), ids, times, raw texts and positions, in the same order."""

    fmt: str
    lines: Sequence[str]
    ids: Sequence[str]
    times: Sequence[str]
    raws: Sequence[str]
    positions: Sequence[int]

    def part(self, start: int, stop: int) -> _Rows:
        return _Rows(self.fmt, self.lines[start:stop], self.ids[start:stop],
                     self.times[start:stop], self.raws[start:stop],
                     self.positions[start:stop])  # fmt: skip

    def take(self, keep: Sequence[int]) -> _Rows:
        def pick(column: Sequence[T]) -> list[T]:
            return [column[j] for j in keep]

        return _Rows(self.fmt, pick(self.lines), pick(self.ids), pick(self.times),
                     pick(self.raws), pick(self.positions))  # fmt: skip
