"""Never lose a record: real processes killed, a real database cut off, every row counted.

The database is cut off either with a DSN pointing at a closed port, or with
``Proxy``: a TCP proxy on 127.0.0.1 in front of the test PostgreSQL that can close
every connection and refuse new ones, then come back.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pmta_pipe.spool import list_files, read_segment
from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]
CLOSED = "postgresql://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
WRITE_BOUND = 2.0  # a write to the pipe must never block longer (a behaviour bound)


# -- a TCP proxy we can cut --------------------------------------------------------------


class Proxy:
    """127.0.0.1:port -> the test PostgreSQL; ``stop`` closes everything and refuses."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self.upstream: tuple[int, str | tuple[str, int]] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (socket.gethostbyname(host), port))
        )
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
        self._listener: socket.socket | None = None
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        lst.settimeout(0.1)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def stop(self) -> None:
        lst, self._listener = self._listener, None
        if lst is not None:
            lst.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, lst: socket.socket) -> None:
        while self._listener is lst:
            try:
                client, _ = lst.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            family, address = self.upstream
            upstream = socket.socket(family, socket.SOCK_STREAM)
            try:
                upstream.connect(address)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(dsn: str) -> Iterator[Proxy]:
    p = Proxy(dsn)
    yield p
    p.stop()


# -- helpers -----------------------------------------------------------------------------


def start_ingest(
    env: dict[str, str], *args: str, stderr: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "ingest", *args],
        stdin=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        env=env,
        bufsize=0,
    )


