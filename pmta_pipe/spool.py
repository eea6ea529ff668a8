"""The durable local spool: every record read is journaled here before it is loaded.

PowerMTA keeps nothing for a pipe, so ``pmta-pipe ingest`` appends every batch it
reads to a segment file and makes it durable (``fsync``) before the batch is handed
to the loader; a segment is deleted only once every batch in it is committed to
PostgreSQL. Whatever happens next (database down, ``kill -9``, power loss), the
next ``ingest`` or ``pmta-pipe replay`` loads what the spool holds, and the load
is idempotent (``record_id``), so "at least once from the spool" is "exactly once
in the database". Modelled on nsqio/go-diskqueue and Vector's disk buffer.

Layout
------
One folder (``--spool-dir``), mode 0700, shared by every pmta-pipe process of the
host (missing folders above it are created 0755 at most); files are created 0600::

    <start_us:016d>-<pid>-<seq:06d>.seg   a segment: batches of one process
    .<segment name>.tmp                   a segment being created (never holds records)
    <segment name>.corrupt                a damaged segment, or one of another format
                                          version, moved aside (kept for people)
    fault-<pid>.json                      a setup fault holding that process's batches back
                                          (locked while it lives; ``status`` shows it)

``start_us`` is the writer's start time (microseconds since the epoch), so sorting
names sorts segments by process start, then by sequence: the order they were written.

A segment is ``MAGIC`` (8 bytes, ``PMTASPL1``) followed by frames::

    frame   = marker "\\xa5\\x5a" | kind u8 | length u32 | crc32 u32 | payload
    kind 1  = segment meta, always the first frame: JSON {"format", "source",
              "header_line", "first_position", "pid", "host", "created"}
    kind 2  = one batch: received_at i64 (µs since the epoch, UTC) | first_position u64
              (its top bit set: the input ended inside the batch's last record, which
              the parser keeps only if provably complete)
              | n u32 | n record lengths u32 | the n records (bytes, no line break)

Integers are big-endian; the CRC-32 (``zlib.crc32``) covers kind, length and payload.
The meta makes each segment self-describing for replay: the header line in force at
its start (the parser maps columns by header; header lines inside the segment are
records like any other and change it from there), the source name, and the
position of its first record. Each batch carries the time it was received (the time
given to records without any timestamp) and the position of its first record.

Invariants
----------
1. A batch is appended and ``fsync``-ed before it is queued for loading; the reader
   emits a batch at most ``--batch-seconds`` after its first record arrived, so a
   record is durable at most that long after it was read.
2. A segment is deleted only when every batch in it is committed (or, in replay,
   after the whole segment was loaded). Deleting is the only acknowledgement. The
   active segment is closed (and so deleted) as soon as all of it is committed, so
   the age of the oldest segment is the age of the oldest record not yet loaded.
3. A process holds an exclusive ``flock`` on every segment it owns until it deletes
   or abandons it (at exit, or when it dies: the kernel drops the lock). A segment
   nobody holds a lock on is an orphan: the next ``ingest`` (at start and every
   ``RECOVER_SECONDS``) or ``replay`` claims it by taking the lock and loads it.
4. A new segment is written as ``.<name>.tmp`` (locked, meta written, fsync), then
   renamed to its name and the folder fsync-ed: a segment visible under its name
   always has its meta and is locked from birth, so no other process can claim it
   half-made. A write that fails (disk full) is truncated away before it is retried.

The two ends
------------
* the writer (``SpoolWriter``, one per ``ingest`` process): ``append`` journals a
  batch, ``committed`` acknowledges it, ``close`` releases what is left;
* the consumer (``claim_orphans``): claims segments no live process holds, for
  ``ingest`` (at start and every few minutes) and ``replay``; each
  ``ClaimedSegment`` is ``finish``-ed (deleted, or moved aside when damaged) once
  its batches are committed, or ``release``-d;
* ``backlog`` counts what the folder holds for ``status``.

Recovery rules (``read_segment``)
---------------------------------
Only the last frame of a segment can be a torn write (a crash between ``write`` and
``fsync``; a writer never appends after a failed write, it truncates it away and
starts a new segment). Anything else that does not check out is damage (bit rot, a
bad disk, a hand edit), and damage never costs more than its own bytes:

* A bad frame after which no intact frame follows is a torn last write when it is
  what an interrupted append leaves: fewer bytes than a frame header, a header whose
  payload runs past the end of the file, a checksum that fails on a payload that
  ends exactly at the end of the file (or is followed by zeros only), or a
  zero-filled tail. It is ignored, logged at INFO: those records were never durable,
  so nothing durable is lost. (A bit flipped in the last frame looks the same and is
  treated the same: it cannot be told from a torn write.)
* Any other bad frame is damage: a bad marker or kind, an absurd length, a checksum
  that fails with more bytes after the frame, a meta frame out of place, and a frame
  whose length runs past the end of the file while an intact frame follows its start
  (a flipped bit in the length of a middle frame: read as torn, it would drop the
  rest of the segment). The reader scans for the next frame that checks out
  (``_resync``: marker, header, CRC) and goes on from there, so every intact batch
  is still loaded. Once they are committed, the segment is renamed ``*.corrupt``
  (``ClaimedSegment.finish``) and a WARNING gives the counts: bytes unreadable and
  where, intact batches and records loaded and how many of them were found after
  the damage, records missing between intact batches (from their positions).
  ``status`` is UNHEALTHY, naming the file, until someone deletes it. A segment
  without a valid meta frame is loaded with the default header and the loading
  process's source, and moved aside likewise. Nothing stops the pipe.
* A segment whose MAGIC names another format version (``PMTASPL`` and a byte other
  than ``1``), or whose meta frame's ``format`` is not ``FORMAT``, is never read as
  this version: nothing is loaded from it, it is renamed ``*.corrupt`` with an ERROR,
  and ``status`` reports it as written in an unknown format (replay it with the
  version that wrote it). A flipped bit in the version byte looks the same and is
  handled the same way: the file is kept for people.
* Files that match none of the names above are left alone (and reported by
  ``status``). A ``.tmp`` nobody holds a lock on is removed: it never held records.
* Replaying a segment that was partly committed before a crash skips the batches
  ``pmta.ingest_batches`` records as committed (by segment name and frame offset);
  anything loaded twice anyway is recognised by ``record_id`` and not added.

Room (``--spool-max-bytes``)
----------------------------
``SpoolWriter.try_append`` counts the bytes a batch adds (its frame, and a new
segment's head when one is due) against the bytes of every segment in the folder
before writing it, and writes nothing when they would pass the limit; ``ingest``
then holds reading. So one process never takes the folder past the limit, with two
exceptions: a single batch larger than the whole limit is written into a folder
that holds no segment (else it could never be), and after a stop request the
batches already read are journaled whatever the limit (``append``). The other
processes' segments are counted as of the last rescan of the folder (at most a
second old), so processes sharing a folder can pass it by what the others journaled
in that second. ``*.corrupt`` files do not count.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pmta_pipe.errors import SpoolError
from pmta_pipe.framing import count_positions

log = logging.getLogger(__name__)

MAGIC = b"PMTASPL1"
FORMAT = 1
_MARK = b"\xa5\x5a"
_FRAME = struct.Struct(">2sBII")
_KL = struct.Struct(">BI")
_BATCH = struct.Struct(">qQI")
KIND_META = 1
KIND_BATCH = 2
MAX_FRAME = 1 << 30
SEGMENT_BYTES = 8 << 20  # a segment is closed once this large ...
SEGMENT_SECONDS = 60.0  # ... or this old (while the loader is behind)
SEGMENT = re.compile(r"(\d{16})-(\d+)-(\d{6})\.seg")
TMP = re.compile(r"\.(\d{16}-\d+-\d{6}\.seg)\.tmp")
FAULT = re.compile(r"fault-(\d+)\.json")
CORRUPT_SUFFIX = ".corrupt"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


# -- frames -----------------------------------------------------------------------


def encode_frame(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_KL.pack(kind, len(payload))))
    return _FRAME.pack(_MARK, kind, len(payload), crc) + payload


_TORN_BIT = 1 << 63  # in first_position: the last record may be cut off


def encode_batch(
    records: Sequence[bytes], received_at: datetime, first_position: int, torn_last: bool = False
) -> bytes:
    micros = (received_at - _EPOCH) // _US
    n = len(records)
    return b"".join(
        (
            _BATCH.pack(micros, first_position | (_TORN_BIT if torn_last else 0), n),
            struct.pack(f">{n}I", *map(len, records)),
            *records,
        )
    )


def batch_frame_bytes(records: Sequence[bytes]) -> int:
    """The size of the frame ``encode_frame(KIND_BATCH, encode_batch(records, ...))``."""
    return _FRAME.size + _BATCH.size + 4 * len(records) + sum(map(len, records))


@dataclass(frozen=True)
class BatchRef:
    """Where a batch is: its segment's file name and the byte offset of its frame."""

    segment: str
    offset: int


