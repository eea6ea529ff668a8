"""The records that could not be loaded: list them, and retry them (``pmta-pipe rejects``).

A record the parser or PostgreSQL refuses is kept in ``pmta.rejects`` with its raw
text (``raw_line``), the reason, the header line in force, its source, position and
``received_at`` (when its batch was received). ``list_rejects`` selects them (by
``RejectFilter``: received since, reason substring in any case, source), newest
first, with a count per reason. ``retry_rejects`` tries them again, after a parser
fix, a corrected ``raw_line`` (an operator's ``UPDATE``) or a fixed grant:

* each selected row's ``raw_line`` is cut into whole records by
  ``framing.ChunkSplitter`` (older framing could swallow several lines into one
  reject) and parsed with the row's own ``header_line`` and ``received_at``, so a
  record without any timestamp gets the time it got the first time, hence the same
  ``record_id``;
* rows of one source and one header line are loaded together through
  ``load.Loader``, at most ``batch_rows`` rows a batch; the loader's identity keeps a
  record already in ``pmta.events`` from being added again (a duplicate);
* inside each batch's transaction (the loader's hook, before COMMIT), ``_Settle``
  deletes every row all of whose records are now in ``pmta.events``; a row with a
  record that still fails stays under its own ``reject_id`` (read from the table,
  never recomputed: ``raw_line`` may have been corrected) with the reason of its
  first failing record, ``retries + 1`` and ``retried_at``. The rows the loader
  wrote for those records under the id of their own text (a corrected line, one
  record of several) are removed again, so that no record is kept twice. The
  batch's ``pmta.ingest_batches`` row (route ``retry``) commits with it.

Running it again changes no event and no reject row (only the ``retries`` of
those still failing). Runs are serialized by an advisory lock. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from pmta_pipe import db
from pmta_pipe.errors import (
    DatabaseUnavailable,
    MigrationError,
    PmtaPipeError,
    first_line,
)
from pmta_pipe.fields import EVENT_COLUMNS
from pmta_pipe.framing import ChunkSplitter
from pmta_pipe.load import Loader, LoadResult, reject_id
from pmta_pipe.parse import TORN, ParsedBatch, RecordParser, Reject
from pmta_pipe.pipeline import Receipt, record_batch
from pmta_pipe.report import parse_when
from pmta_pipe.table import format_table

#: most bytes of raw text in one retry batch (besides --batch-rows reject rows)
MAX_BATCH_BYTES = 32 << 20
#: shown in a table: reasons and raw text are cut to this many characters
SHORT = 60
NO_RECORD = "raw_line holds no record"

_TIME = EVENT_COLUMNS.index("time_logged")
_ID = EVENT_COLUMNS.index("record_id")
_LOCK = "SELECT pg_try_advisory_lock(hashtext('pmta-pipe rejects retry'))"
_COLUMNS = (
    "reject_id::text, received_at, source, stage, sqlstate, position, reason, retries,"
    " retried_at, raw_line, header_line"
)
_NEWEST_FIRST = "received_at DESC, position DESC NULLS LAST, reject_id"
_PRESENT = """
    SELECT k.n::integer FROM unnest(%s::timestamptz[], %s::uuid[]) WITH ORDINALITY AS k(t, r, n)
    WHERE EXISTS (SELECT 1 FROM pmta.events e WHERE e.time_logged = k.t AND e.record_id = k.r)
"""
_FAILED = """
    UPDATE pmta.rejects SET
        reason = coalesce(%(reason)s, reason),
        stage = coalesce(%(stage)s, stage),
        sqlstate = CASE WHEN %(known)s THEN %(sqlstate)s::text ELSE sqlstate END,
        retries = retries + 1,
        retried_at = %(run_at)s
    WHERE reject_id = %(id)s::uuid AND retried_at IS DISTINCT FROM %(run_at)s
