"""Retention (``pmta-pipe prune``): drop old raw events whole, thin old rollups and rejects.

Cut-off: with ``--keep-days N``, the raw events of today (UTC) and of the N days
before it are kept; the daily partition ``pmta.events_YYYYMMDD`` of any earlier day
(whose whole day ended N or more days ago) is dropped with ``DROP TABLE``: no
row-by-row ``DELETE``, no dead tuples, the disk space is returned at once.
Partitions are found in the catalog (children of ``pmta.events`` named
``events_YYYYMMDD``); nothing else is touched.

Sealing: the transaction that drops a day's partition adds the day to
``pmta.pruned_days``; the loader counts records of a sealed day as duplicates and
does not load them, because the day's rollups count them already (a backfill of old
files would otherwise double the reports). ``reopen_day`` (``--reopen DAY``) unseals
a day and deletes its rollups in one transaction, for an import that rebuilds it.

Materialized first: the report rollups of a day are counted from its raw events
(``materialize``), so ``prune`` runs the materializer to the end before it drops
anything, and the transaction that drops a partition checks, under the drop's
lock, that the day lies below the watermark with no hour to count again
(``pmta.rollup_invalidations``); otherwise it rolls back and the day is left for the
next run (``unmaterialized``, exit 1). The reports are the same before and after.

Rejects (``pmta.rejects``) follow the raw events: a reject received before the
cut-off is deleted too (they are raw records, with e-mail addresses).

Rollups, which the report views read, are kept much longer (``--keep-rollup-days
M``, default 730). Contract with the rollup tables: every table in schema ``pmta``
whose name starts with ``rollup_`` and that has a column ``bucket timestamptz``
(the start of its UTC hour or day) is a rollup; rows whose bucket is before the
rollup cut-off (UTC midnight M days ago) are deleted. New rollup tables need no
change here.

Concurrency: dropping a partition takes an ACCESS EXCLUSIVE lock on ``pmta.events``,
and a waiting request for it would queue every loader behind it. So each drop runs
in its own short transaction with ``lock_timeout`` (``LOCK_TIMEOUT_MS``); when the
lock is not granted in time the drop is retried ``ATTEMPTS`` times between batches
of the loaders and then skipped with a warning (exit 1; the next run drops it). A
loader that had cached a dropped partition retries its batch once (``load``).

``--dry-run`` counts what would go (exact row counts and sizes) and changes nothing.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pmta_pipe import db, materialize
from pmta_pipe.config import Settings
from pmta_pipe.errors import MigrationError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 2000
ATTEMPTS = 3
RETRY_PAUSE = 1.0
_PARTITION = re.compile(r"events_(\d{8})")

_PARTITIONS = """
    SELECT c.relname, pg_total_relation_size(c.oid)
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.inhparent = 'pmta.events'::regclass AND n.nspname = 'pmta'
    ORDER BY c.relname
"""
_ROLLUPS = """
    SELECT c.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'bucket' AND NOT a.attisdropped
    WHERE n.nspname = 'pmta' AND c.relname LIKE 'rollup\\_%' AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition AND a.atttypid = 'timestamptz'::regtype
    ORDER BY c.relname
