"""The spool's on-disk format and recovery rules, without a database."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pmta_pipe.errors import SpoolError
from pmta_pipe.spool import (
    MAGIC,
    SpoolWriter,
    claim,
    count_records,
    is_locked,
    list_files,
    parse_segment,
    read_segment,
    scan_records,
)

T0 = datetime(2026, 1, 15, 12, 0, 0, 123456, tzinfo=timezone.utc)


def records(n: int, start: int = 0) -> list[bytes]:
    return [b"d,2026-01-15 14:23:11-0700,r%d@x.com" % i for i in range(start, start + n)]


def segments(folder: Path) -> list[Path]:
    return [f.path for f in list_files(folder) if f.kind == "segment"]


def write_four(folder: Path) -> Path:
    """One segment of 4 batches of 10 records; returns its path (released)."""
    w = SpoolWriter(folder, "host-a", max_bytes=1 << 30)
    for b in range(4):
        w.append(records(10, 10 * b), T0)
    (path,) = segments(folder)
    assert w.close() == 4
    return path


def test_round_trip_keeps_records_times_positions_and_meta(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path / "spool", "host-a", max_bytes=1 << 30)
    first = w.append([b"type,timeLogged,rcpt", *records(3)], T0)
    second = w.append([b'd,"multi\nline",x@y', b"\xff\x00 bytes kept as they are"], T0)
    assert (first.first_position, second.first_position) == (1, 4)  # header takes no position
    w.close()
    (path,) = segments(tmp_path / "spool")
    got = read_segment(path)
    assert not got.damaged and got.torn_bytes == 0
    assert got.meta is not None
    assert (got.meta.source, got.meta.header_line, got.meta.first_position) == ("host-a", None, 1)
    assert [b.records for b in got.batches] == [first.records, second.records]
    assert [b.received_at for b in got.batches] == [T0, T0]
    assert [b.first_position for b in got.batches] == [1, 4]
    assert [b.ref for b in got.batches] == [first.ref, second.ref]
    assert count_records(path) == (2, 6, T0)


def test_new_segment_carries_the_header_in_force(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, "host-a", max_bytes=1 << 30, segment_bytes=1)  # one batch each
    w.append([b"\xef\xbb\xbftype,rcpt\r", *records(2)], T0)
    w.append([*records(1), b'"Type",timeLogged,rcpt', *records(1)], T0)
    w.append(records(1), T0)
    metas = [read_segment(p).meta for p in segments(tmp_path)]
    w.close()
    assert [m.header_line if m else "?" for m in metas] == [
        None,
        "\ufefftype,rcpt",
        '"Type",timeLogged,rcpt',
    ]
    assert [m.first_position if m else 0 for m in metas] == [1, 3, 5]


def test_scan_records_finds_headers_like_the_parser() -> None:
    assert scan_records([b"type,a", b"t,x", b"tq,x", b" TYPE ,b", b"types,c"]) == (3, " TYPE ,b")


def test_files_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "spool"
    w = SpoolWriter(folder, "host-a", max_bytes=1 << 30)
    w.append(records(1), T0)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in segments(folder)] == [0o600]
    w.close()


def test_unusable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="cannot use the spool folder"):
        SpoolWriter(tmp_path / "file" / "spool", "h", max_bytes=1)


def test_torn_last_write_is_ignored(tmp_path: Path) -> None:
    path = write_four(tmp_path)
    data = path.read_bytes()
    for cut in (1, 9, 30):
        got = parse_segment(data[:-cut], path.name)
        assert [len(b.records) for b in got.batches] == [10, 10, 10]
        assert got.torn_bytes > 0 and not got.damaged
    zeroed = parse_segment(data + b"\0" * 4096, path.name)
    assert len(zeroed.batches) == 4 and zeroed.torn_bytes == 4096 and not zeroed.damaged
    garbage_tail = data[:-5] + b"XXXXX"  # last frame complete in length, wrong checksum
    got = parse_segment(garbage_tail, path.name)
    assert len(got.batches) == 3 and not got.damaged


def test_corruption_in_the_middle_keeps_every_intact_batch(tmp_path: Path) -> None:
    path = write_four(tmp_path)
    reading = read_segment(path)
    data = bytearray(path.read_bytes())
    data[reading.batches[1].ref.offset + 40] ^= 0xFF  # inside batch 2
    got = parse_segment(bytes(data), path.name)
    assert [b.records[0] for b in got.batches] == [
        records(1, 0)[0], records(1, 20)[0], records(1, 30)[0]
    ]  # fmt: skip
    assert got.damaged and got.corrupt_bytes > 0
    no_meta = bytearray(path.read_bytes())
    no_meta[len(MAGIC) + 20] ^= 0xFF
    got = parse_segment(bytes(no_meta), path.name)
    assert got.meta is None and got.damaged and len(got.batches) == 4
    assert parse_segment(b"not a spool file at all\n", "x.seg").damaged
    empty = parse_segment(b"", "x.seg")
    assert not empty.batches and empty.meta is None


def test_live_segments_are_locked_and_released_on_close(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, "host-a", max_bytes=1 << 30)
    w.append(records(5), T0)
    (path,) = segments(tmp_path)
    assert is_locked(path)
    assert claim(path) is None
    assert w.close() == 1  # not committed: left for recovery, unlocked
    assert not is_locked(path)
    fd = claim(path)
    assert fd is not None
    assert claim(path) is None  # one claimant at a time
    os.close(fd)


def test_segments_go_once_committed(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, "host-a", max_bytes=1 << 30, segment_bytes=1)
    a = w.append(records(5), T0)
    b = w.append(records(5, 5), T0)
    assert len(segments(tmp_path)) == 2
    assert w.read_batch(a.ref).records == records(5)  # read back a batch kept on disk only
    w.committed(a.ref)
    assert len(segments(tmp_path)) == 1
    w.committed(b.ref)  # the active one too, once nothing in it is pending
    assert segments(tmp_path) == []
    c = w.append(records(1), T0)
    assert w.backlog() == (1, 1)
    assert w.close() == 1
    w2 = SpoolWriter(tmp_path, "host-a", max_bytes=1 << 30)
    w2.committed(c.ref)  # another process's segment: ignored
    assert w2.close() == 0
    assert len(segments(tmp_path)) == 1


def test_room_counts_every_segment_in_the_folder(tmp_path: Path) -> None:
    w = SpoolWriter(tmp_path, "host-a", max_bytes=2000)
    assert w.has_room()
    w.append(records(60), T0)
    assert not w.has_room()
    w.close()
    other = SpoolWriter(tmp_path, "host-b", max_bytes=2000)
    assert not other.has_room()  # the first process's segment counts too
    other.close()


def test_stray_and_corrupt_files_are_listed_not_touched(tmp_path: Path) -> None:
    write_four(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "0000000000000001-1-000000.seg.corrupt").write_bytes(b"x")
    kinds = sorted(f.kind for f in list_files(tmp_path))
    assert kinds == ["corrupt", "segment", "stray"]
