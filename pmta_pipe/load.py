"""Load parsed batches into PostgreSQL: COPY into staging, one set-based upsert, in one transaction.

For each batch:

1. the daily partitions it needs are created in a short transaction of their own
   (``pmta.ensure_partitions``), so that loaders never hold partition locks;
2. in one transaction, the rows go into ``pmta.events`` by one of two ways, and the
   temporary table ``batch_inserted`` ends up holding exactly the rows inserted in
   this batch; then the report rollups of those rows (``pmta_pipe.rollups``: their
   groups, counted ahead when every row is new, are COPYed into ``batch_rollups``
   and upserted), the batch's rejects, commit.

   * fast way (new records, the usual case): ``COPY`` into ``batch_inserted``, then a
     plain ``INSERT INTO pmta.events SELECT * FROM batch_inserted`` inside a
     savepoint. When it hits a ``unique_violation`` (a record already loaded, or twice
     in the batch) the savepoint is rolled back and the batch takes the safe way;
   * safe way: ``COPY`` into ``batch_stage``; one ``INSERT … ON CONFLICT DO NOTHING``
     into ``pmta.events``, keeping the rows actually inserted in ``batch_inserted``.

   Both insert in key order, so that concurrent loaders take locks in the same order.
   After a batch that had duplicates the loader keeps to the safe way (a replay
   would otherwise do every insert twice) until a batch comes with none.

The COPY data is PostgreSQL's text format (tab-separated, empty = NULL) when no
value holds a tab, line break, carriage return or backslash, which is checked for
the whole batch at once by counting; otherwise CSV. Text is about ten times
cheaper to produce in Python (one ``str.join`` per row); see ``docs/performance.md``.

``PipelinedLoader`` runs a ``Loader`` in a thread of its own behind a bounded queue,
so that the caller parses the next batch while this one is loaded (psycopg
releases the GIL while it waits for the server).

Transient errors (connection lost, server shut down, serialization failure,
deadlock: decided from psycopg's exception classes) are retried with tenacity,
exponential backoff with jitter, on a new connection. A permanent error (a value
PostgreSQL refuses that the parser accepted) is not retried blindly: the batch is
split in halves until the failing record is alone, and that record goes to
``pmta.rejects`` with the database's message; every other record is loaded.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
import tenacity
from psycopg import errors as pg_errors

from pmta_pipe import db, rollups
from pmta_pipe.errors import DatabaseUnavailable, first_line
from pmta_pipe.fields import EVENT_COLUMNS
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import ParsedBatch, Reject

log = logging.getLogger(__name__)

_COLS = ", ".join(EVENT_COLUMNS)
_SETUP = (
    "SET TIME ZONE 'UTC'",
    "SET temp_buffers = '32MB'",  # before the first use of a temporary table
    "CREATE TEMP TABLE IF NOT EXISTS batch_stage (LIKE pmta.events) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS batch_inserted (LIKE pmta.events) ON COMMIT DELETE ROWS",
    rollups.CREATE_TEMP_TABLE,
)
_COPY_CSV = "COPY {table} ({columns}) FROM STDIN (FORMAT csv)"
_COPY_TEXT = "COPY {table} ({columns}) FROM STDIN (FORMAT text, NULL '')"
_FAST_INSERT = (
    "INSERT INTO pmta.events SELECT * FROM batch_inserted ORDER BY time_logged, record_id"
)
_FAST_UNDO = ("INSERT INTO batch_stage SELECT * FROM batch_inserted", "DELETE FROM batch_inserted")
_TEXT_UNSAFE = ("\\", "\r")
_RECORD_ID = EVENT_COLUMNS.index("record_id")
_UPSERT = f"""
    WITH ins AS (
        INSERT INTO pmta.events ({_COLS})
        SELECT {_COLS} FROM batch_stage ORDER BY time_logged, record_id
        ON CONFLICT DO NOTHING
        RETURNING *
    )
    INSERT INTO batch_inserted SELECT * FROM ins
    RETURNING record_id
"""
_REJECT = """
    INSERT INTO pmta.rejects (reject_id, source, reason, raw_line, position, header_line)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (reject_id) DO NOTHING
"""

# psycopg exception classes that mean "try again, maybe on a new connection"
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # connection lost or refused, admin shutdown, cannot connect now
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch may succeed."""
    return isinstance(exc, TRANSIENT)


@dataclass
class LoadResult:
    """What one batch did to the database."""

    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def add(self, other: LoadResult) -> None:
        self.records += other.records
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected += other.rejected


