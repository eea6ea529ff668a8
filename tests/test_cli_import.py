"""``pmta-pipe import`` as a subprocess: the pipe-then-backfill scenario, kills, bad inputs."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psycopg

from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]


def summary_of(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_pipe_then_backfill_then_folder_again_leaves_exactly_40000(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    today = stream(30_000, days=2, seed=11, start="2026-03-01")
    older = stream(10_000, days=2, seed=12, start="2026-02-01")
    proc = run_cli(["ingest"], cli_env, input=today)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 30_000

    folder = tmp_path / "acct"
    folder.mkdir()
    (folder / "acct-2026-03-01-0000.csv.gz").write_bytes(gzip.compress(today))
    (folder / "acct-2026-02-01-0000.csv").write_bytes(older)
    proc = run_cli(
        ["import", str(folder / "acct-2026-03-01-0000.csv.gz"), str(folder / "acct-2026-02-01-*"),
         "--format", "json"],
        cli_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["files"], s["imported"], s["records"], s["inserted"], s["duplicates"]) == (
        2, 2, 40_000, 10_000, 30_000,
    )  # fmt: skip
    assert count(conn, "SELECT count(*) FROM pmta.events") == 40_000

    proc = run_cli(["import", str(folder), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert (s["files"], s["skipped"], s["records"], s["inserted"]) == (2, 2, 0, 0)
    assert count(conn, "SELECT count(*) FROM pmta.events") == 40_000
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0


def test_stdin_dash_reads_compressed_input(cli_env: dict[str, str], conn: Conn) -> None:
    proc = run_cli(["import", "-"], cli_env, input=gzip.compress(stream(1234, seed=13)))
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"records: 1234, inserted: 1234, duplicates: 0, rejected: 0" in proc.stdout
    assert count(conn, "SELECT count(*) FROM pmta.events") == 1234
    assert count(conn, "SELECT count(*) FROM pmta.import_files") == 0


def test_killed_import_resumes_without_duplicates(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "acct-big.csv"
    path.write_bytes(stream(60_000, days=2, seed=14))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "import", str(path), "--batch-rows", "500"],
        env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    read = 0
    while time.monotonic() < deadline and proc.poll() is None:
        row = conn.execute("SELECT records_read FROM pmta.import_files").fetchone()
        read = int(row[0]) if row else 0  # type: ignore[call-overload]
        if read >= 5000:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    committed = count(conn, "SELECT count(*) FROM pmta.events")
    ledger = conn.execute("SELECT completed, records FROM pmta.import_files").fetchone()
    assert ledger == (False, committed)  # the ledger never claims more than was committed

    again = run_cli(["import", str(path), "--format", "json"], cli_env)
    assert again.returncode == 0, again.stderr.decode()
    s = summary_of(again)
    assert s["records"] == s["inserted"] == 60_000 - committed
    assert count(conn, "SELECT count(*) FROM pmta.events") == 60_000
    assert conn.execute("SELECT completed, records FROM pmta.import_files").fetchone() == (
        True, 60_000,
    )  # fmt: skip


def test_interrupted_parallel_import_stops_at_once_and_resumes_each_file(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    """Ctrl-C during ``--jobs 2``: both pipelines stop (exit 130), each file's ledger row
    says what committed, and the next run loads exactly the rest of every file."""
    for k in range(4):
        data = stream(15_000, days=1, seed=40 + k, start=f"2026-0{k + 1}-01")
        (tmp_path / f"acct-{k}.csv.gz").write_bytes(gzip.compress(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "import", str(tmp_path), "--jobs", "2",
         "--batch-rows", "500"],
        env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        started = count(conn, "SELECT count(*) FROM pmta.import_files WHERE records > 0")
        if started == 2:  # both pipelines have committed batches of their first file
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=30) == 130, "the import ended before it could be interrupted"
    committed = count(conn, "SELECT count(*) FROM pmta.events")
    ledgered = count(conn, "SELECT coalesce(sum(records), 0) FROM pmta.import_files")
    assert 0 < committed < 60_000 and ledgered == committed
    assert count(conn, "SELECT count(*) FROM pmta.import_files WHERE completed") < 4

    again = run_cli(["import", str(tmp_path), "--format", "json"], cli_env)
    assert again.returncode == 0, again.stderr.decode()
    assert summary_of(again)["inserted"] == 60_000 - committed
    assert count(conn, "SELECT count(*) FROM pmta.events") == 60_000
    assert count(conn, "SELECT count(*) FROM pmta.import_files WHERE completed") == 4
    assert count(conn, "SELECT sum(records) FROM pmta.import_files") == 60_000


def test_missing_path_is_a_one_line_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(["import", str(tmp_path / "nope.csv")], cli_env)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert err == [f"error: no such file or folder: {tmp_path / 'nope.csv'} (hint: check the "
                   "path; quote globs so that pmta-pipe expands them)"]  # fmt: skip
    assert proc.stdout == b""


def test_unreadable_and_truncated_files_fail_alone(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    good = tmp_path / "acct-good.csv"
    good.write_bytes(stream(700, seed=15))
    unreadable = tmp_path / "acct-unreadable.csv"
    if os.geteuid() == 0:  # root reads any file: a file whose reads fail instead
        unreadable.symlink_to("/proc/self/mem")
    else:
        unreadable.write_bytes(b"type,timeLogged\n")
        unreadable.chmod(0)
    data = stream(5000, seed=16, start="2025-06-01")
    packed = gzip.compress(data)
    cut = packed[: len(packed) // 2]
    damaged = tmp_path / "acct-damaged.csv.gz"
    damaged.write_bytes(cut)
    # what can be recovered: the complete lines of the readable prefix, less the header
    prefix = zlib.decompressobj(wbits=31).decompress(cut)
    recoverable = prefix[: prefix.rfind(b"\n") + 1].count(b"\n") - 1
    assert 1000 < recoverable < 4000

    proc = run_cli(["import", str(tmp_path), "--format", "json"], cli_env)
    assert proc.returncode == 1
    s = summary_of(proc)
    per_file = {Path(str(f["path"])).name: (f["status"], f["records"]) for f in s["per_file"]}  # type: ignore[attr-defined]
    assert per_file == {
        "acct-good.csv": ("imported", 700),
        "acct-unreadable.csv": ("failed", 0),
        "acct-damaged.csv.gz": ("failed", recoverable),
    }
    assert count(conn, "SELECT count(*) FROM pmta.events") == 700 + recoverable
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0  # no cut-off half record
    row = conn.execute(
        "SELECT completed, error FROM pmta.import_files WHERE path LIKE '%damaged%'"
    ).fetchone()
    assert row is not None and row[0] is False
    assert str(row[1]).startswith("truncated gzip data: Compressed file ended")

    # the text summary names every failed file; the log says why, one line each
    proc = run_cli(["import", str(tmp_path)], cli_env)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "files: 3 (0 imported, 1 skipped, 0 partial, 2 failed)" in out
    assert f"failed: {damaged}: truncated gzip data" in out
    assert f"failed: {unreadable}: cannot read" in out
    assert "Traceback" not in proc.stderr.decode()

    # the whole file arrives later: read again, only the rest is new
    damaged.write_bytes(packed)
    proc = run_cli(["import", str(damaged), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    s = summary_of(proc)
    assert s["inserted"] == 5000 - recoverable, json.dumps(s)
    assert count(conn, "SELECT count(*) FROM pmta.events") == 5700
