"""Which files ``pmta-pipe import`` reads, and what the ledger says to do with each.

* A file named on the command line is always read, whatever its name.
* A folder is walked recursively (hidden entries skipped); a file in it is read when
  its name looks like an accounting file (``acct*``, ``*.csv``, ``*.csv.*``, any
  case) or, failing that, when its first line (decompressed) is a PowerMTA header
  (first field ``type``). So ``acct-2026-01-15-0000.csv.zst`` and a renamed
  ``pmta-accounting.log.gz`` with a header are found, a ``README`` is not.
* A path that does not exist is expanded as a glob (``**`` recursive). A path or
  glob that matches nothing stops the run before anything is read: a typo should
  not look like an empty import.
* ``-`` is standard input (no ledger entry: there is no file to remember).
* A *stream* is read once, from its first byte to its end, and has no ledger entry
  either, exactly like ``-``: standard input, and every path that ``os.stat`` does
  not call a regular file (a FIFO, ``<(zcat acct.csv.gz)``, a character device) or
  that names a descriptor (``/dev/stdin``, ``/dev/fd/N``, ``/proc/self/fd/N``, even
  when it leads to a regular file). Its bytes cannot be read twice: the planner does
  not open it (a FIFO would lose its head to the fingerprint, or wait for a second
  writer when opened again), the importer opens it once and recognises the
  compression on the way. A stream has no identity to remember across runs
  (``/dev/fd/63`` is another pipe every time), so there is nothing to skip or read on
  from; loading it twice adds nothing, as for any input. Records without any
  timestamp get the time of the import.
* A folder never yields a stream: only regular files in it are looked at (a FIFO in
  a folder is neither opened nor read).

``plan_file`` reads a regular file's first 64 KiB (fingerprint and compression) and
its ledger row (``ledger``) and decides: read from the start, resume, or skip.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, cast

import psycopg

from pmta_pipe import compression, ledger
from pmta_pipe.errors import PmtaPipeError
from pmta_pipe.framing import is_header_record

STDIN = "-"
NAME_PATTERNS = ("acct*", "*.csv", "*.csv.*")
_GLOB_CHARS = frozenset("*?[")
#: paths that name a descriptor of this process, whatever it leads to: read as streams
DESCRIPTOR_PATHS = ("/dev/stdin", "/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/")


@dataclass
class FilePlan:
    """One input and what the ledger says to do with it."""

    name: str  # absolute path, or "-"
    size: int | None = None
    mtime: datetime | None = None
    kind: str = "plain"
    fingerprint: str = ""
    fingerprint_bytes: int = 0
    action: str = "read"  # read (from the start), resume, skip, fail
    stream: bool = False  # read once, from the start, no ledger entry (see the docstring)
    seek_to: int = 0  # resume: decompressed byte offset (plain files only)
    skip_records: int = 0  # resume: records already committed, to pass over
    records_read: int = 0  # resume: what the ledger counted so far
    header_line: str | None = None
    next_position: int = 1
    note: str = ""

    @property
    def ledgered(self) -> bool:
        return not self.stream


def names_descriptor(name: str) -> bool:
    """True for ``-`` and paths such as ``/dev/stdin`` and ``/dev/fd/63``."""
    return name == STDIN or name.startswith(DESCRIPTOR_PATHS)


# -- which files -----------------------------------------------------------------


def _has_header_line(path: Path) -> bool:
    try:
        with path.open("rb") as raw:
            kind = compression.detect(raw.read(compression.HEAD_BYTES))
            raw.seek(0)
            guard, _ = compression.open_records(cast(BinaryIO, raw), kind)
            first = guard.read(4096)[:4096].split(b"\n", 1)[0]
    except OSError:
        return False
    return is_header_record(first)


def is_accounting_file(path: Path) -> bool:
    """For files found in folders: by name, else by a PowerMTA header on the first line."""
    name = path.name.lower()
    if any(fnmatch.fnmatchcase(name, p) for p in NAME_PATTERNS):
        return True
    return _has_header_line(path)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root, name)
            if not name.startswith(".") and p.is_file() and is_accounting_file(p):
                yield p


def find_inputs(paths: Sequence[str]) -> list[str]:
    """Files, folders and globs -> absolute file paths (and ``-``), in order, once each."""
    found: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name not in seen:
            seen.add(name)
            found.append(name)

    for arg in paths:
        if arg == STDIN:
            add(STDIN)
            continue
        p = Path(arg).expanduser()
        if p.exists():
            matches = [p]
        elif _GLOB_CHARS & set(arg):
            matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
        else:
            matches = []
        if not matches:
            raise PmtaPipeError(
                f"no such file or folder: {arg}", "check the path; quote globs so that "
                "pmta-pipe expands them"
            )  # fmt: skip
        for m in matches:
            if m.is_dir():
                for f in _walk(m):
                    add(os.path.abspath(f))
            else:
                add(os.path.abspath(m))
    return found


# -- what to do with each file ----------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stream_plan(name: str) -> FilePlan:
    """A stream: read once when its turn comes; compression recognised then."""
    return FilePlan(name, mtime=datetime.now(timezone.utc), stream=True)


def plan_file(conn: psycopg.Connection[Any] | None, name: str, *, force: bool) -> FilePlan:
    """Read a regular file's first 64 KiB and its ledger row, and decide what to do.

    A stream (see the module docstring) is not opened here.
    """
    if names_descriptor(name):
        return _stream_plan(name)
    plan = FilePlan(name)
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode):
            return _stream_plan(name)
        with open(name, "rb") as f:
            head = f.read(ledger.FINGERPRINT_BYTES)
    except OSError as exc:
        plan.action, plan.note = "fail", f"cannot read: {exc.strerror or exc}"
        return plan
    plan.size = st.st_size
    plan.mtime = datetime.fromtimestamp(st.st_mtime, timezone.utc)
    plan.kind = compression.detect(head)
    plan.fingerprint, plan.fingerprint_bytes = _sha(head), len(head)
    if force or conn is None:
        plan.note = "forced" if force else ""
        return plan
    row = ledger.fetch_row(conn, name)
    if row is None:
        copy = ledger.find_completed_copy(conn, plan.fingerprint, st.st_size, name)
        if copy is not None:
            plan.action, plan.note = "skip", f"same content as {copy}"
        return plan
    same = st.st_size >= row.fingerprint_bytes and _sha(head[: row.fingerprint_bytes]) == (
        row.fingerprint
    )
    if not same or st.st_size < row.size:
        plan.note = "changed since last import: read again"
        return plan
    if row.completed and st.st_size == row.size:
        plan.action, plan.note = "skip", "unchanged"
        return plan
    plan.action = "resume"
    plan.records_read = row.records_read
    plan.next_position = row.records + 1
    if plan.kind == "plain" and row.bytes_done is not None:
        # bytes_done is set when reading ended at a record boundary: the end of a
        # completed file, or the start of a last record that was left for later
        plan.seek_to = row.bytes_done
        plan.header_line = row.header_line
        if row.completed:
            plan.note = f"grown by {st.st_size - row.size} bytes: reading the rest"
        else:
            plan.note = f"reading on from byte {row.bytes_done} (the last record was not complete)"
    else:
        plan.skip_records = row.records_read
        plan.note = f"resuming after {row.records_read} records"
    return plan
