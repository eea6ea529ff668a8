"""Spool torture: a writer process killed with SIGKILL at random points, then every byte counted.

In the manner of nsqio/go-diskqueue's torture tests, without a database: a child
process appends batches of known records with ``SpoolWriter.append`` and reports
each batch on stdout once ``append`` has returned (so after ``fdatasync``). The test
kills it at a random moment, reopens the folder, reads every segment with
``read_segment`` and checks the spool against what the child reported:

* every reported batch is there, once, with its exact records, ``first_position``
  and ``received_at``;
* the only batch there that was never reported is the one being appended at the
  kill, and only complete (a torn frame is never returned);
* no segment is damaged, and a ``.tmp`` (a segment being created) holds no record.

The records say which round and batch they belong to, and ``BATCH_CODE`` (run by
the child and by the test) makes them, so the test knows every expected byte.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pmta_pipe.spool import SegmentReading, SpoolWriter, list_files, read_segment

#: shared by the child and the test: the records of batch ``k`` of round ``rnd``
BATCH_CODE = """
from datetime import datetime, timedelta, timezone

T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)


def batch_records(rnd, k):
    n = 1 + (rnd * 7919 + k * 104729) % 37
    pad = (rnd * 31 + k * 17) % 200
    return [b"r%d,b%d,i%d," % (rnd, k, i) + b"x" * ((pad + i) % 250) for i in range(n)]


def received_at(rnd, k):
    return T0 + timedelta(seconds=rnd, microseconds=k)
"""

#: the child: append batches until killed, reporting each after ``append`` returned
CHILD = (
    BATCH_CODE
    + """
import inspect, os, sys
from pathlib import Path
from pmta_pipe.spool import SpoolWriter

folder, rnd, segment_bytes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
extra = {}
if "segment_bytes" in inspect.signature(SpoolWriter).parameters:
    extra["segment_bytes"] = segment_bytes  # small segments: kills also land in rotations
writer = SpoolWriter(folder, "torture", max_bytes=1 << 40, **extra)
out = sys.stdout.buffer
out.write(b"ready\\n")
out.flush()
k = 0
while True:
    batch = writer.append(batch_records(rnd, k), received_at(rnd, k))
    out.write(b"%d %d\\n" % (k, batch.first_position))
    out.flush()
    k += 1
"""
)

_shared: dict[str, Any] = {}
exec(BATCH_CODE, _shared)  # our own code: the test and the child make the same records


def batch_records(rnd: int, k: int) -> list[bytes]:
    records: list[bytes] = _shared["batch_records"](rnd, k)
    return records


def received_at(rnd: int, k: int) -> datetime:
    when: datetime = _shared["received_at"](rnd, k)
    return when


def first_position(rnd: int, k: int) -> int:
    return 1 + sum(len(batch_records(rnd, j)) for j in range(k))


def identity(record: bytes) -> tuple[int, int, int]:
    """(round, batch, index) a record was made for."""
    rnd, k, i = record.split(b",")[:3]
    return int(rnd[1:]), int(k[1:]), int(i[1:])


ROUNDS = 12
ROUND_SECONDS = 30.0  # a bound on each round, never an expectation
SEGMENT_BYTES = 6000  # a few batches per segment


def run_child(folder: Path, rnd: int, kill_after: int, rng: random.Random) -> list[tuple[int, int]]:
    """Start the writer, SIGKILL it soon after its ``kill_after``-th report; return the reports."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder), str(rnd), str(SEGMENT_BYTES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + ROUND_SECONDS
    try:
        while buf.count(b"\n") < kill_after + 1:  # "ready", then one line per batch
            assert time.monotonic() < deadline, f"round {rnd}: the writer is too slow"
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"writer died: {proc.stderr.read().decode()}")
                buf += chunk
        spin = rng.randrange(0, 20_000)  # a random point inside the next append
        for _ in range(spin):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    buf += proc.stdout.read()  # what the child wrote before it died
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    lines = buf.split(b"\n")
    assert lines[0] == b"ready"
    complete = lines[1:-1]  # the last element is a line cut short by the kill, or b""
    reports = [tuple(map(int, line.split())) for line in complete]
    return [(k, first) for k, first in reports]