"""


@dataclass
class Partition:
    name: str
    day: date
    size: int
    rows: int = 0


@dataclass
class PrunePlan:
    """What is older than the cut-offs."""

    events_before: date
    rollups_before: date
    partitions: list[Partition] = field(default_factory=list)
    rollups: dict[str, int] = field(default_factory=dict)  # table -> rows to delete
    rejects: int = 0


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def plan_prune(
    conn: psycopg.Connection[Any], keep_days: int, keep_rollup_days: int, today: date
) -> PrunePlan:
    """Find (and count) what the cut-offs would remove."""
    if conn.execute("SELECT to_regclass('pmta.events')").fetchone() in (None, (None,)):
        raise MigrationError("the database has no pmta schema", "run 'pmta-pipe migrate' first")
    plan = PrunePlan(today - timedelta(days=keep_days), today - timedelta(days=keep_rollup_days))
    for name, size in conn.execute(_PARTITIONS).fetchall():
        m = _PARTITION.fullmatch(name)
        if not m:
            continue
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
        if day < plan.events_before:
            part = Partition(name, day, int(size))
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM pmta.{}").format(sql.Identifier(name))
            ).fetchone()
            part.rows = int(row[0]) if row else 0
            plan.partitions.append(part)
    cutoff = _midnight(plan.rollups_before)
    for (table,) in conn.execute(_ROLLUPS).fetchall():
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM pmta.{} WHERE bucket < %s").format(sql.Identifier(table)),
            (cutoff,),
        ).fetchone()
        plan.rollups[table] = int(row[0]) if row else 0
    row = conn.execute(
        "SELECT count(*) FROM pmta.rejects WHERE received_at < %s",
        (_midnight(plan.events_before),),
    ).fetchone()
    plan.rejects = int(row[0]) if row else 0
    return plan


# a day whose rollups are not all materialized (checked after the DROP, which locks
# out the loaders of that day): its raw events must stay
_UNMATERIALIZED = """
    SELECT s.watermark IS NULL OR s.watermark < %(end)s
           OR EXISTS (SELECT 1 FROM pmta.rollup_invalidations i
                      WHERE i.hour >= %(start)s AND i.hour < %(end)s)
    FROM pmta.rollup_state s
"""


class _NotMaterialized(Exception):
    """The day's rollups are not all materialized: the drop is rolled back."""


_SEAL = (
    "INSERT INTO pmta.pruned_days (day, events) VALUES (%s, %s)"
    " ON CONFLICT (day) DO UPDATE SET pruned_at = now(),"
    " events = coalesce(pmta.pruned_days.events, 0) + excluded.events"
)