@dataclass
class SpooledBatch:
    """One batch as journaled: whole records, when they arrived, first record position."""

    ref: BatchRef
    records: list[bytes]
    received_at: datetime
    first_position: int
    torn_last: bool = False  # the input ended inside the last record (see parse)


def decode_batch(payload: bytes, ref: BatchRef) -> SpooledBatch:
    micros, first, n = _BATCH.unpack_from(payload, 0)
    lengths = struct.unpack_from(f">{n}I", payload, _BATCH.size)
    pos = _BATCH.size + 4 * n
    records = []
    for size in lengths:
        records.append(payload[pos : pos + size])
        pos += size
    if pos != len(payload):
        raise ValueError("batch lengths do not add up")
    torn = bool(first & _TORN_BIT)
    return SpooledBatch(ref, records, _EPOCH + micros * _US, first & ~_TORN_BIT, torn)


class UnknownFormat(Exception):
    """A segment written in a format this version cannot read (never read as another)."""


@dataclass
class SegmentMeta:
    """The first frame of a segment: what replaying it needs to know."""

    source: str
    header_line: str | None
    first_position: int
    pid: int = 0
    host: str = ""
    created: str = ""

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, **self.__dict__}, ensure_ascii=False).encode()

    @classmethod
    def decode(cls, payload: bytes) -> SegmentMeta:
        data: dict[str, Any] = json.loads(payload)
        if data.get("format") != FORMAT:
            raise UnknownFormat(f"its meta frame names format {data.get('format')!r}")
        return cls(
            source=str(data["source"]),
            header_line=data.get("header_line"),
            first_position=int(data.get("first_position", 1)),
            pid=int(data.get("pid", 0)),
            host=str(data.get("host", "")),
            created=str(data.get("created", "")),
        )


