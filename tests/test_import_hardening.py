"""``pmta-pipe import`` against hostile inputs: pipes, damaged archives, files still written.

Every test counts the records of its input in Python (``csv``), independently of
pmta-pipe, and asserts that the database holds exactly those, each once:

* streams (``<(zcat …)``, ``/dev/stdin``, a FIFO named directly) are read once, all of
  it, with their own header line (a header in a column order that is not PowerMTA's
  default, so a lost header shows), and leave no ledger row; a FIFO in a folder is
  neither opened nor read;
* a compressed file with bytes flipped in its middle (each format) loads nothing and
  fails; the intact copy then loads every record;
* a file that a writer process is appending to while ``import`` runs: the record being
  written (cut inside a multi-line quoted field) is neither loaded nor rejected, and
  the next runs read exactly the rest;
* an old file whose last line has no line break: loaded when provably complete, else
  one reject that a later import of the whole record removes.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard

from pmta_pipe import compression
from pmta_pipe.importer import TORN
from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    # the zstd command line writes a content checksum by default; python-zstandard not
    "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
}


def reordered(data: bytes, *, multiline_every: int = 0) -> bytes:
    """``data`` with its columns in another order than PowerMTA's default (type first,
    the rest reversed); every ``multiline_every``-th record gets a two-line dsnDiag."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    order = [0, *range(len(rows[0]) - 1, 0, -1)]
    diag = rows[0].index("dsnDiag")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for n, row in enumerate(rows):
        if multiline_every and n and n % multiline_every == 0:
            row[diag] = f"smtp;550-5.1.1 user{n} unknown\n550 5.1.1 see https://example.com/{n}"
        writer.writerow([row[i] for i in order])
    return out.getvalue().encode()


def records_of(data: bytes) -> Counter[str]:
    """rcpt of every record of ``data`` (header lines left out), counted by ``csv``."""
    reader = csv.reader(io.StringIO(data.decode()))
    header = next(reader)
    rcpt = header.index("rcpt")
    return Counter(r[rcpt] for r in reader if r and r[0] != "type")


def loaded(conn: Conn) -> Counter[str]:
    """rcpt of every event (an empty field is NULL), counted by PostgreSQL."""
    rows = conn.execute(
        "SELECT coalesce(rcpt, ''), count(*) FROM pmta.events GROUP BY 1"
    ).fetchall()
    return Counter({str(r): int(n) for r, n in rows})  # type: ignore[call-overload]


