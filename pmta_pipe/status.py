"""Health of the pipe on this host (``pmta-pipe status``): database, schema, spool, last commits.

``collect_status`` gathers facts without changing anything (it never starts the
embedded PostgreSQL, never applies migrations, never claims a spool segment for
long); ``run_status`` prints them as text or JSON and returns the exit code for
monitoring: 0 healthy, 1 unhealthy (the reasons are listed under ``problems``).

Unhealthy means any of: the database cannot be reached; its schema is not the
version this pmta-pipe expects; the spool holds a segment no live process is loading
(run ``pmta-pipe replay``); the oldest record in the spool is older than
``STALE_SECONDS`` (the loader is not keeping up, or the database is away); the
spool is above ``FULL_FRACTION`` of ``--spool-max-bytes``; a damaged segment was
moved aside (``*.corrupt``: look at it, then delete it). Targets are named with
``db.describe``: never with a password.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from pmta_pipe import db
from pmta_pipe.config import Settings
from pmta_pipe.errors import first_line
from pmta_pipe.migrate import code_version, schema_version
from pmta_pipe.spool import count_records, is_locked, list_files

STALE_SECONDS = 300.0
FULL_FRACTION = 0.8


def _database(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": None, "reachable": False, "error": None,
        "schema_version": None, "code_version": code_version(), "sources": [],
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
            found = conn.execute("SELECT to_regclass('pmta.ingest_health') IS NOT NULL").fetchone()
            if found and found[0]:
                rows = conn.execute(
                    "SELECT source, last_committed_at, extract(epoch FROM since_last_commit),"
                    " records_last_hour, rejected_last_hour FROM pmta.ingest_health"
                    " ORDER BY source"
                ).fetchall()
                out["sources"] = [
                    {
                        "source": r[0],
                        "last_committed_at": r[1].isoformat() if r[1] else None,
                        "seconds_since_last_commit": round(float(r[2]), 1),
                        "records_last_hour": int(r[3]),
                        "rejected_last_hour": int(r[4]),
                    }
                    for r in rows
                ]
    except Exception as exc:  # any failure to reach it is what status reports
        out["error"] = first_line(exc)
    return out


def _spool(settings: Settings) -> dict[str, Any]:
    folder = settings.spool_path
    files = list_files(folder)
    now = datetime.now(timezone.utc)
    segments = [f for f in files if f.kind == "segment"]
    batches = records = orphaned = 0
    oldest: datetime | None = None
    for f in segments:
        b, r, first = count_records(f.path)
        batches += b
        records += r
        if first is not None and (oldest is None or first < oldest):
            oldest = first
        if not is_locked(f.path):
            orphaned += 1
    return {
        "folder": str(folder),
        "exists": folder.is_dir(),
        "segments": len(segments),
        "orphaned_segments": orphaned,
        "batches": batches,
        "records": records,
        "bytes": sum(f.size for f in segments),
        "max_bytes": settings.spool_max_bytes,
        "oldest_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "corrupt_files": [f.name for f in files if f.kind == "corrupt"],
        "stray_files": [f.name for f in files if f.kind == "stray"],
    }


def collect_status(settings: Settings) -> dict[str, Any]:
    """Every fact ``status`` reports, and the problems among them."""
    database = _database(settings)
    spool = _spool(settings)
    problems: list[str] = []
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
    if spool["corrupt_files"]:
        problems.append(f"{len(spool['corrupt_files'])} damaged spool files moved aside")
    return {
        "healthy": not problems,
        "problems": problems,
        "database": database,
        "spool": spool,
        "checked_at": datetime.now(timezone.utc).isoformat(),
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
    lines = []
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
        lines.append(f"  damaged, moved aside: {name}")
    for name in s["stray_files"]:
        lines.append(f"  not a spool file (ignored): {name}")
    if d["sources"]:
        lines.append("last commits:")
        for src in d["sources"]:
            lines.append(
                f"  {src['source']}: {src['last_committed_at']}"
                f" ({src['seconds_since_last_commit']:.0f} s ago),"
                f" {src['records_last_hour']} records in the last hour"
            )
    if st["healthy"]:
        lines.append("status: healthy")
    else:
        lines.append("status: UNHEALTHY")
        lines.extend(f"  - {p}" for p in st["problems"])
    return "\n".join(lines)


def run_status(settings: Settings, *, fmt: str = "text") -> int:
    """Print the status; 0 when healthy, 1 when not."""
    started = time.monotonic()
    st = collect_status(settings)
    st["seconds"] = round(time.monotonic() - started, 3)
    if fmt == "json":
        print(json.dumps(st, indent=2))
    else:
        print(format_text(st))
    return 0 if st["healthy"] else 1