@dataclass
class SegmentReading:
    """What ``read_segment`` found in one file."""

    name: str
    meta: SegmentMeta | None = None
    batches: list[SpooledBatch] = field(default_factory=list)
    torn_bytes: int = 0  # an incomplete last write, ignored
    damage: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) unreadable
    unknown_format: str | None = None  # why: another version wrote it; nothing was read
    size: int = 0  # bytes in the file

    @property
    def corrupt_bytes(self) -> int:
        """Damaged bytes skipped (the torn last write is not counted)."""
        return sum(size for _offset, size in self.damage)

    @property
    def damaged(self) -> bool:
        """True when the segment is to be moved aside rather than deleted once loaded."""
        return self.meta is None or bool(self.damage) or self.unknown_format is not None

    @property
    def records(self) -> int:
        return sum(len(b.records) for b in self.batches)

    def after_damage(self) -> tuple[int, int]:
        """(batches, records) read from after the first damaged byte: what resync saved.
        Records here are the lines that take a position (header lines do not)."""
        if not self.damage:
            return 0, 0
        start = self.damage[0][0]
        later = [b for b in self.batches if b.ref.offset > start]
        return len(later), sum(scan_records(b.records)[0] for b in later)

    def missing_positions(self) -> int | None:
        """Record positions that fall between the intact batches (the records lost to
        damage between them), or ``None`` when the damage runs to the end of the file
        (what was after it cannot be counted)."""
        if self.damage and self.damage[-1][0] + self.damage[-1][1] >= self.size:
            return None
        expected = self.meta.first_position if self.meta is not None else None
        missing = 0
        for batch in self.batches:
            if expected is not None:
                missing += max(0, batch.first_position - expected)
            expected = batch.first_position + scan_records(batch.records)[0]
        return missing


_PREFIX = MAGIC[:-1]  # "PMTASPL": the last byte is the format version