def read_all(folder: Path) -> tuple[list[SegmentReading], list[SegmentReading]]:
    """(segments, .tmp files) of the folder, each read with ``read_segment``."""
    segments: list[SegmentReading] = []
    tmps: list[SegmentReading] = []
    for f in list_files(folder):
        assert f.kind in ("segment", "tmp"), f"unexpected {f.kind} file {f.name}"
        (segments if f.kind == "segment" else tmps).append(read_segment(f.path))
    return segments, tmps


def test_sigkill_at_random_points_loses_no_reported_batch(tmp_path: Path) -> None:
    rng = random.Random(20260115)
    folder = tmp_path / "spool"
    reported_total = least = 0
    for rnd in range(ROUNDS):
        kill_after = rng.randint(0, 120)
        least += kill_after
        reports = run_child(folder, rnd, kill_after, rng)
        assert len(reports) >= kill_after
        assert [k for k, _ in reports] == list(range(len(reports)))
        assert [first for _, first in reports] == [first_position(rnd, k) for k, _ in reports]
        reported_total += len(reports)

        segments, tmps = read_all(folder)
        assert [s.name for s in segments if s.damaged] == []
        assert [s.name for s in segments if s.corrupt_bytes] == []
        for tmp in tmps:  # a segment whose creation the kill interrupted
            assert tmp.batches == [] and tmp.records == 0, tmp.name

        found: dict[int, list[tuple[str, int]]] = {}
        for seg in segments:
            for batch in seg.batches:
                got_round, k, _ = identity(batch.records[0])
                if got_round != rnd:
                    continue  # an earlier round's batch, checked then
                assert batch.records == batch_records(rnd, k), (seg.name, k)
                assert batch.first_position == first_position(rnd, k), (seg.name, k)
                assert batch.received_at == received_at(rnd, k), (seg.name, k)
                found.setdefault(k, []).append((seg.name, batch.ref.offset))
        assert all(len(places) == 1 for places in found.values()), found  # never twice
        reported = {k for k, _ in reports}
        missing = sorted(reported - set(found))
        assert missing == [], f"round {rnd}: reported batches not in the spool: {missing}"
        extra = sorted(set(found) - reported)
        assert extra in ([], [len(reports)]), f"round {rnd}: batches never appended: {extra}"

        # batches are in write order: segment name order, then offset order
        ids = [identity(b.records[0]) for seg in segments for b in seg.batches]
        order = [k for got_round, k, _ in ids if got_round == rnd]
        assert order == sorted(order) == list(range(len(found)))
    assert reported_total >= least  # each round was killed only after its kill_after reports


def test_a_torn_last_frame_loses_only_that_frame_at_every_byte(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    writer = SpoolWriter(folder, "torture", max_bytes=1 << 40)
    batches = [writer.append(batch_records(99, k), received_at(99, k)) for k in range(5)]
    writer.close()
    (f,) = [f for f in list_files(folder) if f.kind == "segment"]
    data = f.path.read_bytes()
    last = batches[-1].ref.offset
    assert read_segment(f.path).records == sum(len(b.records) for b in batches)
    copy = tmp_path / f.name
    copy.write_bytes(data)
    for size in range(len(data) - 1, last - 1, -1):  # every byte offset of the last frame
        os.truncate(copy, size)
        got = read_segment(copy)
        assert not got.damaged and got.corrupt_bytes == 0, size
        assert [b.records for b in got.batches] == [b.records for b in batches[:-1]], size
        assert [b.first_position for b in got.batches] == [
            first_position(99, k) for k in range(4)
        ], size
        assert got.torn_bytes == size - last, size
    # a torn frame followed by zeros (the file grew, the data never came): the same
    torn = data[: last + 7] + b"\0" * 512
    copy.write_bytes(torn)
    got = read_segment(copy)
    assert not got.damaged and len(got.batches) == 4 and got.torn_bytes == 7 + 512
