"""Health of the pipe on this host (``pmta-pipe status``): database, schema, spool, last commits.

``collect_status`` gathers facts without changing anything (it never starts the
embedded PostgreSQL, never applies migrations, never claims a spool segment for
long) and returns them with the problems found among them; ``format_text`` renders
them for a terminal; ``cli`` prints them and exits 0 healthy, 1 unhealthy.

Unhealthy means any of: the database cannot be reached; its schema is not the
version this pmta-pipe expects; a setup fault holds a running ingest's batches in
the spool (a missing GRANT, a dropped schema, a read-only database: its ERROR's
text is shown); the spool holds a segment no live process is loading (run
``pmta-pipe replay``); the oldest record in the spool is older than
``STALE_SECONDS`` (the loader is not keeping up, or the database is away); the spool
is above ``FULL_FRACTION`` of ``--spool-max-bytes``; a damaged segment was moved
aside (``*.corrupt``: look at it, then delete it), or one written in a format this
version cannot read (its magic or meta frame names another format: replay it with
the version that wrote it); in the last hour, a source's
rejected share of records is above ``--max-reject-share``, or PostgreSQL refused
any record (a value the parser let through: a bug to report, or a limit);
``PMTA_PIPE_PARSER=compiled`` and the compiled parser is not built. ``parser`` says
which parser this pmta-pipe runs (``fastpath.parser_path``). Targets
are named with ``db.describe``: never with a password.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from pmta_pipe import db, fastpath, materialize
from pmta_pipe.config import Settings
from pmta_pipe.errors import ConfigError, first_line
from pmta_pipe.migrate import code_version, schema_version
from pmta_pipe.spool import backlog

STALE_SECONDS = 300.0
FULL_FRACTION = 0.8

_SOURCES = """
    SELECT source, last_committed_at, extract(epoch FROM since_last_commit),
           records_last_hour, rejected_last_hour, rejected_by_database_last_hour
    FROM pmta.ingest_health
    ORDER BY source