def _frame_at(data: bytes, pos: int) -> tuple[str, int, bytes, int]:
    """Check the frame at ``pos``: (status, kind, payload, end), status one of

    * ``ok``: intact (``payload`` holds its bytes, ``end`` is where the next begins);
    * ``short``: fewer bytes than a frame header are left;
    * ``past_end``: a plausible header whose payload runs past the end of the file;
    * ``crc``: a plausible header, a checksum that fails (``end`` per its length);
    * ``bad``: no frame header here (marker, kind or an absurd length).
    """
    if pos + _FRAME.size > len(data):
        return "short", 0, b"", len(data)
    mark, kind, length, crc = _FRAME.unpack_from(data, pos)
    if mark != _MARK or kind not in (KIND_META, KIND_BATCH) or length > MAX_FRAME:
        return "bad", 0, b"", pos
    end = pos + _FRAME.size + length
    if end > len(data):
        return "past_end", 0, b"", end
    view = memoryview(data)[pos + _FRAME.size : end]
    if zlib.crc32(view, zlib.crc32(_KL.pack(kind, length))) != crc:
        return "crc", 0, b"", end
    return "ok", kind, bytes(view), end


def _resync(data: bytes, pos: int) -> int | None:
    """The offset of the next intact frame after ``pos``, if any."""
    at = data.find(_MARK, pos + 1)
    while at >= 0:
        if _frame_at(data, at)[0] == "ok":
            return at
        at = data.find(_MARK, at + 1)
    return None


def _is_torn(data: bytes, pos: int, status: str, end: int) -> bool:
    """Whether the bad bytes from ``pos`` to the end of the file (no intact frame after
    them) are what an interrupted append leaves: a prefix of a frame, then maybe zeros."""
    if status in ("short", "past_end"):
        return True  # the header, or the payload, runs past the end of the file
    if status == "crc" and not data[end:].strip(b"\0"):
        return True  # the payload ends exactly at the end (or zeros follow): not all written
    return not data[pos:].strip(b"\0")  # a zero-filled tail: the file grew, the data never came


def parse_segment(data: bytes, name: str) -> SegmentReading:
    """Decode a segment's bytes, applying the recovery rules of the module docstring."""
    out = SegmentReading(name, size=len(data))
    if data.startswith(MAGIC):
        pos = len(MAGIC)
    elif data.startswith(_PREFIX) and len(data) >= len(MAGIC):
        out.unknown_format = f"its magic is {data[: len(MAGIC)].decode('ascii', 'replace')!r}"
        return out
    else:
        if not data.strip(b"\0"):
            out.torn_bytes = len(data)  # created, never written: nothing in it
            return out
        nxt = _resync(data, 0)
        out.damage.append((0, len(data) if nxt is None else nxt))
        if nxt is None:
            return out
        pos = nxt
    first = True
    while pos < len(data):
        status, kind, payload, end = _frame_at(data, pos)
        if status == "ok":
            try:
                if kind == KIND_META and first:
                    out.meta = SegmentMeta.decode(payload)
                elif kind == KIND_BATCH:
                    out.batches.append(decode_batch(payload, BatchRef(name, pos)))
                else:
                    out.damage.append((pos, end - pos))  # a meta frame out of place
            except UnknownFormat as exc:
                out.unknown_format = str(exc)
                return out
            except (ValueError, KeyError, TypeError, struct.error):
                out.damage.append((pos, end - pos))  # checksum fine, content not: a bug
            first = False
            pos = end
            continue
        nxt = _resync(data, pos)
        if nxt is None and _is_torn(data, pos, status, end):
            out.torn_bytes = len(data) - pos  # only the last frame can be a torn write
            break
        out.damage.append((pos, (len(data) if nxt is None else nxt) - pos))
        if nxt is None:
            break
        first = False
        pos = nxt
    return out


def read_segment(path: Path, fd: int | None = None) -> SegmentReading:
    """Read and decode one segment file (through ``fd`` when the caller holds it open)."""
    if fd is None:
        data = path.read_bytes()
    else:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
    return parse_segment(data, path.name)


# -- folder -----------------------------------------------------------------------


