"""A record cut off by the end of input or a signal is never stored as an event, unless whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pmta_pipe.parse import TORN
from tests.conftest import count, run_cli
from tests.test_durability import CLOSED, HEADER, numbered, spool_of, wait_for

Conn = psycopg.Connection[tuple[object, ...]]

WHOLE = numbered(9, 1).rstrip(b"\n")  # every field of HEADER, no line break
CUT = WHOLE[: WHOLE.index(b",", WHOLE.index(b",") + 1) + 3]  # the rcpt cut short: torn
FEW = WHOLE[: WHOLE.index(b",", WHOLE.index(b",") + 1)]  # a field missing: torn
OPEN = WHOLE + b',"still open'  # a quote left open at the end: the input ended in it
CRLF = WHOLE + b"\r"  # cut between CR and LF: its last field is closed
QUOTED = WHOLE.replace(b",r9", b',"r9') + b'"'  # a quoted last field, closed


def events(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.events")


def torn_rejects(conn: Conn) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT raw_line, position, stage FROM pmta.rejects WHERE reason = %s", (TORN,)
    ).fetchall()


@pytest.mark.parametrize(
    ("tail", "loaded"),
    [(CUT, False), (FEW, False), (OPEN, False), (WHOLE, False), (CRLF, True), (QUOTED, True)],
)
def test_end_of_input_inside_the_last_record(
    cli_env: dict[str, str], conn: Conn, tail: bytes, loaded: bool
) -> None:
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(1, 50) + tail)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 50 + loaded
    rejects = conn.execute("SELECT raw_line, position, stage, reason FROM pmta.rejects").fetchall()
    assert rejects == ([] if loaded else [(tail.decode(), 51, "parser", TORN)])
    assert b"51 read = " + (b"51" if loaded else b"50") + b" inserted" in got.stderr


def test_sigterm_in_the_middle_of_a_record(cli_env: dict[str, str], conn: Conn) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "ingest"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(HEADER + numbered(2, 30))
    proc.stdin.flush()
    wait_for(lambda: events(conn) == 30)
    proc.stdin.write(CUT)  # PowerMTA stopped mid-write: the rest never comes
    proc.stdin.flush()
    time.sleep(0.5)  # let the reader take the partial line in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert events(conn) == 30
    assert torn_rejects(conn) == [(CUT.decode(), 31, "parser")]


def test_a_torn_tail_kept_in_the_spool_is_rejected_on_replay(
    cli_env: dict[str, str], conn: Conn
) -> None:
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0")
    got = run_cli(["ingest"], down, input=HEADER + numbered(3, 20) + CUT)
    assert got.returncode == 75, got.stderr.decode()
    assert b"20 records" not in got.stderr  # 21 records: the torn one is in the spool too
    assert any(spool_of(cli_env).glob("*.seg"))
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 20
    assert torn_rejects(conn) == [(CUT.decode(), 21, "parser")]


def test_rejects_retry_keeps_a_torn_record_torn_until_its_text_is_corrected(
    cli_env: dict[str, str], conn: Conn
) -> None:
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(4, 10) + CUT)
    assert got.returncode == 0, got.stderr.decode()
    got = run_cli(["rejects", "retry"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 10  # not an event made of its first fields
    assert conn.execute("SELECT reason, retries FROM pmta.rejects").fetchall() == [(TORN, 1)]
    conn.execute("UPDATE pmta.rejects SET raw_line = %s", (WHOLE.decode(),))  # corrected
    got = run_cli(["rejects", "retry"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 11
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0


def test_importing_the_parallel_file_resolves_a_torn_pipe_record(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    records = numbered(5, 40)
    cut = records.splitlines()[-1][:-3]  # the pipe's last record, cut in its rcpt
    got = run_cli(["ingest"], cli_env, input=HEADER + b"".join(records.splitlines(True)[:-1]) + cut)
    assert got.returncode == 0, got.stderr.decode()
    assert (events(conn), torn_rejects(conn)) == (39, [(cut.decode(), 40, "parser")])
    parallel = tmp_path / "acct-2026-01-15-0000.csv"  # PowerMTA's own file: every record
    parallel.write_bytes(HEADER + records)
    got = run_cli(["import", str(parallel)], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 40  # the whole record, once
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