"""


def _database(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": None, "reachable": False, "error": None,
        "schema_version": None, "code_version": code_version(), "sources": [],
        "rollups": {},
    }  # fmt: skip
    try:
        target = db.resolve_target(settings, start_embedded=False)
        out["target"] = target.description
        conninfo = target.conninfo
        if target.embedded:
            from pmta_pipe import embedded

            if not embedded.state(settings.data_path).running:
                out["error"] = "the embedded PostgreSQL is not running"
                return out
            conninfo = embedded.start(settings.data_path)  # running already: only its URI
        with db.connect(conninfo, autocommit=True, timeout=5) as conn:
            out["reachable"] = True
            out["schema_version"] = schema_version(conn)
            if out["schema_version"] == out["code_version"]:
                rows = conn.execute(_SOURCES).fetchall()
                out["sources"] = [
                    {
                        "source": r[0],
                        "last_committed_at": r[1].isoformat() if r[1] else None,
                        "seconds_since_last_commit": (
                            None if r[2] is None else round(float(r[2]), 1)
                        ),
                        "records_last_hour": int(r[3]),
                        "rejected_last_hour": int(r[4]),
                        "rejected_by_database_last_hour": int(r[5]),
                        "reject_share_last_hour": (
                            round(int(r[4]) / int(r[3]), 6) if int(r[3]) else 0.0
                        ),
                    }
                    for r in rows
                ]
                out["rollups"] = materialize.status(conn)
    except Exception as exc:  # any failure to reach it is what status reports
        out["error"] = first_line(exc)
    return out


def _spool(settings: Settings) -> dict[str, Any]:
    folder = settings.spool_path
    b = backlog(folder)
    now = datetime.now(timezone.utc)
    return {
        "folder": str(folder),
        "exists": folder.is_dir(),
        "segments": b.segments,
        "orphaned_segments": b.orphaned_segments,
        "batches": b.batches,
        "records": b.records,
        "bytes": b.bytes,
        "max_bytes": settings.spool_max_bytes,
        "oldest_age_seconds": round((now - b.oldest).total_seconds(), 1) if b.oldest else None,
        "corrupt_files": b.corrupt_files,
        "unknown_format_files": b.unknown_format_files,
        "stray_files": b.stray_files,
        "setup_faults": b.faults,
    }


def collect_status(settings: Settings) -> dict[str, Any]:
    """Every fact ``status`` reports, the problems among them, and ``healthy``."""
    started = time.monotonic()
    database = _database(settings)
    spool = _spool(settings)
    problems: list[str] = []
    rollups = database["rollups"]
    if rollups.get("stale"):
        problems.append(
            f"rollups: no materializer step since {rollups['materialized_at']} while batches"
            " are loaded (the views count the tail live, slower and slower): run"
            " 'pmta-pipe rollup' and look for 'rollups:' warnings in the ingest log"
        )
    for fault in spool["setup_faults"]:
        problems.append(
            f"a setup fault holds the batches of ingest or serve (pid {fault.get('pid')}, source"
            f" {fault.get('source')}) in the spool since {fault.get('since')}:"
            f" {fault.get('message')} (hint: {fault.get('hint')})"
        )
    if not database["reachable"]:
        problems.append(f"database unreachable: {database['error']}")
    elif database["schema_version"] != database["code_version"]:
        problems.append(
            f"schema version {database['schema_version']} is not {database['code_version']}"
            " (run 'pmta-pipe migrate', or upgrade pmta-pipe when the schema is newer)"
        )
    if spool["orphaned_segments"]:
        problems.append(
            f"{spool['orphaned_segments']} spool segments are not being loaded"
            " (run 'pmta-pipe replay')"
        )
    age = spool["oldest_age_seconds"]
    if age is not None and age > STALE_SECONDS:
        problems.append(f"the oldest record in the spool waits for {age:.0f} s")
    if spool["bytes"] > FULL_FRACTION * spool["max_bytes"]:
        problems.append(f"spool {spool['bytes']} bytes, limit {spool['max_bytes']}")
    foreign = spool["unknown_format_files"]
    damaged = [name for name in spool["corrupt_files"] if name not in foreign]
    if damaged:
        problems.append(
            f"{len(damaged)} damaged spool files moved aside in {spool['folder']}:"
            f" {', '.join(damaged)} (their intact batches were loaded; the WARNING logged"
            " when each was moved aside counts what could not be read; look at them, then"
            " delete them to clear this)"
        )
    if foreign:
        problems.append(
            f"{len(foreign)} spool files written in a format this pmta-pipe cannot read were"
            f" moved aside in {spool['folder']}: {', '.join(foreign)} (nothing was loaded from"
            " them; replay them with the pmta-pipe version that wrote them, renamed without"
            " '.corrupt', or delete them to clear this)"
        )
    limit = settings.max_reject_share
    for src in database["sources"]:
        share = src["reject_share_last_hour"]
        if share > limit:
            problems.append(
                f"{src['source']}: {share:.2%} of the last hour's {src['records_last_hour']}"
                f" records were rejected (limit {limit:.2%}; see 'pmta-pipe rejects')"
            )
        if src["rejected_by_database_last_hour"]:
            problems.append(
                f"{src['source']}: PostgreSQL refused {src['rejected_by_database_last_hour']}"
                " records in the last hour (stage database in pmta.rejects: see"
                " 'pmta-pipe rejects')"
            )
    try:
        path, why = fastpath.parser_path()
    except ConfigError as exc:  # PMTA_PIPE_PARSER=compiled without the extension
        path, why = None, exc.message
        problems.append(f"parser: {exc}")
    return {
        "healthy": not problems,
        "problems": problems,
        "parser": {"path": path, "why": why},
        "database": database,
        "spool": spool,
        "checked_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(time.monotonic() - started, 3),
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_text(st: dict[str, Any]) -> str:
    d, s = st["database"], st["spool"]
    lines = [f"parser: {st['parser']['why']}"]
    if d["reachable"]:
        lines.append(f"database: reachable, {d['target']} (schema version {d['schema_version']},"
                     f" this pmta-pipe expects {d['code_version']})")  # fmt: skip
    else:
        lines.append(f"database: UNREACHABLE, {d['target']}: {d['error']}")
    age = s["oldest_age_seconds"]
    lines.append(
        f"spool: {s['folder']}: {s['segments']} segments ({s['orphaned_segments']} not being"
        f" loaded), {s['batches']} batches, {s['records']} records, {_size(s['bytes'])} of"
        f" {_size(s['max_bytes'])}" + (f", oldest {age:.0f} s old" if age is not None else "")
    )
    for name in s["corrupt_files"]:
        if name in s["unknown_format_files"]:
            lines.append(f"  unknown format, moved aside: {name}")
        else:
            lines.append(f"  damaged, moved aside: {name}")
    for name in s["stray_files"]:
        lines.append(f"  not a spool file (ignored): {name}")
    for fault in s["setup_faults"]:
        lines.append(f"  held by a setup fault: {fault.get('message')}")
    r = d.get("rollups") or {}
    if r:
        tail = f"{r['tail_records']}{'+' if r['tail_records_capped'] else ''} records"
        age = r["tail_seconds"]
        lines.append(
            f"rollups: materialized up to {r['watermark'] or 'nothing yet'}"
            + (f" ({age:.0f} s ago)" if age is not None else "")
            + f", tail {tail} counted live, {r['invalidated_hours']} invalidated hours,"
            f" last step {r['materialized_at'] or 'never'}"
        )
    if d["sources"]:
        lines.append("last commits:")
        for src in d["sources"]:
            ago = src["seconds_since_last_commit"]
            lines.append(
                f"  {src['source']}: {src['last_committed_at'] or 'no pipe commit'}"
                + (f" ({ago:.0f} s ago)," if ago is not None else ",")
                + f" {src['records_last_hour']} records in the last hour,"
                f" {src['reject_share_last_hour']:.2%} rejected"
            )
    if st["healthy"]:
        lines.append("status: healthy")
    else:
        lines.append("status: UNHEALTHY")
        lines.extend(f"  - {p}" for p in st["problems"])
    return "\n".join(lines)