def prepare_folder(folder: Path) -> Path:
    """Create the spool folder (0700) if needed and check that it can be written.

    Missing folders above it are created 0755 at most (the umask may take more away),
    never group- or world-writable whatever the umask."""
    try:
        missing = []
        parent = folder.absolute().parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                path.mkdir(mode=0o755)
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            folder.chmod(0o700)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {folder}")
    except OSError as exc:
        raise SpoolError(
            f"cannot use the spool folder {folder}: {exc.strerror or exc}",
            "set --spool-dir (PMTA_PIPE_SPOOL_DIR) to a folder the PowerMTA user can write",
        ) from None
    return folder


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SegmentFile:
    """A file in the spool folder, from its name and ``stat``."""

    path: Path
    size: int
    mtime: float
    kind: str  # "segment", "tmp", "corrupt", "fault" or "stray"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pid(self) -> int | None:
        m = SEGMENT.fullmatch(self.name)
        return int(m.group(2)) if m else None


def list_files(folder: Path) -> list[SegmentFile]:
    """Every file of the spool folder, segments first in write order."""
    out: list[SegmentFile] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted meanwhile
        if not entry.is_file(follow_symlinks=False):
            kind = "stray"
        elif SEGMENT.fullmatch(entry.name):
            kind = "segment"
        elif TMP.fullmatch(entry.name):
            kind = "tmp"
        elif entry.name.endswith(CORRUPT_SUFFIX):
            kind = "corrupt"
        elif FAULT.fullmatch(entry.name):
            kind = "fault"
        else:
            kind = "stray"
        out.append(SegmentFile(Path(entry.path), st.st_size, st.st_mtime, kind))
    order = {"segment": 0, "tmp": 1, "corrupt": 2, "fault": 3, "stray": 4}
    out.sort(key=lambda f: (order[f.kind], f.name))
    return out