"""
# retried_at IS DISTINCT FROM run_at: a batch whose transaction is tried again (the
# loader retries transient errors) counts one retry per row and run, not two.


@dataclass(frozen=True)
class RejectFilter:
    """Which rejects a command is about; ``None`` means any."""

    since: datetime | None = None  # received at or after
    reason: str | None = None  # substring of the reason, in any case
    source: str | None = None

    @classmethod
    def of(
        cls, since: str | None, reason: str | None, source: str | None, now: datetime
    ) -> RejectFilter:
        """From the command line: ``since`` as ``report --since`` reads it (age, date, time)."""
        return cls(parse_when(since, now, "--since") if since else None, reason or None,
                   source or None)  # fmt: skip

    def params(self) -> dict[str, Any]:
        """The parameters of ``WHERE`` (a filter not given matches every row)."""
        return {"since": self.since, "reason": self.reason, "source": self.source}


#: the filters of ``RejectFilter`` over pmta.rejects; one fixed text, values bound
WHERE = (
    "(%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
    " AND (%(reason)s::text IS NULL OR strpos(lower(reason), lower(%(reason)s)) > 0)"
    " AND (%(source)s::text IS NULL OR source = %(source)s)"
)


@dataclass(frozen=True)
class RejectRow:
    """One row of pmta.rejects."""

    reject_id: str
    received_at: datetime
    source: str
    stage: str
    sqlstate: str | None
    position: int | None
    reason: str
    retries: int
    retried_at: datetime | None
    raw_line: str
    header_line: str | None


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    rejects: int


@dataclass
class RejectList:
    """What ``list_rejects`` found: how many, why, and the newest ``top`` of them."""

    total: int
    reasons: int  # distinct reasons among them
    by_reason: list[ReasonCount]  # the ``top`` most frequent
    rejects: list[RejectRow]  # the ``top`` newest


@dataclass
class RetryResult:
    """What ``retry_rejects`` did: records read = inserted + duplicates + rejected."""

    reject_rows: int = 0  # rows selected
    resolved: int = 0  # rows deleted: every record in them is in pmta.events now
    batches: int = 0
    load: LoadResult = field(default_factory=LoadResult)


# -- database access -------------------------------------------------------------------


@contextlib.contextmanager
def _database(target: db.Target, *, retry: bool) -> Iterator[psycopg.Connection[Any]]:
    """A connection to ``target``; its errors become one-line ``PmtaPipeError``s."""
    try:
        with db.connect(target.conninfo, autocommit=True) as conn:
            _check_schema(conn, target)
            yield conn
    except pg_errors.InsufficientPrivilege as exc:
        hint = (
            "retrying needs what deploy/roles.sql gives pmta_writer: GRANT pmta_writer TO <login>"
            if retry
            else "listing needs SELECT on pmta.rejects, which deploy/roles.sql gives "
            "pmta_analyst: GRANT pmta_analyst TO <login>"
        )
        raise PmtaPipeError(f"{target.description} refuses: {first_line(exc)}", hint) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot use {target.description}: {first_line(exc)}",
            "check --dsn / PMTA_PIPE_DSN and that PostgreSQL is running",
        ) from exc


def _check_schema(conn: psycopg.Connection[Any], target: db.Target) -> None:
    # from the catalogs, which any role may read: a missing grant is reported as such later
    row = conn.execute(
        "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pmta'"
        " AND c.relname = 'rejects' AND a.attname IN ('stage', 'retries') AND NOT a.attisdropped"
    ).fetchone()
    if not row or row[0] != 2:
        raise MigrationError(f"{target.description} has no pmta.rejects of this pmta-pipe",
                             "run 'pmta-pipe migrate' first")  # fmt: skip


def _row(r: Sequence[Any]) -> RejectRow:
    return RejectRow(*r)


def list_rejects(target: db.Target, filt: RejectFilter, *, top: int) -> RejectList:
    """The rejects ``filt`` selects: their number, the ``top`` reasons and the ``top`` newest."""
    params = filt.params()
    params["top"] = top
    with _database(target, retry=False) as conn:
        counted = conn.execute(
            f"SELECT count(*), count(DISTINCT reason) FROM pmta.rejects WHERE {WHERE}", params
        ).fetchone()
        by_reason = conn.execute(
            f"SELECT reason, count(*) FROM pmta.rejects WHERE {WHERE}"
            " GROUP BY reason ORDER BY count(*) DESC, reason LIMIT %(top)s",
            params,
        ).fetchall()
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM pmta.rejects WHERE {WHERE}"
            f" ORDER BY {_NEWEST_FIRST} LIMIT %(top)s",
            params,
        ).fetchall()
    total, reasons = counted if counted else (0, 0)
    return RejectList(
        int(total),
        int(reasons),
        [ReasonCount(r, int(n)) for r, n in by_reason],
        list(map(_row, rows)),
    )


# -- retry ------------------------------------------------------------------------------

Hook = Callable[[psycopg.Connection[Any], LoadResult], None]


def load_with_hook(
    loader: Loader, batch: ParsedBatch, header_line: str | None, received_at: datetime, hook: Hook
) -> LoadResult:
    """Load ``batch``, running ``hook(conn, result)`` inside its transaction, before COMMIT."""

    def bookkeeping(conn: psycopg.Connection[Any], result: LoadResult, _rows: Any) -> None:
        hook(conn, result)

    return loader.load(batch, header_line, received_at=received_at, bookkeeping=bookkeeping)


def split_records(raw: str) -> list[bytes]:
    """The whole records in a reject's raw text, as the pipe's framing cuts them."""
    splitter = ChunkSplitter()
    out: list[bytes] = []
    splitter.feed(raw.encode(), out)
    splitter.finish(out)
    return out


@dataclass
class _Retried:
    """One reject row and what its raw text parsed into."""

    row: RejectRow
    parsed: ParsedBatch
    loaded: list[bool] = field(default_factory=list)  # per row of parsed: in pmta.events

    @property
    def resolved(self) -> bool:
        p = self.parsed
        return bool(p.rows) and not p.rejects and all(self.loaded)

    def failing(self) -> list[tuple[int, str, Reject | None]]:
        """(position, raw text, the parser's reject or None: refused by the database)."""
        out: list[tuple[int, str, Reject | None]] = [
            (r.position, r.raw, r) for r in self.parsed.rejects
        ]
        p = self.parsed
        out += [(p.positions[j], p.raw[j], None) for j, ok in enumerate(self.loaded) if not ok]
        return sorted(out, key=lambda f: f[0])


def _parse(row: RejectRow) -> _Retried:
    """Parse ``row``'s raw text with its header line and received time."""
    parser = RecordParser(row.source)
    if row.header_line:
        parser.parse([row.header_line.encode()], row.received_at)
    first = row.position if row.position is not None else 1
    # a torn record stays torn until someone corrects its text (its reject_id is then no
    # longer the MD5 of raw_line) or the whole record is loaded: retried as it is, it
    # would become an event made of its first fields only
    torn = row.reason == TORN and reject_id(row.raw_line) == row.reject_id.replace("-", "")
    parsed = parser.parse(
        split_records(row.raw_line), row.received_at, first_position=first, torn_last=torn
    )
    return _Retried(row, parsed, [False] * len(parsed.rows))


def _merge(source: str, items: Sequence[_Retried]) -> ParsedBatch:
    out = ParsedBatch(source=source)
    for it in items:
        out.extend(it.parsed)
    return out


class _Settle:
    """Inside a retry batch's transaction: settle each reject row by what became of its records."""

    def __init__(self, items: Sequence[_Retried], new_ids: set[str], run_at: datetime) -> None:
        self.items = items
        self.new_ids = new_ids  # ids of the records' own texts not in pmta.rejects before
        self.run_at = run_at
        self.batch = _merge(items[0].row.source, items) if items else ParsedBatch()

    def __call__(self, conn: psycopg.Connection[Any], result: LoadResult | None) -> None:
        keys = [(it, j, row) for it in self.items for j, row in enumerate(it.parsed.rows)]
        found: set[int] = set()
        if keys:
            cur = conn.execute(_PRESENT, ([k[2][_TIME] for k in keys], [k[2][_ID] for k in keys]))
            found = {n for (n,) in cur.fetchall()}
        for n, (it, j, _row) in enumerate(keys, start=1):
            it.loaded[j] = n in found
        done = [it.row.reject_id for it in self.items if it.resolved]
        if done:
            conn.execute("DELETE FROM pmta.rejects WHERE reject_id = ANY(%s::uuid[])", (done,))
        failing = [(it, it.failing()) for it in self.items if not it.resolved]
        copies = {
            i
            for _, fails in failing
            for _, raw, _ in fails
            if (i := reject_id(raw)) in self.new_ids
        }
        written: dict[str, tuple[str, str, str | None]] = {}
        if copies:
            cur = conn.execute(
                "DELETE FROM pmta.rejects WHERE reject_id = ANY(%s::uuid[])"
                " RETURNING replace(reject_id::text, '-', ''), reason, stage, sqlstate",
                (sorted(copies),),
            )
            written = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
        updates = [self._failed(it.row.reject_id, fails, written) for it, fails in failing]
        if updates:
            with conn.cursor() as cur:
                cur.executemany(_FAILED, updates)
        if result is not None:
            self._batch_row(conn, result)

    def _failed(
        self,
        rid: str,
        fails: list[tuple[int, str, Reject | None]],
        written: dict[str, tuple[str, str, str | None]],
    ) -> dict[str, Any]:
        """The UPDATE of a row that still fails: the reason of its first failing record."""
        why: tuple[str, str, str | None] | None
        if not fails:
            why = (NO_RECORD, "parser", None)
        elif fails[0][2] is not None:
            why = (fails[0][2].reason, "parser", None)
        else:  # refused by the database: its reason is where the loader wrote it
            why = written.get(reject_id(fails[0][1]))
        reason, stage, state = why or (None, None, None)
        return {"id": rid, "reason": reason, "stage": stage, "sqlstate": state,
                "known": why is not None, "run_at": self.run_at}  # fmt: skip

    def _batch_row(self, conn: psycopg.Connection[Any], result: LoadResult) -> None:
        received = min(it.row.received_at for it in self.items)
        record_batch(conn, _RetryReceipt(), self.batch.source, result, self.batch.times, received)


class _RetryReceipt(Receipt):
    route = "retry"


def _plan(
    conn: psycopg.Connection[Any], filt: RejectFilter, batch_rows: int
) -> Iterator[tuple[str, str | None, list[str]]]:
    """The selected rows' ids in batches: (source, header line, ids), oldest first."""
    params = filt.params()
    rows = conn.execute(
        f"SELECT source, header_line, reject_id::text, octet_length(raw_line)"
        f" FROM pmta.rejects WHERE {WHERE}"
        " ORDER BY source, header_line NULLS FIRST, received_at, position, reject_id",
        params,
    ).fetchall()
    key: tuple[str, str | None] | None = None
    ids: list[str] = []
    size = 0
    for source, header_line, rid, length in rows:
        if ids and ((source, header_line) != key or len(ids) >= batch_rows
                    or size + length > MAX_BATCH_BYTES):  # fmt: skip
            assert key is not None
            yield (*key, ids)
            ids, size = [], 0
        key = (source, header_line)
        ids.append(rid)
        size += length
    if ids:
        assert key is not None
        yield (*key, ids)


def _retry_batch(
    conn: psycopg.Connection[Any],
    loader: Loader,
    source: str,
    header_line: str | None,
    ids: list[str],
    run_at: datetime,
    out: RetryResult,
) -> None:
    rows = [
        _row(r)
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM pmta.rejects WHERE reject_id = ANY(%s::uuid[])"
            " AND source = %s AND header_line IS NOT DISTINCT FROM %s"
            " ORDER BY received_at, position, reject_id",
            (ids, source, header_line),
        ).fetchall()
    ]  # rows deleted or changed since the plan are left to the next run
    if not rows:
        return
    items = [_parse(row) for row in rows]
    texts = {
        reject_id(raw)
        for it in items
        for raw in (*it.parsed.raw, *(r.raw for r in it.parsed.rejects))
    }
    known = conn.execute(
        "SELECT replace(reject_id::text, '-', '') FROM pmta.rejects"
        " WHERE reject_id = ANY(%s::uuid[])",
        (sorted(texts),),
    ).fetchall()
    settle = _Settle(items, texts - {r[0] for r in known}, run_at)
    if settle.batch.records:
        received = min(row.received_at for row in rows)
        result = load_with_hook(loader, settle.batch, header_line, received, settle)
        out.load.add(result)
        out.batches += 1
    else:  # nothing but header lines or blank text: no batch, only the rows' bookkeeping
        with conn.transaction():
            settle(conn, None)
    left = conn.execute(
        "SELECT count(*) FROM pmta.rejects WHERE reject_id = ANY(%s::uuid[])",
        ([row.reject_id for row in rows],),
    ).fetchone()
    out.resolved += len(rows) - int(left[0] if left else 0)