def _with_lock_timeout(
    conn: psycopg.Connection[Any],
    what: str,
    statement: sql.Composed,
    params: tuple[Any, ...] = (),
    seal: tuple[date, int] | None = None,
) -> bool:
    """Run ``statement`` (and, with ``seal``, seal that day) in a transaction of its own
    with a lock timeout; retry; False if busy."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_MS)}")
                conn.execute(statement, params or None)
                if seal is not None:
                    start = _midnight(seal[0])
                    window = {"start": start, "end": start + timedelta(days=1)}
                    row = conn.execute(_UNMATERIALIZED, window).fetchone()
                    if row is None or row[0]:
                        raise _NotMaterialized
                    conn.execute(_SEAL, seal)
            return True
        except pg_errors.LockNotAvailable:
            log.info("%s: busy (attempt %d of %d)", what, attempt, ATTEMPTS)
            if attempt < ATTEMPTS:
                time.sleep(RETRY_PAUSE)
    log.warning("%s: skipped, the table stayed busy; run prune again later", what)
    return False


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@dataclass
class PruneResult:
    """What ``prune`` removed (or, with ``dry_run``, would remove)."""

    plan: PrunePlan
    dry_run: bool
    dropped: list[Partition] = field(default_factory=list)
    busy: list[Partition] = field(default_factory=list)  # left for the next run
    unmaterialized: list[Partition] = field(default_factory=list)  # rollups not all counted
    rollups_deleted: dict[str, int] = field(default_factory=dict)
    busy_tables: int = 0

    @property
    def skipped(self) -> int:
        return len(self.busy) + len(self.unmaterialized) + self.busy_tables


def prune(
    settings: Settings, *, keep_days: int, keep_rollup_days: int, dry_run: bool
) -> PruneResult:
    """``pmta-pipe prune``: drop old raw-event partitions, rollup rows and rejects."""
    target = db.resolve_target(settings)
    today = datetime.now(timezone.utc).date()
    with db.connect(target.conninfo, autocommit=True) as conn:
        plan = plan_prune(conn, keep_days, keep_rollup_days, today)
        out = PruneResult(plan, dry_run)
        if plan.partitions and not dry_run:  # the rollups count every raw row first
            # the days it drops are closed: materialized whatever the grace
            materialize.run(
                conn, grace=settings.rollup_grace, at_least=_midnight(plan.events_before)
            )
        for part in plan.partitions:
            # the day is sealed in the transaction that drops it: its records, imported
            # again, are duplicates from then on (its rollups keep counting them)
            try:
                ok = dry_run or _with_lock_timeout(
                    conn, f"pmta.{part.name}",
                    sql.SQL("DROP TABLE pmta.{}").format(sql.Identifier(part.name)),
                    seal=(part.day, part.rows),
                )  # fmt: skip
            except _NotMaterialized:
                log.warning("pmta.%s: kept, its report rollups are not all materialized yet "
                            "(run 'pmta-pipe rollup', then prune again)", part.name)  # fmt: skip
                out.unmaterialized.append(part)
                continue
            (out.dropped if ok else out.busy).append(part)
        cutoff = _midnight(plan.rollups_before)
        for table, n in plan.rollups.items():
            if n and not dry_run:
                stmt = sql.SQL("DELETE FROM pmta.{} WHERE bucket < %s").format(
                    sql.Identifier(table)
                )
                if not _with_lock_timeout(conn, f"pmta.{table}", stmt, (cutoff,)):
                    out.busy_tables += 1
                    continue
            out.rollups_deleted[table] = n
        if plan.rejects and not dry_run:
            conn.execute(
                "DELETE FROM pmta.rejects WHERE received_at < %s", (_midnight(plan.events_before),)
            )
    if out.skipped:
        log.warning("%d tables stayed busy and were left for the next run", out.skipped)
    return out


def format_result(r: PruneResult) -> str:
    """The lines ``pmta-pipe prune`` prints."""
    verb = "would drop" if r.dry_run else "dropped"
    deleted = "would be deleted" if r.dry_run else "deleted"
    lines = [f"skipped pmta.{p.name} (busy): {p.rows} rows, {_size(p.size)}" for p in r.busy]
    lines += [
        f"kept pmta.{p.name}: its rollups are not all materialized ('pmta-pipe rollup' first)"
        for p in r.unmaterialized
    ]
    lines += [f"{verb} pmta.{p.name}: {p.rows} rows, {_size(p.size)}" for p in r.dropped]
    rows = sum(p.rows for p in r.dropped)
    size = sum(p.size for p in r.dropped)
    lines.append(
        f"events: {verb} {len(r.dropped)} partitions, {rows} rows, "
        f"{_size(size)}; keeping days from {r.plan.events_before.isoformat()}"
    )
    for table, n in r.rollups_deleted.items():
        lines.append(
            f"rollups: pmta.{table}: {n} rows before {r.plan.rollups_before.isoformat()} {deleted}"
        )
    lines.append(f"rejects: {r.plan.rejects} {deleted}")
    return "\n".join(lines)


@dataclass
class ReopenResult:
    """What ``prune --reopen DAY`` did."""

    day: date
    was_sealed: bool
    rollups_deleted: dict[str, int] = field(default_factory=dict)


def reopen_day(settings: Settings, day: date) -> ReopenResult:
    """Unseal ``day`` and delete its rollups, in one transaction, so that importing its
    records again loads them and rebuilds its rollups exactly (every record of the day
    must be imported again: what is not, is missing from the day's reports)."""
    target = db.resolve_target(settings)
    start = _midnight(day)
    end = start + timedelta(days=1)
    with db.connect(target.conninfo, autocommit=True) as conn, conn.transaction():
        plan_prune(conn, 1, 1, day)  # checks the schema
        found = conn.execute("DELETE FROM pmta.pruned_days WHERE day = %s RETURNING day", (day,))
        out = ReopenResult(day, found.fetchone() is not None)
        for (table,) in conn.execute(_ROLLUPS).fetchall():
            cur = conn.execute(
                sql.SQL("DELETE FROM pmta.{} WHERE bucket >= %s AND bucket < %s").format(
                    sql.Identifier(table)
                ),
                (start, end),
            )
            out.rollups_deleted[table] = cur.rowcount
    log.info("reopened %s: its records load again", day.isoformat())
    return out
