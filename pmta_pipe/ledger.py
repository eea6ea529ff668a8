"""The import ledger, ``pmta.import_files``: which files were read, how far, with what result.

A row is keyed by the file's absolute path and identifies the file's content by a
fingerprint: SHA-256 of its first 64 KiB as stored (``fingerprint_bytes`` says how
many bytes that was, for files smaller than that). Together with the size this
tells, without reading the file again:

* unchanged (same fingerprint, same size, completed): skip;
* grown (same fingerprint over the old prefix, larger): read only what was added;
* interrupted (not completed): read on after the records already committed;
* replaced (fingerprint differs): read from the start.

``bytes_done`` is where a plain file's next read may seek to, always a record
boundary: the end of a completed file, or the start of a last record that reading
left for later (a line PowerMTA was still writing: the row stays not completed; a
torn last line of an old file that was rejected: completed). It is NULL while a
file is being read and after a failure (a re-run then passes over the
``records_read`` records already committed instead).

Progress (``records_read`` and the counters) is written by ``record_progress``
inside each batch's own transaction (``pipeline.Receipt.in_transaction``), so the
ledger never claims a record the database does not hold. A torn last line that was
rejected is not counted (it is read again, whole, once the file has grown), so
``records`` is where the next read's record positions go on from. Everything the
ledger decides is an optimisation: loading is idempotent, so a wrong guess costs
time, never a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pmta_pipe.load import LoadResult

FINGERPRINT_BYTES = 1 << 16


@dataclass(frozen=True)
class LedgerRow:
    """What the ledger remembers about one path."""

    path: str
    fingerprint: str
    fingerprint_bytes: int
    size: int
    compression: str
    header_line: str | None
    records_read: int
    bytes_done: int | None
    records: int
    completed: bool


_COLUMNS = (
    "path, fingerprint, fingerprint_bytes, size, compression, header_line, records_read, "
    "bytes_done, records, completed"
)


def fetch_row(conn: psycopg.Connection[Any], path: str) -> LedgerRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM pmta.import_files WHERE path = %s", (path,)
    ).fetchone()
    return LedgerRow(*row) if row else None


def find_completed_copy(
    conn: psycopg.Connection[Any], fingerprint: str, size: int, path: str
) -> str | None:
    """The path of another file with the same fingerprint and size, already completed."""
    row = conn.execute(
        "SELECT path FROM pmta.import_files WHERE completed AND fingerprint = %s AND size = %s"
        " AND fingerprint_bytes = least(size, %s) AND path <> %s LIMIT 1",
        (fingerprint, size, FINGERPRINT_BYTES, path),
    ).fetchone()
    return str(row[0]) if row else None


def begin_file(
    conn: psycopg.Connection[Any],
    *,
    path: str,
    fingerprint: str,
    fingerprint_bytes: int,
    size: int,
    mtime: datetime,
    compression: str,
    source: str,
    fresh: bool,
) -> None:
    """Record that a file is being read; ``fresh`` (from its start) resets its counters."""
    reset = (
        ", header_line = NULL, records_read = 0, records = 0, inserted = 0,"
        " duplicates = 0, rejected = 0, started_at = now()"
        if fresh
        else ""
    )
    conn.execute(
        "INSERT INTO pmta.import_files AS f (path, fingerprint, fingerprint_bytes, size, mtime,"
        " compression, source) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (path) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " fingerprint_bytes = excluded.fingerprint_bytes, size = excluded.size,"
        " mtime = excluded.mtime, compression = excluded.compression, source = excluded.source,"
        f" completed = false, error = NULL, bytes_done = NULL, finished_at = NULL,"
        f" updated_at = now(){reset}",
        (path, fingerprint, fingerprint_bytes, size, mtime, compression, source),
    )


def record_progress(
    conn: psycopg.Connection[Any],
    path: str,
    records_read: int,
    header_line: str | None,
    result: LoadResult,
) -> None:
    """Count one committed batch (call inside the batch's transaction)."""
    conn.execute(
        "UPDATE pmta.import_files SET records_read = %s,"
        " header_line = coalesce(%s, header_line), records = records + %s,"
        " inserted = inserted + %s, duplicates = duplicates + %s, rejected = rejected + %s,"
        " updated_at = now() WHERE path = %s",
        (
            records_read, header_line, result.records, result.inserted,
            result.duplicates, result.rejected, path,
        ),
    )  # fmt: skip


def finish_file(
    conn: psycopg.Connection[Any],
    path: str,
    *,
    records_read: int,
    header_line: str | None,
    completed: bool,
    bytes_done: int | None,
    error: str | None,
) -> None:
    """Record how reading a file ended; ``bytes_done``: see the module docstring."""
    conn.execute(
        "UPDATE pmta.import_files SET records_read = greatest(records_read, %s),"
        " header_line = coalesce(%s, header_line), completed = %s, bytes_done = %s,"
        " error = %s, updated_at = now(), finished_at = now() WHERE path = %s",
        (records_read, header_line, completed, bytes_done, error, path),
    )