def claim(path: Path) -> int | None:
    """Open and lock a segment nobody holds; ``None`` when it is in use or gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the owner may have deleted it between our open and our lock
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


def is_locked(path: Path) -> bool:
    """True when a live process holds the segment."""
    fd = claim(path)
    if fd is None:
        return path.exists()
    os.close(fd)
    return False


def count_records(path: Path) -> tuple[int, int, datetime | None]:
    """(batches, records, first batch's received_at) of a segment, from frame headers only
    (``status`` counts a backlog of gigabytes without decoding it)."""
    batches = records = 0
    first: datetime | None = None
    try:
        with path.open("rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return 0, 0, None
            while True:
                head = fh.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    break
                mark, kind, length, _crc = _FRAME.unpack(head)
                if mark != _MARK or kind not in (KIND_META, KIND_BATCH) or length > MAX_FRAME:
                    break  # damage: what follows is counted once replay has read it
                if kind == KIND_BATCH:
                    body = fh.read(_BATCH.size)
                    if len(body) < _BATCH.size:
                        break
                    micros, _first_position, n = _BATCH.unpack(body)
                    if first is None:
                        first = _EPOCH + micros * _US
                    batches += 1
                    records += n
                    fh.seek(length - _BATCH.size, os.SEEK_CUR)
                else:
                    fh.seek(length, os.SEEK_CUR)
    except FileNotFoundError:
        pass
    return batches, records, first


def move_aside(path: Path) -> Path | None:
    """Rename a damaged segment to ``*.corrupt`` so it is never loaded again; return the
    new path (``None``: it was gone). ``status`` reports it until someone deletes it."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    with contextlib.suppress(OSError):
        fsync_folder(path.parent)
    return target


def describe_damage(r: SegmentReading) -> str:
    """The counts an operator needs about a damaged segment, in one sentence."""
    parts = []
    if r.damage:
        parts.append(
            f"{r.corrupt_bytes} bytes unreadable in {len(r.damage)} place(s), the first at"
            f" byte {r.damage[0][0]} of {r.size}"
        )
    if r.meta is None:
        parts.append("no valid meta frame (its batches were loaded with the default header"
                     " and the loading process's source)")  # fmt: skip
    after_batches, after_records = r.after_damage()
    loaded = sum(scan_records(b.records)[0] for b in r.batches)  # header lines not counted
    parts.append(
        f"{len(r.batches)} intact batches ({loaded} records) were loaded, {after_batches}"
        f" of them ({after_records} records) found after the damage"
    )
    missing = r.missing_positions()
    if missing is None:
        parts.append("the records in the unreadable bytes cannot be counted")
    else:
        parts.append(f"{missing} records are missing between the intact batches")
    return "; ".join(parts)


# -- the consumer: orphaned segments ----------------------------------------------------

TMP_GRACE_SECONDS = 60.0  # a .tmp younger than this may be a segment being created


@dataclass
class ClaimedSegment:
    """A segment no live process held, now locked by this one and read whole.

    Its owner loads ``reading.batches`` and then calls ``finish`` (every batch is
    committed: delete it, or move it aside when it was damaged) or ``release``
    (leave it, unlocked, for a later run).
    """

    path: Path
    fd: int
    reading: SegmentReading

    @property
    def name(self) -> str:
        return self.path.name

    def finish(self) -> None:
        r = self.reading
        if r.torn_bytes:
            log.info("spool segment %s: ignored an incomplete last write (%d bytes, never "
                     "durable)", r.name, r.torn_bytes)  # fmt: skip
        if r.unknown_format is not None:
            target = move_aside(self.path)
            log.error(
                "spool segment %s was written in a format this pmta-pipe cannot read (%s):"
                " nothing was loaded from it; moved aside to %s (replay it with the pmta-pipe"
                " version that wrote it, then delete it)", r.name, r.unknown_format, target,
            )  # fmt: skip
        elif r.damaged:
            target = move_aside(self.path)
            log.warning("spool segment %s is damaged: %s; moved aside to %s (look at it, then"
                        " delete it)", r.name, describe_damage(r), target)  # fmt: skip
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim_orphans(folder: Path) -> Iterator[ClaimedSegment]:
    """Claim and read, oldest first, every segment of ``folder`` that no live process holds.

    On the way, removes ``.tmp`` files of interrupted segment creations (they never
    held records) and fault notes of processes that are gone.
    """
    for f in list_files(folder):
        if f.kind in ("tmp", "fault"):
            if f.kind == "tmp" and time.time() - f.mtime <= TMP_GRACE_SECONDS:
                continue
            fd = claim(f.path)
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    f.path.unlink()
                os.close(fd)
            continue
        if f.kind != "segment":
            continue
        fd = claim(f.path)
        if fd is None:
            continue  # a live process owns it
        try:
            reading = read_segment(f.path, fd)
        except BaseException:
            os.close(fd)
            raise
        yield ClaimedSegment(f.path, fd, reading)


@dataclass
class Backlog:
    """What the spool folder holds, as ``status`` shows it (frame headers only)."""

    segments: int = 0
    orphaned_segments: int = 0
    batches: int = 0
    records: int = 0
    bytes: int = 0
    oldest: datetime | None = None
    corrupt_files: list[str] = field(default_factory=list)  # every *.corrupt file
    unknown_format_files: list[str] = field(default_factory=list)  # those another version wrote
    stray_files: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)  # setup faults of live processes