def retry_rejects(
    target: db.Target, filt: RejectFilter, *, batch_rows: int = 5000, retry_for: float = 30.0
) -> RetryResult:
    """Parse and load again the rejects ``filt`` selects; see the module docstring."""
    run_at = datetime.now(timezone.utc)
    out = RetryResult()
    with _database(target, retry=True) as conn:
        locked = conn.execute(_LOCK).fetchone()
        if not locked or not locked[0]:
            raise PmtaPipeError("another 'pmta-pipe rejects retry' is running on this database",
                                "wait for it to finish, then run it again")  # fmt: skip
        loader = Loader(target.conninfo, retry_for=retry_for, max_wait=5.0)
        try:
            for source, header_line, ids in _plan(conn, filt, batch_rows):
                out.reject_rows += len(ids)
                _retry_batch(conn, loader, source, header_line, ids, run_at, out)
        finally:
            loader.close()
    return out


# -- output -----------------------------------------------------------------------------


def _short(text: str) -> str:
    """``text`` on one line (line breaks and tabs shown as ``\\n``, ``\\r``, ``\\t``), cut."""
    flat = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return flat if len(flat) <= SHORT else flat[: SHORT - 1] + "…"


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).isoformat(sep=" ", timespec="seconds")


def _plain(value: Any) -> Any:
    return value.astimezone(timezone.utc).isoformat() if isinstance(value, datetime) else value


