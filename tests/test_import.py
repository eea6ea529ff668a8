"""``import_files``: compression by content, folders, globs, the ledger; every row counted."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import zstandard

from pmta_pipe.config import Settings
from pmta_pipe.importer import ImportSummary, import_files
from pmta_pipe.progress import LogProgress
from tests.conftest import count
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]


def run(dsn: str, paths: list[str], **kwargs: object) -> ImportSummary:
    settings = Settings(dsn=dsn, source="test-host", batch_rows=700)
    return import_files(settings, paths, progress=LogProgress(0, 0), **kwargs)  # type: ignore[arg-type]


def by_name(summary: ImportSummary) -> dict[str, tuple[str, str, int, int]]:
    return {
        Path(f.path).name: (f.status, f.compression, f.records, f.inserted) for f in summary.files
    }


def events(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.events")


def test_every_compression_is_recognised_by_content(dsn: str, conn: Conn, tmp_path: Path) -> None:
    files: dict[str, Callable[[bytes], bytes]] = {
        "plain.csv": lambda d: d,
        "gzip-named-csv.csv": gzip.compress,  # misleading name: gzip inside
        "b.csv.bz2": bz2.compress,
        "x.csv.xz": lzma.compress,
        "z.csv.zst": lambda d: zstandard.ZstdCompressor().compress(d),
        "plain-named-gz.csv.gz": lambda d: d,  # misleading name: plain text inside
    }
    for month, (name, compress) in enumerate(files.items(), start=1):
        data = stream(1000, days=2, seed=month, start=f"2026-{month:02d}-01")
        (tmp_path / name).write_bytes(compress(data))
    summary = run(dsn, [str(tmp_path)], jobs=1)
    assert by_name(summary) == {
        "plain.csv": ("imported", "plain", 1000, 1000),
        "gzip-named-csv.csv": ("imported", "gzip", 1000, 1000),
        "b.csv.bz2": ("imported", "bzip2", 1000, 1000),
        "x.csv.xz": ("imported", "xz", 1000, 1000),
        "z.csv.zst": ("imported", "zstd", 1000, 1000),
        "plain-named-gz.csv.gz": ("imported", "plain", 1000, 1000),
    }
    assert events(conn) == 6000
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    assert count(conn, "SELECT count(*) FROM pmta.import_files WHERE completed") == 6


def test_zstd_of_several_frames(dsn: str, conn: Conn, tmp_path: Path) -> None:
    data = stream(3000, seed=4)
    cut = data.index(b"\n", len(data) // 2) + 1
    z = zstandard.ZstdCompressor()
    (tmp_path / "acct.zst").write_bytes(z.compress(data[:cut]) + z.compress(data[cut:]))
    summary = run(dsn, [str(tmp_path / "acct.zst")])
    assert summary.totals().inserted == 3000
    assert events(conn) == 3000


def test_folders_are_walked_and_files_chosen_by_name_or_header(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    root = tmp_path / "logs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "acct-2026-01-15-0000.csv").write_bytes(stream(500, seed=1, start="2026-01-15"))
    (root / "sub" / "deeper" / "old.CSV.GZ").write_bytes(
        gzip.compress(stream(400, seed=2, start="2025-12-01"))
    )
    (root / "sub" / "pmta-accounting.log").write_bytes(stream(300, seed=3, start="2025-11-01"))
    (root / ".hidden" / "acct.csv").write_bytes(stream(200, seed=4, start="2025-10-01"))
    (root / "README.txt").write_bytes(b"rotated accounting files\n")
    (root / "notes.log").write_bytes(b"d,2026-01-01 00:00:00+0000\n")  # no header line
    summary = run(dsn, [str(root)])
    assert sorted(by_name(summary)) == [
        "acct-2026-01-15-0000.csv", "old.CSV.GZ", "pmta-accounting.log",
    ]  # fmt: skip
    assert events(conn) == 1200


def test_globs_and_repeated_paths(dsn: str, conn: Conn, tmp_path: Path) -> None:
    for day, n in (("15", 100), ("16", 200)):
        (tmp_path / f"acct-2026-01-{day}-0000.csv").write_bytes(
            stream(n, seed=int(day), start=f"2026-01-{day}")
        )
    (tmp_path / "other.csv").write_bytes(stream(50, seed=99, start="2025-01-01"))
    pattern = str(tmp_path / "acct-*.csv")
    summary = run(dsn, [pattern, pattern, str(tmp_path / "acct-2026-01-15-0000.csv")])
    assert len(summary.files) == 2
    assert events(conn) == 300


def test_second_run_skips_grown_file_is_read_on_force_rereads(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    data = stream(2000, seed=5)
    cut = data.index(b"\n", len(data) // 2) + 1
    path = tmp_path / "acct.csv"
    path.write_bytes(data[:cut])
    first = run(dsn, [str(path)])
    loaded = first.totals().records
    assert first.totals().inserted == loaded == data[:cut].count(b"\n") - 1

    again = run(dsn, [str(path)])
    assert [(f.status, f.note) for f in again.files] == [("skipped", "unchanged")]
    assert again.totals().records == 0

    with path.open("ab") as f:  # PowerMTA appends to today's file
        f.write(data[cut:])
    grown = run(dsn, [str(path)])
    assert grown.files[0].status == "imported"
    assert grown.files[0].note.startswith("grown by")
    assert grown.totals().records == grown.totals().inserted == 2000 - loaded
    assert events(conn) == 2000
    row = conn.execute(
        "SELECT completed, records, inserted, duplicates, records_read, size FROM pmta.import_files"
    ).fetchone()
    assert row == (True, 2000, 2000, 0, 2001, len(data))

    forced = run(dsn, [str(path)], force=True)
    assert forced.totals().records == forced.totals().duplicates == 2000
    assert events(conn) == 2000
    assert conn.execute("SELECT records, inserted FROM pmta.import_files").fetchone() == (
        2000, 0,
    )  # fmt: skip


def test_interrupted_import_is_completed_from_where_it_stopped(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    data = stream(3000, seed=6)
    path = tmp_path / "acct.csv.gz"
    path.write_bytes(gzip.compress(data))
    run(dsn, [str(path)])
    # as if the process had died after committing its first 1,400 records (1,401 with
    # the header): drop what came later and leave the ledger row not completed
    conn.execute(
        "DELETE FROM pmta.events WHERE (time_logged, record_id) NOT IN"
        " (SELECT time_logged, record_id FROM pmta.events ORDER BY time_logged LIMIT 1400)"
    )
    conn.execute(
        "UPDATE pmta.import_files SET completed = false, records_read = 1401, records = 1400,"
        " inserted = 1400, bytes_done = NULL"
    )
    summary = run(dsn, [str(path)])
    assert summary.files[0].note == "resuming after 1401 records"
    assert summary.totals().records == summary.totals().inserted == 1600
    assert events(conn) == 3000
    row = conn.execute("SELECT completed, records, inserted FROM pmta.import_files").fetchone()
    assert row == (True, 3000, 3000)


def test_same_content_under_another_path_is_skipped(dsn: str, conn: Conn, tmp_path: Path) -> None:
    data = gzip.compress(stream(500, seed=7))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "acct.csv.gz").write_bytes(data)
    (tmp_path / "b" / "acct.csv.gz").write_bytes(data)
    run(dsn, [str(tmp_path / "a")])
    summary = run(dsn, [str(tmp_path / "b")])
    assert summary.files[0].status == "skipped"
    assert summary.files[0].note.startswith("same content as ")
    assert events(conn) == 500


def test_records_without_timestamps_get_the_file_time_and_dedupe(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "acct.csv"
    path.write_bytes(b"type,orig,rcpt\nd,a@example.com,b@example.org\nb,a@example.com,c@x.org\n")
    run(dsn, [str(path)])
    run(dsn, [str(path)], force=True)
    assert events(conn) == 2
    # the file time as Python reads it (microseconds), not as to_timestamp(float) rounds it
    mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE time_logged = %s", mtime) == 2


def test_parallel_jobs_load_every_file(dsn: str, conn: Conn, tmp_path: Path) -> None:
    for k in range(1, 5):
        (tmp_path / f"acct-{k}.csv.gz").write_bytes(
            gzip.compress(stream(1500, seed=k, start=f"2025-0{k}-01"))
        )
    summary = run(dsn, [str(tmp_path)], jobs=2)
    assert [f.status for f in summary.files] == ["imported"] * 4
    assert summary.totals().inserted == 6000
    assert events(conn) == 6000
    assert count(conn, "SELECT count(*) FROM pmta.import_files WHERE completed") == 4
