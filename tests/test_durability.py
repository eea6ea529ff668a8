"""Never lose a record: real processes killed, a real database cut off, every row counted.

The database is cut off either with a DSN pointing at a closed port, or with
``Proxy``: a TCP proxy on 127.0.0.1 in front of the test PostgreSQL that can close
every connection and refuse new ones, then come back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
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


class Feeder(threading.Thread):
    """Writes ``data`` to a non-blocking pipe in atomic pieces until done or stopped.

    ``sent`` is exactly what entered the pipe: each ``write`` is at most ``PIPE_BUF``
    bytes, which a pipe takes whole or not at all.
    """

    def __init__(self, fd: int, data: bytes) -> None:
        super().__init__(daemon=True)
        self.fd, self.data, self.sent = fd, data, 0
        self.stop = threading.Event()

    def run(self) -> None:
        view = memoryview(self.data)
        while self.sent < len(view) and not self.stop.is_set():
            try:
                self.sent += os.write(self.fd, view[self.sent : self.sent + select.PIPE_BUF])
            except BlockingIOError:
                self.stop.wait(0.005)


def feed(fd: int, data: bytes) -> Feeder:
    feeder = Feeder(fd, data)
    feeder.start()
    return feeder


def drain(fd: int) -> bytes:
    """What is still in the pipe: bytes ingest never read."""
    os.set_blocking(fd, False)
    left = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(left)
        if not chunk:
            return bytes(left)
        left += chunk


def rcpt_index(run: int, rcpts: object) -> list[int]:
    prefix = f"r{run}-"
    return [int(str(r)[len(prefix) : -len("@x.com")]) for r in rcpts]  # type: ignore[attr-defined]


def loaded(conn: Conn, run: int) -> list[int]:
    rows = conn.execute("SELECT rcpt FROM pmta.events WHERE rcpt LIKE %s", (f"r{run}-%",))
    return rcpt_index(run, (r[0] for r in rows))


def journaled(folder: Path, lines: list[bytes]) -> list[int]:
    """Indexes of the records in intact spooled batches, checked against what was written.

    ``lines`` are the records written, without line breaks (record ``i`` has position
    ``i + 1``: positions count from 1 per ingest process, header lines excluded).
    """
    out: list[int] = []
    for f in list_files(folder):
        assert f.kind in ("segment", "tmp"), f"{f.kind} file {f.name} in the spool"
        reading = read_segment(f.path)
        if f.kind == "tmp":
            assert reading.records == 0, f"{f.name} holds records"
            continue
        assert not reading.damaged, f"{f.name} is damaged"
        for batch in reading.batches:
            position = batch.first_position
            for record in batch.records:
                if record == HEADER.rstrip(b"\n"):
                    continue  # a header line takes no position
                assert record == lines[position - 1], (f.name, position)
                out.append(position - 1)
                position += 1
    return out


def test_kill_9_at_random_moments(cli_env: dict[str, str], conn: Conn) -> None:
    """After each kill, every record durable at that moment is loaded exactly once.

    Durable at the kill = committed in ``pmta.events`` + in an intact spooled batch;
    the test reads both before anything replays the spool. It holds the pipe's read
    end too, so what ingest never read is still there and is counted as such. What
    remains (read but not yet journaled) is the tail of what was read, and at most
    one batch plus the rest of the pipe read that completed it.
    """
    rng = random.Random(20260115)
    batch_rows = 500
    env = dict(cli_env, PMTA_PIPE_BATCH_ROWS=str(batch_rows))
    folder = spool_of(cli_env)
    runs = 16
    totals = {"durable": 0, "lost": 0, "unread": 0}
    for run in range(runs):
        a, b = rng.randint(50, 400), rng.randint(200, 3000)
        first_part, second_part = HEADER + numbered(run, a), numbered(run, b, start=a)
        lines = (first_part + second_part).splitlines()[1:]
        shortest = min(map(len, lines)) + 1
        down = run % 4 == 3  # a quarter of the runs: the database is away, all is in the spool
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmta_pipe", "ingest"],
            stdin=read_end, stderr=subprocess.DEVNULL,
            env=dict(env, PMTA_PIPE_DSN=CLOSED) if down else env,
        )  # fmt: skip
        # read_end stays open here: after the kill, what ingest had not read is still in it
        capacity = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
        os.set_blocking(write_end, False)
        try:
            one = feed(write_end, first_part)
            one.join(timeout=30)
            assert not one.is_alive() and one.sent == len(first_part)
            if run % 2 == 0:  # half the runs: wait until the first part is committed
                wait_for(lambda run=run, a=a: len(loaded(conn, run)) == a)
            two = feed(write_end, second_part)
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            two.stop.set()
            two.join(timeout=30)
            assert not two.is_alive()
            left = drain(read_end)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            os.close(read_end)
            os.close(write_end)
        sent = (first_part + second_part)[: len(first_part) + two.sent]
        assert sent.endswith(left)
        read_by_ingest = sent[: len(sent) - len(left)]
        n_read = max(0, read_by_ingest.count(b"\n") - 1)  # whole records (header excluded)
        n_sent = max(0, sent.count(b"\n") - 1)

        # what was durable at the moment of the kill, read before any replay
        committed = loaded(conn, run)
        spooled = journaled(folder, lines)
        durable = set(committed) | set(spooled)
        if run % 2 == 0:
            assert set(range(a)) <= set(committed)
        if down:
            assert committed == []

        got = run_cli(["replay"], cli_env)
        assert got.returncode == 0, got.stderr.decode()
        # a .tmp (a kill while a segment was being created) holds no records (journaled
        # checked) and is removed by a later replay once it is old: anything else is gone
        assert [f.name for f in list_files(folder) if f.kind != "tmp"] == []
        after = loaded(conn, run)
        assert len(after) == len(set(after))  # exactly once
        assert set(after) == durable, (  # every durable record, and nothing from elsewhere
            f"run {run}: durable but not loaded {sorted(durable - set(after))[:10]},"
            f" loaded but never durable {sorted(set(after) - durable)[:10]}"
        )
        # read, journaled and loaded in order: what is loaded is a prefix of what was read
        assert sorted(after) == list(range(len(after)))
        assert len(after) <= n_read
        lost = n_read - len(after)  # read by ingest, not journaled when it died
        assert lost <= batch_rows + capacity // shortest, f"run {run}: {lost} records lost"
        assert len(after) + lost + (n_sent - n_read) == n_sent  # every record written, placed
        totals["durable"] += len(after)
        totals["lost"] += lost
        totals["unread"] += n_sent - n_read
    total = events(conn)
    assert total == count(conn, "SELECT count(DISTINCT rcpt) FROM pmta.events") == totals["durable"]
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == total


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