def events(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.events")


def rejects(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.rejects")


def summary_of(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert proc.stdout, proc.stderr.decode()
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def per_file(s: dict[str, object]) -> list[dict[str, object]]:
    files = s["per_file"]
    assert isinstance(files, list)
    return files


def flipped(packed: bytes, at: float = 0.5) -> bytes:
    """``packed`` with four bytes inverted at ``at`` of its length."""
    damaged = bytearray(packed)
    mid = int(len(damaged) * at)
    for i in range(mid, mid + 4):
        damaged[i] ^= 0xFF
    return bytes(damaged)


# -- streams -----------------------------------------------------------------------


def test_process_substitution_reads_every_record_with_its_header(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(5000, seed=21))  # some 2 MB: far more than 64 KiB
    packed = tmp_path / "acct.csv.gz"
    packed.write_bytes(gzip.compress(data))
    cmd = f'exec "{sys.executable}" -m pmta_pipe import <(zcat "{packed}") --format json'
    proc = subprocess.run(
        ["bash", "-c", cmd], env=cli_env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["records"], s["inserted"], s["rejected"]) == (5000, 5000, 0)
    assert loaded(conn) == records_of(data)
    assert count(conn, "SELECT count(*) FROM pmta.import_files") == 0  # a stream: no ledger


def test_dev_stdin_and_dash_read_all_of_it_compressed_or_not(
    cli_env: dict[str, str], conn: Conn
) -> None:
    data = reordered(stream(3000, seed=22))
    proc = run_cli(["import", "/dev/stdin", "--format", "json"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert summary_of(proc)["inserted"] == 3000
    assert loaded(conn) == records_of(data)

    other = reordered(stream(2000, seed=23, start="2025-05-01"))
    proc = run_cli(["import", "-", "--format", "json"], cli_env, input=zstandard.compress(other))
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["inserted"], per_file(s)[0]["compression"]) == (2000, "zstd")
    assert loaded(conn) == records_of(data) + records_of(other)
    assert count(conn, "SELECT count(*) FROM pmta.import_files") == 0


def test_fifo_named_directly_is_read_once_and_a_fifo_in_a_folder_is_left_alone(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(4000, seed=24))
    fifo = tmp_path / "acct.fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with fifo.open("wb") as f:  # waits for the import to open it
                for i in range(0, len(data), 4096):
                    f.write(data[i : i + 4096])
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    proc = run_cli(["import", str(fifo), "--format", "json"], cli_env, timeout=60)
    writer.join(timeout=10)
    assert not writer.is_alive() and not errors, errors
    assert proc.returncode == 0, proc.stderr.decode()
    assert summary_of(proc)["inserted"] == 4000
    assert loaded(conn) == records_of(data)
    assert count(conn, "SELECT count(*) FROM pmta.import_files") == 0

    # in a folder, a FIFO (even one named like an accounting file) is never opened
    folder = tmp_path / "logs"
    folder.mkdir()
    os.mkfifo(folder / "acct-live.csv")
    (folder / "acct-2025-01-01.csv").write_bytes(stream(100, seed=25, start="2025-01-01"))
    proc = run_cli(["import", str(folder), "--format", "json"], cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert [Path(str(f["path"])).name for f in per_file(s)] == ["acct-2025-01-01.csv"]
    assert events(conn) == 4100


# -- damaged archives ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_flipped_bytes_load_nothing_then_the_intact_copy_loads_every_record(
    kind: str, cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = stream(12_000, seed=26)
    packed = COMPRESSORS[kind](data)
    path = tmp_path / "acct-2026-01-01.csv.x"
    path.write_bytes(flipped(packed))
    proc = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert proc.returncode == 1
    (f,) = per_file(summary_of(proc))
    assert (f["status"], f["compression"], f["records"]) == ("failed", kind, 0)
    assert str(f["note"]).startswith(f"corrupt {kind} data: ")
    assert str(f["note"]).endswith("(nothing loaded)")
    assert (events(conn), rejects(conn)) == (0, 0)
    row = conn.execute("SELECT completed, records, error FROM pmta.import_files").fetchone()
    assert row is not None and row[:2] == (False, 0) and str(row[2]).startswith("corrupt")

    path.write_bytes(packed)  # the intact copy arrives under the same name
    proc = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["inserted"], s["duplicates"], s["rejected"]) == (12_000, 0, 0)
    assert loaded(conn) == records_of(data)
    assert rejects(conn) == 0


def test_corrupt_stdin_loads_nothing(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(8000, seed=27)
    proc = run_cli(["import", "-", "--format", "json"], cli_env, input=flipped(gzip.compress(data)))
    assert proc.returncode == 1
    (f,) = per_file(summary_of(proc))
    assert (f["status"], f["records"]) == ("failed", 0)
    assert str(f["note"]).startswith("corrupt gzip data: CRC check failed")
    assert (events(conn), rejects(conn)) == (0, 0)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_verify_tells_intact_truncated_and_corrupt_apart(kind: str) -> None:
    packed = COMPRESSORS[kind](stream(3000, seed=28))
    assert compression.verify(io.BytesIO(packed), kind).state == "ok"
    assert compression.verify(io.BytesIO(packed[: len(packed) // 2]), kind).state == "truncated"
    assert compression.verify(io.BytesIO(flipped(packed)), kind).state == "corrupt"


def test_zstd_frame_without_checksum_is_reported_unchecked() -> None:
    data = stream(100, seed=29)
    plain = zstandard.ZstdCompressor().compress(data)
    assert compression.verify(io.BytesIO(plain), "zstd").checksummed is False
    assert compression.verify(io.BytesIO(COMPRESSORS["zstd"](data)), "zstd").checksummed


# -- a file PowerMTA is still writing --------------------------------------------------

_WRITER = r"""
import os, sys, time
path, source, cut, signals = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(source, "rb").read()
deadline = time.monotonic() + 60
with open(path, "ab", buffering=0) as f:
    pos = 0
    while pos < cut:  # appends in pieces that end anywhere, as a writer does
        n = min(1499, cut - pos)
        f.write(data[pos : pos + n])
        pos += n
        time.sleep(0.002)
    open(os.path.join(signals, "at-cut"), "w").close()
    while not os.path.exists(os.path.join(signals, "finish")) and time.monotonic() < deadline:
        time.sleep(0.01)
    f.write(data[cut:])
"""


def _wait_for(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


def test_growing_file_every_record_once_while_a_writer_appends(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(8000, seed=30), multiline_every=40)
    source = tmp_path / "source.csv"
    source.write_bytes(data)
    # the writer stops inside the quoted dsnDiag of the last multi-line record: after
    # its first line (line break included) and a few bytes of its second line
    second = data.rindex(b"\n550 5.1.1 see ")
    start = data.rindex(b"\n", 0, second) + 1  # the first byte of that record
    cut = second + 8
    path = tmp_path / "acct.csv"
    path.touch()
    signals = tmp_path / "signals"
    signals.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(source), str(cut), str(signals)]
    )
    try:
        _wait_for(lambda: path.stat().st_size > 200_000)
        runs = [run_cli(["import", str(path), "--format", "json"], cli_env)]  # while it writes
        _wait_for(lambda: (signals / "at-cut").exists())
        runs.append(run_cli(["import", str(path), "--format", "json"], cli_env))
        held = summary_of(runs[-1])
        assert per_file(held)[0]["status"] == "partial"
        assert loaded(conn) == records_of(data[:start])  # the torn record: not loaded
        assert rejects(conn) == 0  # ... nor rejected
        row = conn.execute("SELECT completed, bytes_done FROM pmta.import_files").fetchone()
        assert row == (False, start)

        (signals / "finish").touch()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    runs.append(run_cli(["import", str(path), "--format", "json"], cli_env))
    for proc in runs:
        assert proc.returncode == 0, proc.stderr.decode()
    summaries = [summary_of(p) for p in runs]
    assert per_file(summaries[-1])[0]["status"] == "imported"
    assert sum(int(str(s["inserted"])) for s in summaries) == 8000
    assert sum(int(str(s["duplicates"])) for s in summaries) == 0  # nothing read twice
    assert loaded(conn) == records_of(data)
    assert rejects(conn) == 0
    row = conn.execute("SELECT completed, records, bytes_done FROM pmta.import_files").fetchone()
    assert row == (True, 8000, len(data))


# -- an old file whose last line has no line break -------------------------------------


def _age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_old_unterminated_last_line_is_loaded_when_complete(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(1000, seed=31))
    path = tmp_path / "acct.csv"
    path.write_bytes(data.rstrip(b"\n"))  # whole, only the last line break is missing
    _age(path)
    proc = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert per_file(summary_of(proc))[0]["status"] == "imported"
    assert loaded(conn) == records_of(data)
    assert rejects(conn) == 0


def test_old_torn_last_line_is_a_reject_that_the_grown_file_resolves(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(1500, seed=32))
    last = data.rindex(b"\n", 0, len(data) - 1) + 1  # the first byte of the last record
    cut = data.index(b",", data.index(b",", last) + 1) + 1  # two fields of it, no more
    path = tmp_path / "acct.csv"
    path.write_bytes(data[:cut])
    _age(path)
    proc = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    (f,) = per_file(summary_of(proc))
    assert (f["status"], f["inserted"], f["rejected"]) == ("imported", 1499, 1)
    assert "torn" in str(f["note"])
    assert loaded(conn) == records_of(data[:last])
    assert conn.execute("SELECT reason, raw_line, position FROM pmta.rejects").fetchall() == [
        (TORN, data[last:cut].decode(), 1500)
    ]
    # the ledger does not count the torn record, and reads on from its first byte
    row = conn.execute(
        "SELECT completed, records, rejected, bytes_done FROM pmta.import_files"
    ).fetchone()
    assert row == (True, 1499, 0, last)
    again = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert per_file(summary_of(again))[0]["status"] == "skipped"

    more = reordered(stream(200, seed=33, start="2025-03-01")).split(b"\n", 1)[1]
    path.write_bytes(data + more)  # the line completed, and more records after it
    _age(path)
    proc = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["inserted"], s["duplicates"], s["rejected"]) == (201, 0, 0)
    assert loaded(conn) == records_of(data + more)
    assert rejects(conn) == 0  # removed with the load of the whole record
    row = conn.execute("SELECT completed, records, rejected FROM pmta.import_files").fetchone()
    assert row == (True, 1700, 0)


def test_torn_inside_a_quoted_field_is_resolved_by_a_complete_copy_elsewhere(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    data = reordered(stream(800, seed=34))
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    cut = data.index(b'"', last) + 12  # inside the quoted dlvEsmtpAvailable
    torn = tmp_path / "cut" / "acct.csv"
    torn.parent.mkdir()
    torn.write_bytes(data[:cut])
    _age(torn)
    proc = run_cli(["import", str(torn), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (summary_of(proc)["inserted"], summary_of(proc)["rejected"]) == (799, 1)
    assert count(conn, "SELECT count(*) FROM pmta.rejects WHERE reason = %s", TORN) == 1

    whole = tmp_path / "whole" / "acct.csv"
    whole.parent.mkdir()
    whole.write_bytes(data)
    proc = run_cli(["import", str(whole), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["inserted"], s["duplicates"], s["rejected"]) == (1, 799, 0)
    assert loaded(conn) == records_of(data)
    assert rejects(conn) == 0


def test_torn_last_record_of_a_stream_is_a_reject(cli_env: dict[str, str], conn: Conn) -> None:
    data = reordered(stream(600, seed=35))
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    proc = run_cli(["import", "-", "--format", "json"], cli_env, input=data[: last + 40])
    assert proc.returncode == 0, proc.stderr.decode()
    assert loaded(conn) == records_of(data[:last])
    assert count(conn, "SELECT count(*) FROM pmta.rejects WHERE reason = %s", TORN) == 1