def render_list(found: RejectList, *, as_json: bool = False) -> str:
    """The listing: counts per reason, then the rejects newest first (or all of it as JSON)."""
    if as_json:
        doc = {
            "total": found.total,
            "reasons": found.reasons,
            "by_reason": [asdict(c) for c in found.by_reason],
            "rejects": [{k: _plain(v) for k, v in asdict(r).items()} for r in found.rejects],
        }
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if not found.total:
        return "no rejects\n"
    counts = format_table(
        ("rejects", "reason"),
        [(str(c.rejects), _short(c.reason)) for c in found.by_reason],
        (True, False),
    )
    if found.reasons > len(found.by_reason):
        counts += f"({found.reasons - len(found.by_reason)} more reasons; --top N for more)\n"
    listing = format_table(
        ("received_at", "source", "stage", "position", "retries", "reason", "raw_line"),
        [
            (
                _when(r.received_at),
                r.source,
                r.stage,
                "-" if r.position is None else str(r.position),
                str(r.retries),
                _short(r.reason),
                _short(r.raw_line),
            )
            for r in found.rejects
        ],
        (False, False, False, True, True, False, False),
    )
    shown = len(found.rejects)
    tail = (
        f"{found.total} rejects\n"
        if shown == found.total
        else f"the newest {shown} of {found.total} rejects (--top N for more)\n"
    )
    return f"{counts}\n{listing}{tail}"


def render_retry(result: RetryResult, *, as_json: bool = False) -> str:
    """One line: records read = inserted + duplicates + rejected, and reject rows resolved."""
    t = result.load
    if as_json:
        doc = {
            "records": t.records, "inserted": t.inserted, "duplicates": t.duplicates,
            "rejected": t.rejected, "reject_rows": result.reject_rows,
            "resolved": result.resolved,
        }  # fmt: skip
        return json.dumps(doc) + "\n"
    return (
        f"{t.records} read = {t.inserted} inserted + {t.duplicates} duplicates"
        f" + {t.rejected} rejected; {result.resolved} of {result.reject_rows} reject rows"
        " resolved\n"
    )