def write_timed(proc: subprocess.Popen[bytes], data: bytes, chunk: int = 16384) -> float:
    """Write ``data`` to the process's stdin; return the longest a single write blocked."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    longest = 0.0
    view = memoryview(data)
    while view:
        t = time.monotonic()
        n = os.write(fd, view[:chunk])
        longest = max(longest, time.monotonic() - t)
        view = view[n:]
    return longest


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash or the OOM killer would."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()


def spooled_lines(folder: Path) -> int:
    """Lines (header lines included) in complete, checksum-verified batches of the spool.

    A batch whose frame header is visible may still be half written (a ``kill -9``
    during ``write`` leaves it torn): only a batch that reads back intact counts.
    """
    total = 0
    for f in list_files(folder):
        if f.kind == "segment":
            with contextlib.suppress(FileNotFoundError):
                total += read_segment(f.path).records
    return total


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def numbered(run: int, n: int, start: int = 0) -> bytes:
    """Records with a unique rcpt each: r<run>-<i>@x.com (no header line)."""
    return b"".join(
        b"d,2026-01-15 14:%02d:%02d-0700,r%d-%d@x.com\n" % (i // 60 % 60, i % 60, run, i)
        for i in range(start, start + n)
    )


HEADER = b"type,timeLogged,rcpt\n"


def events(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.events")


def spool_of(env: dict[str, str]) -> Path:
    return Path(env["PMTA_PIPE_SPOOL_DIR"])


# -- the scenarios -----------------------------------------------------------------------


def test_database_down_whole_run_then_kill_then_replay(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(5000, days=2, seed=11)
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED)
    proc = start_ingest(down)
    longest = write_timed(proc, data)
    wait_for(lambda: spooled_lines(spool_of(cli_env)) == 5001)  # 5000 records and the header
    kill(proc)
    assert longest < WRITE_BOUND
    assert events(conn) == 0
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 5000, (got.stdout + got.stderr).decode()
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 5000
    assert b"spool" in got.stdout and b"is empty" in got.stdout
    assert not [f for f in list_files(spool_of(cli_env)) if f.kind == "segment"]
    again = run_cli(["replay"], cli_env)
    assert again.returncode == 0 and events(conn) == 5000


def test_end_of_input_while_down_exits_75_and_next_start_loads_it(
    cli_env: dict[str, str], conn: Conn
) -> None:
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0.5")
    got = run_cli(["ingest"], down, input=HEADER + numbered(1, 700))
    assert got.returncode == 75, got.stderr.decode()
    assert b"left in the spool" in got.stderr
    assert spooled_lines(spool_of(cli_env)) == 701
    # the next pipe process (database back) loads the orphan before its own input
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(2, 300))
    assert got.returncode == 0, got.stderr.decode()
    assert b"recovered 1 spool segments" in got.stderr
    assert events(conn) == 1000
    assert count(conn, "SELECT count(DISTINCT source) FROM pmta.ingest_batches") == 1
    assert spooled_lines(spool_of(cli_env)) == 0


def test_connection_cut_mid_stream_never_blocks_stdin(
    cli_env: dict[str, str], conn: Conn, proxy: Proxy, tmp_path: Path
) -> None:
    data = stream(10_000, days=2, seed=12)
    lines = data.splitlines(keepends=True)
    first, second = b"".join(lines[:5001]), b"".join(lines[5001:])
    proxy.start()
    log = (tmp_path / "stderr").open("wb")
    proc = start_ingest(dict(cli_env, PMTA_PIPE_DSN=proxy.dsn), stderr=log)
    longest = write_timed(proc, first)
    wait_for(lambda: events(conn) > 0)  # loading through the proxy
    proxy.stop()
    cut = time.monotonic()
    longest = max(longest, write_timed(proc, second))
    time.sleep(max(0.0, 3.0 - (time.monotonic() - cut)))
    proxy.start()
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=90) == 0, (tmp_path / "stderr").read_text()
    log.close()
    assert longest < WRITE_BOUND
    assert events(conn) == 10_000
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 10_000
    text = (tmp_path / "stderr").read_text()
    assert text.count("database unavailable") == 1  # once per state change, not per attempt
    assert text.count("database back") == 1
    assert spooled_lines(spool_of(cli_env)) == 0


def test_sigkill_after_last_write_then_replay(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(20_000, days=3, seed=13)
    proc = start_ingest(cli_env)
    write_timed(proc, data)
    time.sleep(2.5)
    kill(proc)
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 20_000
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 20_000
    assert spooled_lines(spool_of(cli_env)) == 0


def test_kill_9_at_random_moments(cli_env: dict[str, str], conn: Conn) -> None:
    rng = random.Random(20260115)
    runs = 20
    durable: dict[int, int] = {}  # run -> records known durable before the kill
    written: dict[int, int] = {}
    for run in range(runs):
        a, b = rng.randint(50, 400), rng.randint(200, 3000)
        proc = start_ingest(cli_env)
        write_timed(proc, HEADER + numbered(run, a))
        if run % 2 == 0:  # half the runs: wait until the first part is committed
            wait_for(lambda run=run, a=a: count(
                conn, "SELECT count(*) FROM pmta.events WHERE rcpt LIKE %s", f"r{run}-%"
            ) == a)  # fmt: skip
            durable[run] = a
        with contextlib.suppress(BrokenPipeError):
            write_timed(proc, numbered(run, b, start=a))
        time.sleep(rng.uniform(0.0, 0.6))
        kill(proc)
        written[run] = a + b
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert spooled_lines(spool_of(cli_env)) == 0
    total = events(conn)
    assert total == count(conn, "SELECT count(DISTINCT rcpt) FROM pmta.events")  # no duplicate
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == total
    for run in range(runs):
        loaded = [
            int(r[0])  # type: ignore[call-overload]
            for r in conn.execute(
                "SELECT split_part(split_part(rcpt, '-', 2), '@', 1) FROM pmta.events"
                " WHERE rcpt LIKE %s",
                (f"r{run}-%",),
            )
        ]
        assert all(0 <= i < written[run] for i in loaded)
        assert len(loaded) >= durable.get(run, 0)
        # records are read, journaled and loaded in order: what is loaded is a prefix
        assert sorted(loaded) == list(range(len(loaded)))
    assert total >= sum(durable.values())


def test_damaged_truncated_and_stray_spool_files(cli_env: dict[str, str], conn: Conn) -> None:
    folder = spool_of(cli_env)
    down = dict(
        cli_env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0", PMTA_PIPE_BATCH_ROWS="250"
    )
    for run in range(3):
        got = run_cli(["ingest"], down, input=HEADER + numbered(run, 999))  # 4 batches of 250
        assert got.returncode == 75, got.stderr.decode()
    seg_torn, seg_bad, seg_ok = (f.path for f in list_files(folder) if f.kind == "segment")
    assert [len(read_segment(p).batches) for p in (seg_torn, seg_bad, seg_ok)] == [4, 4, 4]
    with seg_torn.open("r+b") as fh:  # a torn last write: the last batch is cut short
        fh.truncate(seg_torn.stat().st_size - 10)
    data = bytearray(seg_bad.read_bytes())
    data[read_segment(seg_bad).batches[1].ref.offset + 100] ^= 0xFF  # bit rot in batch 2
    seg_bad.write_bytes(bytes(data))
    garbage = folder / "0000000000000001-1-000000.seg"
    garbage.write_bytes(b"\x00garbage, not a segment" * 10)
    (folder / "README").write_text("a stray file")
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    # lost: the torn last batch (never durable) and the rotten one (its checksum fails)
    assert events(conn) == 749 + 749 + 999
    for run, missing in ((0, range(749, 999)), (1, range(249, 499))):
        rows = {
            r[0]
            for r in conn.execute("SELECT rcpt FROM pmta.events WHERE rcpt LIKE %s", (f"r{run}-%",))
        }
        assert not rows & {f"r{run}-{i}@x.com" for i in missing}
    kinds = sorted((f.kind, f.name) for f in list_files(folder))
    assert kinds == sorted(
        [("corrupt", garbage.name + ".corrupt"), ("corrupt", seg_bad.name + ".corrupt"),
         ("stray", "README")]
    )  # fmt: skip
    assert b"damaged" in got.stderr
    status = run_cli(["status", "--format", "json"], cli_env)
    assert status.returncode == 1
    assert b"damaged spool files moved aside" in status.stdout


def test_full_spool_blocks_reading_then_resumes(
    cli_env: dict[str, str], conn: Conn, proxy: Proxy, tmp_path: Path
) -> None:
    data = HEADER + numbered(7, 5000)  # about 200 KB
    env = dict(cli_env, PMTA_PIPE_DSN=proxy.dsn, PMTA_PIPE_SPOOL_MAX_BYTES="40K",
               PMTA_PIPE_BATCH_ROWS="200")  # fmt: skip
    errfile = tmp_path / "stderr"
    log = errfile.open("wb")
    proc = start_ingest(env, stderr=log)  # the database is down from the start
    writer = threading.Thread(target=write_timed, args=(proc, data), daemon=True)
    writer.start()
    wait_for(lambda: "spool full" in errfile.read_text())
    assert writer.is_alive()  # PowerMTA is held: reading stopped, nothing dropped
    assert events(conn) == 0
    proxy.start()
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0, errfile.read_text()
    log.close()
    assert events(conn) == 5000
    assert "ERROR" in errfile.read_text() and "reading resumed" in errfile.read_text()


def test_two_processes_one_spool_and_an_orphan(cli_env: dict[str, str], conn: Conn) -> None:
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED)
    dead = start_ingest(down)
    write_timed(dead, HEADER + numbered(0, 2000))
    wait_for(lambda: spooled_lines(spool_of(cli_env)) == 2001)
    kill(dead)
    # two pipes at once on the same spool, loading the same records concurrently
    procs = [start_ingest(dict(cli_env, PMTA_PIPE_SOURCE=f"host-{i}")) for i in (1, 2)]
    same = HEADER + numbered(1, 3000)
    for p in procs:
        write_timed(p, same)
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert events(conn) == 5000
    # the orphan was loaded once; each of the 3000 shared records was added once
    assert count(conn, "SELECT sum(records) FROM pmta.ingest_batches") == 2000 + 2 * 3000
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 5000
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE source = 'test-host'") == 2000
    assert spooled_lines(spool_of(cli_env)) == 0