def unknown_format(path: Path) -> str | None:
    """Why the file was written in a format this version cannot read, from its magic and
    meta frame only; ``None`` when it is this format (or damaged past telling)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(MAGIC) + _FRAME.size + 65536)  # a meta frame is small
    except OSError:
        return None
    reading = parse_segment(head, path.name)
    return reading.unknown_format if reading.meta is None else None


def backlog(folder: Path) -> Backlog:
    """Count what ``folder`` holds, without claiming anything for longer than a check."""
    out = Backlog()
    for f in list_files(folder):
        if f.kind == "segment":
            b, r, first = count_records(f.path)
            out.segments += 1
            out.batches += b
            out.records += r
            out.bytes += f.size
            if first is not None and (out.oldest is None or first < out.oldest):
                out.oldest = first
            if not is_locked(f.path):
                out.orphaned_segments += 1
        elif f.kind == "corrupt":
            out.corrupt_files.append(f.name)
            if unknown_format(f.path) is not None:
                out.unknown_format_files.append(f.name)
        elif f.kind == "stray":
            out.stray_files.append(f.name)
        elif f.kind == "fault" and is_locked(f.path):
            try:
                note = json.loads(f.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                note = {"message": "a setup fault (its note could not be read)"}
            out.faults.append(note if isinstance(note, dict) else {"message": str(note)})
    return out


# -- positions (the reader thread's share of parsing) --------------------------------------


def scan_records(records: Sequence[bytes]) -> tuple[int, str | None]:
    """(records that take a position, last header line among them or ``None``), counted
    by ``framing.count_positions`` exactly as the parser counts them."""
    positioned, header = count_positions(records)
    line = None if header is None else header.decode("utf-8", "replace").rstrip("\r\n")
    return positioned, line


# -- the writer ----------------------------------------------------------------------


@dataclass
class _Owned:
    name: str
    fd: int
    size: int
    created: float
    batches: int = 0
    committed: int = 0
    closed: bool = False
    waiting: dict[int, int] = field(default_factory=dict)  # offset -> records, not committed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class SpoolWriter:
    """The segments of one ``ingest`` process: append (durably), read back, acknowledge.

    ``append`` runs in the reader thread, ``read_batch`` and ``committed`` in the
    loading thread; one lock guards the bookkeeping (never held across a database call).
    """

    def __init__(
        self,
        folder: Path,
        source: str,
        *,
        max_bytes: int,
        segment_bytes: int = SEGMENT_BYTES,
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        self.folder = prepare_folder(folder)
        self.source = source
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.started_us = time.time_ns() // 1000
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.header_line: str | None = None
        self.next_position = 1
        self._seq = 0
        self._lock = threading.Lock()
        self._owned: dict[str, _Owned] = {}
        self._active: _Owned | None = None
        self._folder_bytes = 0
        self._scanned_at = -1e9
        self.appended_batches = 0
        self.appended_bytes = 0
        self._fault_fd: int | None = None
        self.left_records = 0  # after close: records journaled and not committed

    # -- appending (reader thread) --------------------------------------------
    def append(
        self, records: list[bytes], received_at: datetime, torn_last: bool = False
    ) -> SpooledBatch:
        """Journal one batch durably, whatever the limit; return it with its place."""
        batch = self._append(records, received_at, torn_last, within_limit=False)
        assert batch is not None
        return batch

    def try_append(
        self, records: list[bytes], received_at: datetime, torn_last: bool = False
    ) -> SpooledBatch | None:
        """Journal one batch durably if the folder has room for all the bytes it adds (its
        frame, and a new segment's head when one is due); ``None``: no room, nothing written.

        One batch larger than the whole limit is written when the folder holds no segment
        (else it could never be written)."""
        return self._append(records, received_at, torn_last, within_limit=True)

    def _append(
        self, records: list[bytes], received_at: datetime, torn_last: bool, *, within_limit: bool
    ) -> SpooledBatch | None:
        positioned, header = scan_records(records)
        with self._lock:
            seg = self._active
            rotate = (
                seg is None
                or seg.size >= self.segment_bytes
                or time.monotonic() - seg.created >= self.segment_seconds
            )
            head = self._head() if rotate else b""
            if within_limit:
                adds = len(head) + batch_frame_bytes(records)
                held = self._folder_bytes_locked()
                if held and held + adds > self.max_bytes:
                    return None
            if rotate:
                seg = self._rotate(head)
            assert seg is not None
            first = self.next_position
            frame = encode_frame(KIND_BATCH, encode_batch(records, received_at, first, torn_last))
            offset = seg.size
            try:
                _write_all(seg.fd, frame)
                os.fdatasync(seg.fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(seg.fd, offset)
                self._close_active()  # the next attempt starts a fresh segment
                raise
            seg.size += len(frame)
            seg.batches += 1
            seg.waiting[offset] = positioned  # header lines are not records
            self.next_position += positioned
            if header is not None:
                self.header_line = header
            self.appended_batches += 1
            self.appended_bytes += len(frame)
            self._folder_bytes += len(frame)
        return SpooledBatch(BatchRef(seg.name, offset), records, received_at, first, torn_last)

    def _head(self) -> bytes:
        """The first bytes of a new segment: MAGIC and the meta frame."""
        meta = SegmentMeta(
            self.source, self.header_line, self.next_position, self.pid, self.host,
            datetime.now(timezone.utc).isoformat(),
        )  # fmt: skip
        return MAGIC + encode_frame(KIND_META, meta.encode())

    def _rotate(self, head: bytes) -> _Owned:
        self._close_active()
        name = f"{self.started_us:016d}-{self.pid}-{self._seq:06d}.seg"
        self._seq += 1
        tmp = self.folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, head)
            os.fsync(fd)
            os.rename(tmp, self.folder / name)
            fsync_folder(self.folder)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        seg = _Owned(name, fd, len(head), time.monotonic())
        self._owned[name] = seg
        self._active = seg
        self._folder_bytes += len(head)
        return seg

    def _close_active(self) -> None:
        seg, self._active = self._active, None
        if seg is not None:
            seg.closed = True
            if seg.committed >= seg.batches:
                self._delete(seg)

    def _delete(self, seg: _Owned) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / seg.name)  # unlinked while still locked: see claim()
        os.close(seg.fd)
        self._owned.pop(seg.name, None)
        self._folder_bytes -= seg.size

    # -- room ------------------------------------------------------------------
    def folder_bytes(self) -> int:
        """Bytes of all segments in the folder (every process), rescanned each second."""
        with self._lock:
            return self._folder_bytes_locked()

    def _folder_bytes_locked(self) -> int:
        now = time.monotonic()
        if now - self._scanned_at >= 1.0:
            self._folder_bytes = sum(f.size for f in list_files(self.folder) if f.kind == "segment")
            self._scanned_at = now
        return self._folder_bytes

    def has_room(self, nbytes: int = 1) -> bool:
        """Whether ``nbytes`` more fit in the folder under ``max_bytes``."""
        return self.folder_bytes() + nbytes <= self.max_bytes

    # -- loading side ---------------------------------------------------------
    def read_batch(self, ref: BatchRef) -> SpooledBatch:
        """Read a batch back (one that was kept on disk only)."""
        with self._lock:
            seg = self._owned.get(ref.segment)
            if seg is None:
                raise SpoolError(f"spool segment {ref.segment} is no longer held")
            head = os.pread(seg.fd, _FRAME.size, ref.offset)
            _mark, kind, length, _crc = _FRAME.unpack(head)
            data = head + os.pread(seg.fd, length, ref.offset + _FRAME.size)
        status, kind, payload, _end = _frame_at(data, 0)
        if status != "ok" or kind != KIND_BATCH:
            raise SpoolError(f"spool segment {ref.segment}: batch at {ref.offset} is damaged")
        return decode_batch(payload, ref)

    def committed(self, ref: BatchRef) -> None:
        """The batch at ``ref`` is committed; delete its segment once all of it is."""
        with self._lock:
            seg = self._owned.get(ref.segment)
            if seg is None or seg.waiting.pop(ref.offset, None) is None:
                return
            seg.committed += 1
            if seg.committed >= seg.batches:
                if seg is self._active:
                    self._close_active()  # nothing pending: don't keep a stale file around
                else:
                    self._delete(seg)

    def backlog(self) -> tuple[int, int]:
        """(segments, batches) this process holds that are not committed yet."""
        with self._lock:
            return len(self._owned), sum(s.batches - s.committed for s in self._owned.values())

    def close(self) -> int:
        """Delete what is committed, release the rest for recovery; return the batches
        left in the spool (``left_records`` says how many records they hold)."""
        self.report_fault(None)
        with self._lock:
            self._close_active()
            batches = records = 0
            for seg in list(self._owned.values()):
                if seg.committed >= seg.batches:
                    self._delete(seg)
                else:
                    batches += seg.batches - seg.committed
                    records += sum(seg.waiting.values())
                    os.close(seg.fd)
            self._owned.clear()
            self.left_records = records
            return batches

    # -- what status shows ------------------------------------------------------
    def report_fault(self, note: dict[str, Any] | None) -> None:
        """Show (``note``) or clear (``None``) a setup fault that holds this process's
        batches back: a file ``fault-<pid>.json``, locked while this process lives."""
        path = self.folder / f"fault-{self.pid}.json"
        if note is None:
            if self._fault_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.close(self._fault_fd)
                self._fault_fd = None
            return
        data = json.dumps({**note, "pid": self.pid, "source": self.source}).encode()
        try:
            if self._fault_fd is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fault_fd = fd
            os.ftruncate(self._fault_fd, 0)
            os.pwrite(self._fault_fd, data, 0)
        except OSError as exc:  # status then sees the backlog, not the reason
            log.warning("cannot write %s: %s", path, exc)
