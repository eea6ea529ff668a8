"""``pmta-pipe ingest`` end to end: a real subprocess, a real PostgreSQL, every row counted."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psycopg

from pmta_pipe.migrate import code_version, schema_version
from tests.conftest import SAMPLES, count, run_cli
from tests.helpers import clean_env, stream, type_counts

Conn = psycopg.Connection[tuple[object, ...]]


def sample_lines() -> bytes:
    """Every non-comment line of the reference samples, in file order."""
    lines = [
        line
        for line in SAMPLES.read_bytes().splitlines(keepends=True)
        if line.strip() and not line.startswith(b"#")
    ]
    return b"".join(lines)


def test_every_reference_sample_line_loads(cli_env: dict[str, str], conn: Conn) -> None:
    data = sample_lines()
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    # 25 lines: 6 headers, 19 records (the guide's rb sample is printed over two lines,
    # so its second half is a record of its own with type "(192.168.0.150)")
    assert count(conn, "SELECT count(*) FROM pmta.events") == 19
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    got = dict(conn.execute("SELECT record_type, count(*) FROM pmta.events GROUP BY 1").fetchall())
    assert got == {"d": 6, "b": 7, "t": 1, "tq": 1, "r": 1, "rb": 1, "f": 1, "(192.168.0.150)": 1}
    row = conn.execute(
        "SELECT dlv_size, host(dlv_source_ip), queue, time_logged = '2019-02-08 21:54:05+00'"
        " FROM pmta.events WHERE job_id = 'JoBID29546016861868'"
    ).fetchone()
    assert row == (41159, "10.1.2.3", "1181.com/vmta48", True)
    # the guide's tq sample has no header of its own, so the v5 default order maps it
    # (its UTF-8 queue name lands in dsn_mta): what matters is that nothing is lost
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE dsn_mta = 'bücher.de/vmta29'") == 1


def test_100k_stream_counts_match_and_replay_adds_nothing(
    cli_env: dict[str, str], conn: Conn
) -> None:
    data = stream(100_000, days=3)
    expected = type_counts(data)
    proc = run_cli(["ingest"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    got = dict(conn.execute("SELECT record_type, count(*) FROM pmta.events GROUP BY 1").fetchall())
    assert got == dict(expected)
    assert count(conn, "SELECT count(*) FROM pmta.events") == 100_000
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    assert count(conn, "SELECT count(DISTINCT source) FROM pmta.events") == 1
    proc = run_cli(["ingest", "--source", "other-host"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 100_000
    assert b"0 inserted, 100000 duplicates" in proc.stderr


def test_bad_input_classes(cli_env: dict[str, str], conn: Conn) -> None:
    data = (
        b"type,timeLogged,rcpt,dlvSourceIp,dlvSize\n"
        b"d,2026-01-15 14:23:11-0700,a@x.com,10.0.0.1,100\n"  # good
        b"d,2026-01-15 14:23:12-0700,b@x.com,999.1.1.1,abc\n"  # bad typed values: kept
        b"d,2026-01-15 14:23:13-0700,c@x.com,10.0.0.1,1,surplus\n"  # too many fields
        b",2026-01-15 14:23:14-0700,d@x.com,,\n"  # no type
        b"d,the day before,e@x.com,,\n"  # unreadable time
        b"d,2026-01-15 14:23:15-0700,f\xff\x00@x.com\n"  # bad UTF-8 and NUL, short row
        b"d,2026-01-15 14:23:16-0700,g@x.com,,99999999999999999999\n"  # out of bigint range
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 4
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 3
    reasons = [r[0] for r in conn.execute("SELECT reason FROM pmta.rejects ORDER BY position")]
    assert reasons == [
        "6 fields, more than the header's 5",
        "no record type",
        "unreadable timeLogged 'the day before'",
    ]
    positions = [r[0] for r in conn.execute("SELECT position FROM pmta.rejects ORDER BY 1")]
    assert positions == [3, 4, 5]
    header = conn.execute("SELECT DISTINCT header_line FROM pmta.rejects").fetchall()
    assert header == [("type,timeLogged,rcpt,dlvSourceIp,dlvSize",)]
    row = conn.execute("SELECT extra FROM pmta.events WHERE rcpt = 'b@x.com'").fetchone()
    assert row == ({"dlvSourceIp": "999.1.1.1", "dlvSize": "abc"},)
    assert count(conn, "SELECT count(*) FROM pmta.events WHERE rcpt = 'f\ufffd\ufffd@x.com'") == 1
    row = conn.execute("SELECT dlv_size, extra FROM pmta.events WHERE rcpt = 'g@x.com'").fetchone()
    assert row == (None, {"dlvSize": "99999999999999999999"})
    # the same input again changes nothing, rejects included
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0
    assert count(conn, "SELECT count(*) FROM pmta.events") == 4
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 3


def test_value_the_database_refuses_is_isolated(cli_env: dict[str, str], conn: Conn) -> None:
    # a trigger stands in for any value the parser accepts and PostgreSQL refuses
    data = b"type,timeLogged,rcpt\n" + b"".join(
        b"d,2026-01-15 14:23:%02d-0700,r%d@x.com\n" % (i, i) for i in range(10)
    )
    conn.execute(
        "CREATE FUNCTION pmta.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.rcpt = 'r7@x.com' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023';"
        " END IF; RETURN NEW; END $$"
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0  # partitions created, trigger added below for the next run
    conn.execute("TRUNCATE pmta.events")
    for (part,) in conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'pmta.events'::regclass"
    ).fetchall():
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {part}"
            " FOR EACH ROW EXECUTE FUNCTION pmta.refuse()"
        )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 9
    reasons = conn.execute("SELECT reason, position FROM pmta.rejects").fetchall()
    assert reasons == [("refused by the database: refused", 8)]


def test_header_change_mid_stream(cli_env: dict[str, str], conn: Conn) -> None:
    data = (
        b"type,timeLogged,rcpt,vmta\n"
        b"d,2026-01-15 14:23:11-0700,a@x.com,v1\n"
        b"type,vmta,rcpt,timeLogged,jobId\n"
        b"d,v2,b@y.com,2026-01-15 14:23:12-0700,J9\n"
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = conn.execute("SELECT rcpt, vmta, job_id FROM pmta.events ORDER BY rcpt").fetchall()
    assert rows == [("a@x.com", "v1", None), ("b@y.com", "v2", "J9")]


def test_partitions_for_far_past_and_future(cli_env: dict[str, str], conn: Conn) -> None:
    data = (
        b"type,timeLogged,rcpt\n"
        b"d,1971-06-01 00:00:00+0000,a@x.com\n"
        b"d,2199-12-31 23:59:59+0000,b@x.com\n"
        b"d,2026-01-15 23:30:00-0700,c@x.com\n"
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    parts = [
        r[0]
        for r in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'pmta.events'::regclass ORDER BY 1"
        )
    ]
    assert parts == ["pmta.events_19710601", "pmta.events_20260116", "pmta.events_21991231"]


def test_sigterm_mid_stream_commits_what_was_read(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(3000, days=1)
    lines = data.splitlines(keepends=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "ingest", "--batch-seconds", "0.2"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"".join(lines[:2001]))  # header + 2000 records
    proc.stdin.flush()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 2000


def test_low_volume_record_committed_within_about_a_second(
    cli_env: dict[str, str], conn: Conn
) -> None:
    env = dict(cli_env, PMTA_PIPE_BATCH_SECONDS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmta_pipe", "ingest"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"type,timeLogged,rcpt\nd,2026-01-15 14:23:10-0700,first@x.com\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30  # start-up: schema check, first connection
        while count(conn, "SELECT count(*) FROM pmta.events") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.stdin.write(b"d,2026-01-15 14:23:11-0700,a@x.com\n")
        proc.stdin.flush()
        written = time.monotonic()
        while count(conn, "SELECT count(*) FROM pmta.events") == 1:
            # a functional bound, far above the 1 s batch time: no timing is measured
            assert time.monotonic() - written < 10, "a lone record was not committed"
            time.sleep(0.05)
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()


def test_sql_is_read_from_installed_wheel(tmp_path: Path, dsn: str, empty_dsn: str) -> None:
    root = Path(__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(root)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # dependencies from this environment; pmta_pipe itself only from the wheel
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run(
        [str(venv / "bin" / "pmta-pipe"), "migrate", "--dsn", empty_dsn],
        cwd=outside, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"applied: 0001_events")
    where = subprocess.run(
        [str(py), "-c", "import pmta_pipe.migrate as m; print(m.sql_dir())"],
        cwd=outside, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(venv))


def test_a_stream_of_header_lines_only_still_creates_the_schema(
    empty_dsn: str, tmp_path: Path
) -> None:
    env = clean_env()
    env.update(PMTA_PIPE_DSN=empty_dsn, PMTA_PIPE_SPOOL_DIR=str(tmp_path / "spool"))
    header = b"type,timeLogged,orig,rcpt\n"
    got = run_cli(["ingest"], env, input=header + header)
    assert got.returncode == 0, got.stderr.decode()
    assert b"0 read = 0 inserted + 0 duplicates + 0 rejected + 0 left in the spool" in got.stderr
    with psycopg.connect(empty_dsn) as c:
        assert schema_version(c) == code_version()
