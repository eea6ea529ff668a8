"""A damaged spool never drops records silently; a full spool stays within its limit.

Every case works on real segment files written by ``SpoolWriter``: a bit flipped in
a frame's length, checksum, marker or payload, the last frame cut at every byte, a
segment of another format version. The rules are those of ``pmta_pipe/spool.py``
(recovery rules): only the last frame can be a torn write; any other damage costs
its own frame, the segment is moved aside with a WARNING that counts what was kept,
and ``status`` is UNHEALTHY until someone deletes the ``*.corrupt`` file. The
end-to-end cases run ``pmta-pipe ingest`` with the database away, damage what it
left, and ``pmta-pipe replay`` into the real database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from pmta_pipe import ingest
from pmta_pipe.ingest import Journal, Pending, PendingQueue
from pmta_pipe.reader import RawBatch
from pmta_pipe.spool import (
    KIND_META,
    MAGIC,
    SegmentReading,
    SpoolWriter,
    backlog,
    batch_frame_bytes,
    claim_orphans,
    encode_frame,
    list_files,
    parse_segment,
    read_segment,
)
from tests.conftest import count, run_cli

Conn = psycopg.Connection[tuple[object, ...]]
T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
AWAY = "postgresql://postgres@127.0.0.1:1/x"  # nothing listens on port 1
HEADER = b"type,timeLogged,rcpt"
N = 8  # batches in the test segment
PER = 10  # records per batch
LENGTH_AT = 3  # the u32 length field: after the marker (2 bytes) and the kind (1)
CRC_AT = 7
PAYLOAD_AT = 11 + 40  # inside the records of the batch


def records(k: int, n: int = PER) -> list[bytes]:
    return [b"d,2026-01-15 14:23:11-0700,b%d-r%d@x.com" % (k, i) for i in range(n)]


def write_segment(folder: Path, n: int = N) -> tuple[Path, bytes, list[int]]:
    """One segment of ``n`` batches of ``PER`` records: (path, bytes, frame offsets)."""
    w = SpoolWriter(folder, "host-a", max_bytes=1 << 30)
    refs = [w.append(records(k), T0).ref.offset for k in range(n)]
    assert w.close() == n
    (f,) = [f for f in list_files(folder) if f.kind == "segment"]
    return f.path, f.path.read_bytes(), refs


def flipped(data: bytes, at: int, bit: int) -> bytes:
    out = bytearray(data)
    out[at + bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def batch_ids(reading: SegmentReading) -> list[int]:
    """Which test batch each batch read is (from its first record)."""
    out = []
    for b in reading.batches:
        m = re.match(rb"d,[^,]*,b(\d+)-r0@", b.records[0])
        assert m is not None
        assert b.records == records(int(m.group(1)))  # every record of it, exactly
        out.append(int(m.group(1)))
    return out


# -- damage before the end: every other batch is kept, the segment is damaged -------------


@pytest.mark.parametrize("k", [1, 3, N - 2])
def test_every_bit_of_a_middle_frames_length_costs_only_that_frame(tmp_path: Path, k: int) -> None:
    _path, data, offsets = write_segment(tmp_path)
    for bit in range(32):  # bigger (past the end, or absurd) and smaller lengths alike
        got = parse_segment(flipped(data, offsets[k] + LENGTH_AT, bit), "x.seg")
        assert batch_ids(got) == [j for j in range(N) if j != k], bit
        assert got.damaged and got.torn_bytes == 0, bit
        assert got.damage == [(offsets[k], offsets[k + 1] - offsets[k])], bit
        assert got.after_damage() == (N - 1 - k, (N - 1 - k) * PER), bit
        assert got.missing_positions() == PER, bit


def test_a_length_run_past_the_end_is_damage_when_frames_follow(tmp_path: Path) -> None:
    """The case a torn-write reading got wrong: the rest of the segment was dropped."""
    _path, data, offsets = write_segment(tmp_path)
    bit = 32 - (len(data).bit_length() + 1)  # adds more than the whole file to the length
    got = parse_segment(flipped(data, offsets[2] + LENGTH_AT, bit), "x.seg")
    assert batch_ids(got) == [0, 1, 3, 4, 5, 6, 7]
    assert got.torn_bytes == 0 and got.corrupt_bytes == offsets[3] - offsets[2]


@pytest.mark.parametrize(
    ("where", "at"),
    [("marker", 0), ("kind", 2), ("crc", CRC_AT), ("payload", PAYLOAD_AT)],
)
def test_a_bit_flipped_in_a_middle_frame_costs_only_that_frame(
    tmp_path: Path, where: str, at: int
) -> None:
    _path, data, offsets = write_segment(tmp_path)
    for k in range(1, N - 1):
        for bit in (0, 5, 7):
            got = parse_segment(flipped(data, offsets[k] + at, bit), "x.seg")
            assert batch_ids(got) == [j for j in range(N) if j != k], (where, k, bit)
            assert got.damaged and got.torn_bytes == 0, (where, k, bit)
            assert got.corrupt_bytes == offsets[k + 1] - offsets[k], (where, k, bit)


def test_two_damaged_frames_and_the_meta_frame(tmp_path: Path) -> None:
    _path, data, offsets = write_segment(tmp_path)
    twice = flipped(flipped(data, offsets[1] + CRC_AT, 3), offsets[5] + LENGTH_AT, 1)
    got = parse_segment(twice, "x.seg")
    assert batch_ids(got) == [0, 2, 3, 4, 6, 7] and len(got.damage) == 2
    assert got.missing_positions() == 2 * PER
    no_meta = parse_segment(flipped(data, len(MAGIC) + 20, 0), "x.seg")
    assert no_meta.meta is None and no_meta.damaged and batch_ids(no_meta) == list(range(N))
    no_magic = parse_segment(flipped(data, 0, 0), "x.seg")  # "PMTASPL1" with its P damaged
    assert no_magic.meta is not None and no_magic.damage == [(0, len(MAGIC))]
    assert batch_ids(no_magic) == list(range(N))


# -- the last frame: a torn write, ignored -------------------------------------------------


def test_damage_in_the_last_frame_is_a_torn_write(tmp_path: Path) -> None:
    _path, data, offsets = write_segment(tmp_path)
    last = offsets[-1]
    length = int.from_bytes(data[last + LENGTH_AT : last + LENGTH_AT + 4], "big")
    cases = {
        "crc": flipped(data, last + CRC_AT, 0),
        "payload": flipped(data, last + PAYLOAD_AT, 6),
        "last byte": flipped(data, len(data) - 1, 7),
        "zeroed": data[:last] + b"\0" * (len(data) - last),
        "zeros after": data[:-20] + b"\0" * 4096,
    }
    for bit in range(2, 32):  # every bit that makes it bigger, not absurd: past the end
        if not length & (1 << (31 - bit)):
            cases[f"length bit {bit}"] = flipped(data, last + LENGTH_AT, bit)
    for what, damaged in cases.items():
        got = parse_segment(damaged, "x.seg")
        assert batch_ids(got) == list(range(N - 1)), what
        assert not got.damaged and got.damage == [], what
        assert got.torn_bytes == len(damaged) - last, what


def test_a_shrunk_last_length_or_a_bad_last_marker_is_damage(tmp_path: Path) -> None:
    """A torn write leaves a prefix of the frame: never a frame that ends before the
    end of the file with other bytes after it, nor a marker that is not one."""
    _path, data, offsets = write_segment(tmp_path)
    last = offsets[-1]
    length = int.from_bytes(data[last + LENGTH_AT : last + LENGTH_AT + 4], "big")
    low = 31 - (length & -length).bit_length() + 1  # the lowest bit set: clear it
    absurd = [("absurd length", last + LENGTH_AT, b) for b in (0, 1)]  # > MAX_FRAME
    for what, at, bit in [("length", last + LENGTH_AT, low), ("marker", last, 0), *absurd]:
        got = parse_segment(flipped(data, at, bit), "x.seg")
        assert batch_ids(got) == list(range(N - 1)), what
        assert got.damaged and got.torn_bytes == 0, what
        assert got.damage == [(last, len(data) - last)], what
        assert got.missing_positions() is None, what  # what it held cannot be counted


def test_truncation_at_every_byte_of_the_last_frame_is_deleted_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "spool"
    path, data, offsets = write_segment(folder, n=3)
    caplog.set_level(logging.INFO, logger="pmta_pipe.spool")
    for size in range(len(data) - 1, offsets[-1] - 1, -1):
        path.write_bytes(data[:size])
        (claimed,) = claim_orphans(folder)
        assert batch_ids(claimed.reading) == [0, 1], size
        assert claimed.reading.torn_bytes == size - offsets[-1], size
        claimed.finish()
        assert list_files(folder) == [], size  # deleted: not moved aside
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- what the operator sees ----------------------------------------------------------------


def test_a_damaged_segment_is_moved_aside_with_the_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "spool"
    path, data, offsets = write_segment(folder)
    path.write_bytes(flipped(data, offsets[2] + LENGTH_AT, 4))
    (claimed,) = claim_orphans(folder)
    claimed.finish()
    assert [(f.kind, f.name) for f in list_files(folder)] == [("corrupt", path.name + ".corrupt")]
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert f"{offsets[3] - offsets[2]} bytes unreadable in 1 place(s)" in text
    assert f"the first at byte {offsets[2]} of {len(data)}" in text
    assert "7 intact batches (70 records) were loaded, 5 of them (50 records) found after" in text
    assert "10 records are missing between the intact batches" in text
    assert "moved aside to" in text and path.name + ".corrupt" in text
    b = backlog(folder)
    assert (b.corrupt_files, b.unknown_format_files) == ([path.name + ".corrupt"], [])


def other_version(data: bytes, how: str) -> bytes:
    if how == "magic":
        return b"PMTASPL2" + data[len(MAGIC) :]
    reading = parse_segment(data, "x.seg")
    assert reading.meta is not None and reading.batches
    meta = json.dumps({**reading.meta.__dict__, "format": 2}).encode()
    return MAGIC + encode_frame(KIND_META, meta) + data[reading.batches[0].ref.offset :]


@pytest.mark.parametrize("how", ["magic", "meta"])
def test_a_segment_of_another_format_is_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    folder = tmp_path / "spool"
    path, data, _offsets = write_segment(folder)
    path.write_bytes(other_version(data, how))
    got = read_segment(path)
    assert got.unknown_format is not None and got.batches == [] and got.damaged
    (claimed,) = claim_orphans(folder)
    claimed.finish()
    assert [f.name for f in list_files(folder)] == [path.name + ".corrupt"]
    (error,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelno == logging.ERROR
    assert "format this pmta-pipe cannot read" in error.getMessage()
    assert ("'PMTASPL2'" if how == "magic" else "format 2") in error.getMessage()
    assert "nothing was loaded" in error.getMessage()
    assert backlog(folder).unknown_format_files == [path.name + ".corrupt"]


# -- room ----------------------------------------------------------------------------------


def segment_bytes(folder: Path) -> int:
    """What the limit counts, measured on disk."""
    return sum(f.size for f in list_files(folder) if f.kind == "segment")


def test_try_append_counts_the_batch_against_the_limit(tmp_path: Path) -> None:
    batch = records(0, 20)
    frame = batch_frame_bytes(batch)
    w = SpoolWriter(tmp_path, "host-a", max_bytes=10 * frame)
    written = 0
    while w.try_append(batch, T0) is not None:
        written += 1
        assert segment_bytes(tmp_path) <= 10 * frame
        assert written < 100
    head = segment_bytes(tmp_path) - written * frame  # MAGIC and the meta frame
    assert written == (10 * frame - head) // frame == 9
    assert segment_bytes(tmp_path) + frame > 10 * frame  # the next one would not fit
    assert w.append(batch, T0) is not None  # append itself never refuses
    w.close()
    big = SpoolWriter(tmp_path / "small", "host-a", max_bytes=frame // 2)
    assert big.try_append(batch, T0) is not None  # alone in an empty folder: written
    assert big.try_append(batch, T0) is None
    big.close()


def run_journal(
    tmp_path: Path, batches: int, commit_delay: float
) -> tuple[Journal, list[int], int]:
    """Feed ``batches`` through a ``Journal`` whose spool holds 3 of them while a
    consumer commits each after ``commit_delay``: the spool hovers at its limit.
    Returns the journal, the folder sizes the consumer saw, and the limit."""
    folder = tmp_path / "spool"
    frame = batch_frame_bytes(records(0))
    limit = 3 * frame + 400  # three batches and a segment's head
    spool = SpoolWriter(folder, "host-a", max_bytes=limit)
    pending = PendingQueue(2, 1 << 20)
    journal = Journal(spool, pending, lambda: None)
    sizes: list[int] = []
    committed: list[int] = []

    def consume() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            item = pending.get(0.5)
            if item is None:
                return
            if isinstance(item, Pending):
                sizes.append(segment_bytes(folder))
                time.sleep(commit_delay)
                assert item.ref is not None
                spool.committed(item.ref)
                committed.append(1)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for k in range(batches):
        journal(RawBatch(records(k), T0, 1000))
        sizes.append(segment_bytes(folder))
    journal(None)
    consumer.join(timeout=60)
    assert not consumer.is_alive() and len(committed) == batches
    spool.close()
    return journal, sizes, limit


def test_a_hovering_spool_logs_spool_full_once_per_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "FULL_LOG_SECONDS", 3600.0)  # one period spans the test
    monkeypatch.setattr(ingest, "FULL_POLL_SECONDS", 0.01)
    journal, sizes, limit = run_journal(tmp_path, 24, 0.02)
    assert journal.holds >= 3  # held again and again, each time the spool filled up
    full = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert [r.levelno for r in full] == [logging.ERROR]
    resumed = [r for r in caplog.records if "reading resumed" in r.getMessage()]
    assert len(resumed) == 1
    assert max(sizes) <= limit


def test_every_period_that_sees_the_spool_full_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "FULL_LOG_SECONDS", 0.0)  # a period shorter than any hold
    monkeypatch.setattr(ingest, "FULL_POLL_SECONDS", 0.01)
    journal, sizes, limit = run_journal(tmp_path, 12, 0.02)
    full = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert len(full) >= journal.holds >= 2
    assert max(sizes) <= limit


def test_a_full_spool_never_passes_its_limit_while_the_database_is_away(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    limit = 40 * 1024
    env = dict(cli_env, PMTA_PIPE_DSN=AWAY, PMTA_PIPE_SPOOL_MAX_BYTES="40K",
               PMTA_PIPE_BATCH_ROWS="50")  # fmt: skip
    folder = Path(env["PMTA_PIPE_SPOOL_DIR"])
    data = HEADER + b"\n" + b"".join(b"%s\n" % r for r in records(7, 20_000))  # about 900 KB
    errfile = tmp_path / "stderr"
    with errfile.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmta_pipe", "ingest"],
            stdin=subprocess.PIPE, stderr=err, env=env,
        )  # fmt: skip
        assert proc.stdin is not None
        stdin = proc.stdin

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError, ValueError):  # killed while held
                stdin.write(data)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        peak = 0
        first_error: float | None = None
        deadline = time.monotonic() + 60
        try:
            while first_error is None or time.monotonic() - first_error < 2.0:
                assert time.monotonic() < deadline, errfile.read_text()
                peak = max(peak, segment_bytes(folder))
                if first_error is None and "spool full" in errfile.read_text():
                    first_error = time.monotonic()
                time.sleep(0.005)
            peak = max(peak, segment_bytes(folder))
            held_for = time.monotonic() - first_error
            assert writer.is_alive()  # PowerMTA is held: reading stopped
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            writer.join(timeout=30)
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
    text = errfile.read_text()
    assert peak <= limit, (peak, limit)
    assert peak > limit - 2 * batch_frame_bytes(records(7, 50))  # it was full
    errors = [line for line in text.splitlines() if "spool full" in line]
    assert 1 <= len(errors) <= 1 + int(held_for // 60), errors
    assert all("ERROR" in line for line in errors)


# -- end to end: ingest with the database away, damage, replay -------------------------------


def rcpts(conn: Conn) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT rcpt FROM pmta.events")}


def numbered(run: int, n: int) -> bytes:
    return b"".join(
        b"d,2026-01-15 14:%02d:%02d-0700,r%d-%d@x.com\n" % (i // 60 % 60, i % 60, run, i)
        for i in range(n)
    )


def test_replay_of_a_damaged_spool_loads_every_intact_batch_exactly(
    cli_env: dict[str, str], conn: Conn
) -> None:
    folder = Path(cli_env["PMTA_PIPE_SPOOL_DIR"])
    down = dict(cli_env, PMTA_PIPE_DSN=AWAY, PMTA_PIPE_DRAIN_TIMEOUT="0",
                PMTA_PIPE_BATCH_ROWS="100")  # fmt: skip
    for run in range(3):  # 999 records and the header line: 10 batches of 100 lines
        got = run_cli(["ingest"], down, input=HEADER + b"\n" + numbered(run, 999))
        assert got.returncode == 75, got.stderr.decode()
    seg_length, seg_crc, seg_foreign = (f.path for f in list_files(folder) if f.kind == "segment")
    readings = [read_segment(p) for p in (seg_length, seg_crc, seg_foreign)]
    assert [len(r.batches) for r in readings] == [10, 10, 10]
    # run 0: a bit flipped in batch 4's length makes it run past the end of the file
    offset = readings[0].batches[3].ref.offset
    data = seg_length.read_bytes()
    seg_length.write_bytes(flipped(data, offset + LENGTH_AT, 32 - len(data).bit_length() - 1))
    # run 1: a bit flipped in batch 7's checksum
    seg_crc.write_bytes(flipped(seg_crc.read_bytes(), readings[1].batches[6].ref.offset + 7, 2))
    # run 2: a segment of another format version: nothing of it may be loaded
    seg_foreign.write_bytes(other_version(seg_foreign.read_bytes(), "magic"))

    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    expected: set[str] = set()
    for reading, lost in ((readings[0], 3), (readings[1], 6)):
        for k, batch in enumerate(reading.batches):
            if k != lost:
                expected |= {r.split(b",")[2].decode() for r in batch.records if r != HEADER}
    assert len(expected) == 999 - 100 + 999 - 100
    assert rcpts(conn) == expected
    assert count(conn, "SELECT count(*) FROM pmta.events") == len(expected)
    log = got.stderr.decode()
    assert log.count("is damaged:") == 2
    assert "9 intact batches (899 records) were loaded, 6 of them (600 records) found" in log
    assert "9 intact batches (899 records) were loaded, 3 of them (300 records) found" in log
    assert log.count("100 records are missing between the intact batches") == 2
    assert "cannot read (its magic is 'PMTASPL2'): nothing was loaded" in log
    corrupt = sorted(p.name + ".corrupt" for p in (seg_length, seg_crc, seg_foreign))
    assert sorted(f.name for f in list_files(folder)) == corrupt

    status = run_cli(["status"], cli_env)
    assert status.returncode == 1, status.stdout.decode()
    out = status.stdout.decode()
    assert "2 damaged spool files moved aside" in out and "delete them" in out
    assert f"{seg_length.name}.corrupt, {seg_crc.name}.corrupt" in out
    assert f"unknown format, moved aside: {seg_foreign.name}.corrupt" in out
    for name in corrupt:
        (folder / name).unlink()
        status = run_cli(["status"], cli_env)
        assert name not in status.stdout.decode()
    assert status.returncode == 0, status.stdout.decode()


# -- folder modes ----------------------------------------------------------------------------


def test_parent_folders_are_not_world_writable_under_umask_0(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "a" / "b" / "spool"
    env = dict(cli_env, PMTA_PIPE_DSN=AWAY, PMTA_PIPE_DRAIN_TIMEOUT="0",
               PMTA_PIPE_SPOOL_DIR=str(folder))  # fmt: skip
    got = subprocess.run(
        [sys.executable, "-m", "pmta_pipe", "ingest"],
        input=HEADER + b"\n" + numbered(0, 10), env=env, capture_output=True,
        timeout=120, check=False, umask=0,
    )  # fmt: skip
    assert got.returncode == 75, got.stderr.decode()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (folder.parent.parent, folder.parent)}
    assert modes == {"a": 0o755, "b": 0o755}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.path.stat().st_mode) for f in list_files(folder)} == {0o600}
    assert os.listdir(folder)  # the records wait there for the database