def render_copy(rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    """COPY data for ``rows`` and its format: ``("text", data)`` or ``("csv", data)``."""
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
    """Logs once per state change (down / back), not once per attempt."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            exc = state.outcome.exception() if state.outcome else None
            log.warning("database unavailable (%s); retrying with backoff", first_line(exc))

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("database back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None


class Loader:
    """Owns one connection and loads batches through it, reconnecting as needed."""

    def __init__(
        self,
        conninfo: str,
        *,
        retry_for: float | None = None,
        max_wait: float = 30.0,
        after_load: Callable[[psycopg.Connection[Any], LoadResult], None] | None = None,
        interrupt: threading.Event | None = None,
        migrate: bool = False,
    ) -> None:
        self.conninfo = conninfo
        self.migrate = migrate  # bring the schema up to date before the first connection
        self.retry_for = retry_for  # seconds before giving up; None = never
        self.max_wait = max_wait
        self.after_load = after_load  # runs inside the batch transaction
        # once set, transient errors are not retried any more and backoff sleeps end
        self.interrupt = interrupt
        self._conn: psycopg.Connection[Any] | None = None
        self._days: set[date] = set()
        self._backoff = _Backoff()
        self.fast = True  # try the fast way first (see the module docstring)

    # -- connection -------------------------------------------------------
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if self.migrate:
                with db.connect(self.conninfo, autocommit=True) as admin:
                    apply_migrations(admin)
                self.migrate = False
            conn = db.connect(self.conninfo, autocommit=True)
            for stmt in _SETUP:
                conn.execute(stmt)
            conn.autocommit = False
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

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
            retry=tenacity.retry_if_exception(is_transient),
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
        retry_for: float | None = -1.0,
        deltas: rollups.Deltas | None = None,
    ) -> LoadResult:
        """Load ``batch`` exactly once; retry transient errors (``retry_for`` seconds, None = ever).

        ``deltas``, when given, are the rollups of all of ``batch.rows``, counted
        ahead (see ``PipelinedLoader``); they are used when every row is new.
        Raises ``DatabaseUnavailable`` when the database stays away longer than that.
        """
        stop_after = self.retry_for if retry_for == -1.0 else retry_for
        try:
            for attempt in self._retrying(stop_after):
                with attempt:
                    try:
                        result = self._load_splitting(
                            batch.rows, batch.raw, batch.positions, batch.rejects,
                            batch.days, batch.source, header_line, deltas,
                        )  # fmt: skip
                    except BaseException as exc:
                        if is_transient(exc):
                            self._drop_connection()
                        raise
        except BaseException as exc:
            if is_transient(exc):
                raise DatabaseUnavailable(
                    f"database unavailable: {first_line(exc)}",
                    "the records stay in the spool; run 'pmta-pipe replay' when it is back",
                ) from exc
            raise
        self._backoff.recovered()
        return result

    def _load_splitting(
        self,
        rows: list[Sequence[str]],
        raws: list[str],
        positions: list[int],
        rejects: list[Reject],
        days: set[date],
        source: str,
        header_line: str | None,
        deltas: rollups.Deltas | None = None,
    ) -> LoadResult:
        try:
            try:
                return self._load_once(rows, rejects, days, source, header_line, deltas)
            except pg_errors.CheckViolation:
                # "no partition found for row": a partition this process created was
                # dropped since (pmta-pipe prune); forget what we knew and try again
                self._days.clear()
                return self._load_once(rows, rejects, days, source, header_line, deltas)
        except psycopg.Error as exc:
            if is_transient(exc):
                raise
            conn = self._conn
            if conn is not None and not conn.closed:
                conn.rollback()
            if len(rows) <= 1:
                reason = f"refused by the database: {first_line(exc)}"
                moved = [Reject(raws[0], reason, positions[0])] if rows else []
                # the server's message may quote the value (an address): it goes to
                # pmta.rejects.reason, the log gets the position and SQLSTATE only
                log.warning("record %s refused by the database (SQLSTATE %s); see pmta.rejects",
                            positions[0] if rows else "?", exc.sqlstate)  # fmt: skip
                return self._load_once([], [*rejects, *moved], set(), source, header_line)
            half = len(rows) // 2
            log.info("splitting a batch of %d records to isolate a refused record", len(rows))
            first = self._load_splitting(
                rows[:half], raws[:half], positions[:half], rejects, days, source, header_line
            )
            second = self._load_splitting(
                rows[half:], raws[half:], positions[half:], [], days, source, header_line
            )
            first.add(second)
            return first

    def _ensure_partitions(self, conn: psycopg.Connection[Any], days: set[date]) -> None:
        missing = sorted(days - self._days)
        if not missing:
            return
        conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (missing,))
        conn.commit()
        self._days.update(missing)

    def _load_once(
        self,
        rows: Sequence[Sequence[str]],
        rejects: Sequence[Reject],
        days: set[date],
        source: str,
        header_line: str | None,
        deltas: rollups.Deltas | None = None,
    ) -> LoadResult:
        conn = self.connection()
        self._ensure_partitions(conn, days)
        result = LoadResult(records=len(rows) + len(rejects))
        try:
            with conn.cursor() as cur:
                if rows:
                    inserted = self._insert_rows(cur, rows)
                    result.inserted = len(inserted)
                    if deltas is None or len(inserted) < len(rows):
                        deltas = rollups.Deltas.of(inserted)  # only this batch's new rows
                    self._add_rollups(cur, deltas)
                if rejects:
                    cur.executemany(
                        _REJECT,
                        [
                            (reject_id(r.raw), source, r.reason, r.raw, r.position, header_line)
                            for r in rejects
                        ],
                    )
                result.rejected = len(rejects)
                result.duplicates = len(rows) - result.inserted
                if self.after_load is not None:
                    self.after_load(conn, result)
            conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._drop_connection()
            raise
        return result

    @staticmethod
    def _add_rollups(cur: psycopg.Cursor[Any], deltas: rollups.Deltas) -> None:
        """Add the batch's new rows, counted in ``deltas``, to the report rollups."""
        groups = deltas.rows()
        if not groups:
            return
        fmt, data = render_copy(groups)
        with cur.copy(_copy_statement("batch_rollups", fmt, rollups.COLUMNS)) as copy:
            copy.write(data)
        cur.execute(rollups.APPLY)

    def _insert_rows(
        self, cur: psycopg.Cursor[Any], rows: Sequence[Sequence[str]]
    ) -> Sequence[Sequence[str]]:
        """Insert ``rows`` into pmta.events; return those inserted (also in batch_inserted)."""
        fmt, data = render_copy(rows)
        if self.fast:
            with cur.copy(_copy_statement("batch_inserted", fmt)) as copy:
                copy.write(data)
            cur.execute("SAVEPOINT pmta_fast")
            try:
                cur.execute(_FAST_INSERT)
            except pg_errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT pmta_fast")
                for stmt in _FAST_UNDO:
                    cur.execute(stmt)
                self.fast = False
                log.debug("batch has records already loaded: taking the upsert way")
            else:
                cur.execute("RELEASE SAVEPOINT pmta_fast")
                return rows
        else:
            with cur.copy(_copy_statement("batch_stage", fmt)) as copy:
                copy.write(data)
        cur.execute(_UPSERT)
        new_ids = {record_id.hex for (record_id,) in cur.fetchall()}
        if len(new_ids) == len(rows):
            self.fast = True  # no duplicates: back to the fast way for the next batch
        inserted = []
        for row in rows:  # a record twice in the batch was inserted once: count it once
            if row[_RECORD_ID] in new_ids:
                new_ids.discard(row[_RECORD_ID])
                inserted.append(row)
        return inserted


_DONE = object()


class PipelinedLoader:
    """A ``Loader`` in a thread of its own: ``submit`` returns once the batch is queued.

    The queue holds at most ``depth`` batches, so memory stays bounded and a slow
    database slows the caller down (back-pressure). ``before_load(tag)`` runs in the
    loading thread just before each batch (for a hook that must know which batch the
    transaction is for), and ``on_loaded(tag, result)`` runs
    in the loading thread right after each batch's commit, in submission order: a
    spool can release the batch there. The first error of the loading thread (such
    as ``DatabaseUnavailable``) stops it; ``submit`` and ``close`` raise it; batches
    not yet committed are then not reported to ``on_loaded``.
    """

    def __init__(
        self,
        loader: Loader,
        *,
        depth: int = 2,
        on_loaded: Callable[[object, LoadResult], None] | None = None,
        before_load: Callable[[object], None] | None = None,
    ) -> None:
        self.loader = loader
        self.on_loaded = on_loaded
        self.before_load = before_load
        self.total = LoadResult()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="pmta-pipe-loader", daemon=True)
        self._thread.start()

    def submit(self, batch: ParsedBatch, header_line: str | None, tag: object = None) -> None:
        """Queue ``batch`` for loading; blocks while ``depth`` batches wait already.

        The batch's rollups are counted here, in the caller's thread, while the
        loading thread waits on the database for the previous batch.
        """
        deltas = rollups.Deltas.of(batch.rows)
        while True:
            self._raise_error()
            try:
                self._queue.put((batch, header_line, tag, deltas), timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> LoadResult:
        """Load what was submitted, stop the thread; return the totals (or raise its error)."""
        while self._thread.is_alive():
            try:
                self._queue.put(_DONE, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()
        self.loader.close()
        self._raise_error()
        return self.total

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            batch, header_line, tag, deltas = item
            try:
                if self.before_load is not None:
                    self.before_load(tag)
                result = self.loader.load(batch, header_line, deltas=deltas)
                self.total.add(result)
                if self.on_loaded is not None:
                    self.on_loaded(tag, result)
            except BaseException as exc:  # handed to the submitting thread
                self.error = exc
                return
