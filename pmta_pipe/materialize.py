"""The report rollups' materializer: closed UTC hours of ``pmta.events`` counted in bulk.

Design (the continuous aggregates of time-series databases; migration 0009 and
``sql/views/05_rollups.sql`` hold the SQL, docs/reports.md the user's view):

* ``pmta.rollup_state.watermark``: every event with ``time_logged`` below it is counted
  in the ``pmta.rollup_*_materialized`` tables, unless its hour is in
  ``pmta.rollup_invalidations``. The views ``pmta.rollup_*`` add the tail
  (``time_logged >= watermark``) and the invalidated days, counted live, so the
  reports are exact at every moment; materializing only makes them cheap.
* ``threshold`` (the invalidation threshold, ``>= watermark``): a loader that inserts
  events below it logs their hours (``pmta.note_inserted``, in the batch's
  transaction, under ``FOR KEY SHARE`` of the state row).
* One step, serialized by a session advisory lock (a second materializer skips:
  ``busy``), in two transactions:

  1. ``pmta.rollup_raise_threshold(grace)``, short: the threshold goes up to the start
     of the UTC hour of ``min(now(), newest time_logged) - grace``. Its ``FOR UPDATE``
     waits for loaders that hold the row, so every loader that commits after it logs
     against the new threshold;
  2. ``pmta.rollup_materialize(max_hours, max_days)``, one REPEATABLE READ transaction:
     re-counts the invalidated days it sees (at most ``max_days``), counts the hours
     ``[watermark, min(threshold, watermark + max_hours))`` with one ``GROUP BY`` per
     table, deletes exactly the log rows it saw, moves the watermark. A kill at any
     point leaves the previous state whole.

``run`` repeats steps until caught up (``pmta-pipe rollup``, ``prune``);
``Background`` runs one step every ``interval`` seconds in a thread with its own
connection (``ingest``, ``import``): a fault is logged and retried at the next tick,
never raised into the load. While batches are committing (one within the last two
intervals, read from the newest ``pmta.ingest_batches`` row), a step counts at most
``LOADING_MAX_HOURS`` new hours and ``LOADING_MAX_DAYS`` invalidated days, so that
a burst keeps the CPUs; once the load is idle the steps catch up in full. ``rebuild``
logs hours as invalidated (``pmta.rollup_invalidate``) and runs the steps that count
them again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import IsolationLevel

from pmta_pipe import db
from pmta_pipe.errors import first_line

log = logging.getLogger(__name__)

#: the session advisory lock of a materializer (the SQL function takes the same key
#: as a transaction lock, which a session holding it gets again)
LOCK = "SELECT pg_try_advisory_lock(hashtext('pmta.rollup_materialize'))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('pmta.rollup_materialize'))"
MAX_HOURS = 24  # new hours counted per step: a backfill never makes one endless transaction
MAX_DAYS = 4  # invalidated days re-counted per step
FAULT_LOG_SECONDS = 300.0  # a lasting fault of the background step is logged this often
#: while a load is busy (a batch committed within ``LOADING_TICKS`` intervals), a
#: background step counts at most this many new hours and invalidated days: it keeps
#: the two CPUs to the load, and the lag it leaves is counted live by the views
LOADING_MAX_HOURS = 1
LOADING_MAX_DAYS = 1
LOADING_TICKS = 2.0
LAST_COMMIT = (
    "SELECT committed_at > now() - %s FROM pmta.ingest_batches ORDER BY batch_id DESC LIMIT 1"
)


@dataclass
class Step:
    """What one step did (``status``: done, more, busy, empty)."""

    status: str
    watermark_from: datetime | None = None
    watermark_to: datetime | None = None
    hours: int = 0
    redone_hours: int = 0
    redone_days: int = 0
    rows: int = 0


@dataclass
class RollupResult:
    """What ``run`` (``pmta-pipe rollup``) did."""

    steps: int = 0
    hours: int = 0
    redone_hours: int = 0
    redone_days: int = 0
    rows: int = 0
    busy: bool = False
    caught_up: bool = False
    watermark: datetime | None = None
    threshold: datetime | None = None
    invalidated: int = 0  # hours logged by a rebuild
    seconds: float = 0.0
    last: list[Step] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "hours": self.hours, "redone_hours": self.redone_hours,
            "redone_days": self.redone_days, "rows": self.rows, "busy": self.busy,
            "caught_up": self.caught_up, "watermark": _iso(self.watermark),
            "threshold": _iso(self.threshold), "invalidated": self.invalidated,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


def step(
    conn: psycopg.Connection[Any], *, grace: float, max_hours: int = MAX_HOURS,
    max_days: int = MAX_DAYS, at_least: datetime | None = None,
) -> Step:  # fmt: skip
    """One step (both phases); ``conn`` in autocommit mode, holding the session lock.
    ``at_least``: raise the threshold to that hour at least (``prune``'s cut-off)."""
    with conn.transaction():
        conn.execute(
            "SELECT pmta.rollup_raise_threshold(%s, %s)", (timedelta(seconds=grace), at_least)
        )
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT * FROM pmta.rollup_materialize(%s, %s)", (max_hours, max_days)
            ).fetchone()
    finally:
        conn.isolation_level = None
    assert row is not None
    status, w_from, w_to, hours, redone_hours, redone_days, rows = row
    return Step(status, w_from, w_to, hours, redone_hours, redone_days, int(rows))


def _state(conn: psycopg.Connection[Any], out: RollupResult) -> None:
    row = conn.execute("SELECT watermark, threshold FROM pmta.rollup_state").fetchone()
    if row is not None:
        out.watermark, out.threshold = row


def run(
    conn: psycopg.Connection[Any],
    *,
    grace: float,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    max_hours: int = MAX_HOURS,
    max_days: int = MAX_DAYS,
    at_least: datetime | None = None,
) -> RollupResult:
    """Steps until caught up (or ``max_steps`` / ``max_seconds``); ``conn`` in autocommit.

    Another materializer holding the lock: returns at once with ``busy``."""
    started = time.monotonic()
    out = RollupResult()
    got = conn.execute(LOCK).fetchone()
    if not got or not got[0]:
        out.busy = True
        _state(conn, out)
        return out
    try:
        while True:
            s = step(conn, grace=grace, max_hours=max_hours, max_days=max_days, at_least=at_least)
            out.steps += 1
            out.hours += s.hours
            out.redone_hours += s.redone_hours
            out.redone_days += s.redone_days
            out.rows += s.rows
            out.last = [s]
            if s.status == "busy":  # a session took the lock in SQL meanwhile
                out.busy = True
                break
            if s.status in ("done", "empty"):
                out.caught_up = True
                break
            if max_steps is not None and out.steps >= max_steps:
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute(UNLOCK)
    _state(conn, out)
    out.seconds = time.monotonic() - started
    return out


def rebuild(conn: psycopg.Connection[Any], day: date | None, *, grace: float) -> RollupResult:
    """Count ``day`` (``None``: every day) again from ``pmta.events``; days ``prune``
    dropped keep their rollups. The views stay exact meanwhile (invalidated days are
    counted live)."""
    with conn.transaction():
        conn.execute("SELECT pmta.rollup_raise_threshold(%s)", (timedelta(seconds=grace),))
        if day is None:
            start: Any = conn.execute("SELECT min(time_logged) FROM pmta.events").fetchone()
            lo, hi = (start[0] if start else None), datetime.max.replace(tzinfo=timezone.utc)
        else:
            lo = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            hi = lo + timedelta(days=1)
        got = conn.execute("SELECT pmta.rollup_invalidate(%s, %s)", (lo, hi)).fetchone()
    out = run(conn, grace=grace)
    out.invalidated = int(got[0]) if got else 0
    return out


TAIL_COUNT_LIMIT = 1_000_000  # status counts the tail's rows up to this many (an index range)
STALE_SECONDS = 3600.0  # status: no step for this long while batches load is a problem


def status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The materializer's state for ``pmta-pipe status``, without a scan of the events:
    the watermark, the tail's age and rows (counted by the primary key, up to
    ``TAIL_COUNT_LIMIT``), the invalidated hours, and whether the steps stopped while
    batches are loaded (``stale``: a failing background step, no cron job)."""
    row = conn.execute(
        """SELECT s.watermark, s.threshold, s.materialized_at,
                  extract(epoch FROM now() - s.watermark),
                  extract(epoch FROM now() - s.materialized_at),
                  (SELECT count(DISTINCT i.hour) FROM pmta.rollup_invalidations i
                   WHERE i.hour < s.watermark),
                  (SELECT count(*) FROM (SELECT 1 FROM pmta.events e
                                         WHERE e.time_logged >= coalesce(s.watermark, '-infinity')
                                         LIMIT %s) t),
                  EXISTS (SELECT 1 FROM pmta.ingest_batches b
                          WHERE b.committed_at > now() - interval '10 minutes'
                            AND b.inserted > 0
                            AND b.last_time_logged >= coalesce(s.watermark, '-infinity'))
           FROM pmta.rollup_state s""",
        (TAIL_COUNT_LIMIT,),
    ).fetchone()
    if row is None:
        return {}
    watermark, threshold, at, age, since_step, invalidated, tail, loading = row
    return {
        "watermark": _iso(watermark),
        "threshold": _iso(threshold),
        "materialized_at": _iso(at),
        "tail_seconds": None if age is None else round(float(age), 1),
        "tail_records": int(tail),
        "tail_records_capped": int(tail) >= TAIL_COUNT_LIMIT,
        "invalidated_hours": int(invalidated or 0),
        "stale": bool(loading) and since_step is not None and float(since_step) > STALE_SECONDS,
    }


class Background:
    """One materializer step every ``interval`` seconds, in a thread with its own
    connection; never raises into the load: a fault is logged, and tried again."""

    def __init__(self, conninfo: str, *, interval: float, grace: float) -> None:
        self.conninfo = conninfo
        self.interval = interval
        self.grace = grace
        self.steps = 0
        self.error: str | None = None  # the last fault, until a step succeeds
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._logged = 0.0
        self._thread = threading.Thread(target=self._run, name="pmta-pipe-rollup", daemon=True)

    def start(self) -> Background:
        if self.interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            conn = self._conn
            if conn is not None and not conn.closed:
                with contextlib.suppress(Exception):
                    conn.cancel()
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    def loading(self) -> bool:
        """Whether a batch committed within the last ``LOADING_TICKS`` intervals."""
        assert self._conn is not None
        wait = timedelta(seconds=max(self.interval * LOADING_TICKS, 1.0))
        row = self._conn.execute(LAST_COMMIT, (wait,)).fetchone()
        return bool(row and row[0])

    def tick(self) -> None:
        """One step; a fault is logged (once, then every few minutes) and kept in ``error``."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.conninfo, autocommit=True)
            if self.loading():
                got = run(self._conn, grace=self.grace, max_steps=1,
                          max_hours=LOADING_MAX_HOURS, max_days=LOADING_MAX_DAYS)  # fmt: skip
            else:
                got = run(self._conn, grace=self.grace, max_steps=1)
            self.steps += got.steps
            if self.error is not None:
                log.warning("rollups: materializing again (%s is over)", self.error)
                self.error = None
        except Exception as exc:  # never into the load: logged, tried at the next tick
            if self._stop.is_set():
                return
            message = first_line(exc)
            now = time.monotonic()
            if message != self.error or now - self._logged >= FAULT_LOG_SECONDS:
                log.warning("rollups: materializing failed (%s); the views count the tail live "
                            "meanwhile, tried again in %g s", message, self.interval)  # fmt: skip
                self._logged = now
            self.error = message
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def format_result(r: RollupResult) -> str:
    """The lines ``pmta-pipe rollup`` prints."""
    if r.busy and not r.steps:
        return (f"busy: another materializer is running; watermark {_iso(r.watermark)}"
                f" (threshold {_iso(r.threshold)})")  # fmt: skip
    lines = []
    if r.invalidated:
        lines.append(f"rebuild: {r.invalidated} hours to count again")
    lines.append(
        f"rollups: {r.steps} steps, {r.hours} new hours materialized, {r.redone_hours}"
        f" invalidated hours ({r.redone_days} days) counted again, {r.rows} rows written"
        f" in {r.seconds:.1f} s"
    )
    state = "caught up" if r.caught_up else "not caught up (run it again)"
    lines.append(f"watermark: {_iso(r.watermark)} (threshold {_iso(r.threshold)}), {state}")
    return "\n".join(lines)
