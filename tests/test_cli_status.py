"""``pmta-pipe status``: exact output fields and exit codes for monitoring."""

from __future__ import annotations

import json

import psycopg

from tests.conftest import count, run_cli
from tests.test_durability import CLOSED, HEADER, numbered

Conn = psycopg.Connection[tuple[object, ...]]


def test_healthy_after_ingest(cli_env: dict[str, str], conn: Conn) -> None:
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(1, 120))
    assert got.returncode == 0, got.stderr.decode()
    st = run_cli(["status", "--format", "json"], cli_env)
    assert st.returncode == 0, st.stdout.decode()
    data = json.loads(st.stdout)
    assert data["healthy"] is True and data["problems"] == []
    db = data["database"]
    assert db["reachable"] is True
    assert db["schema_version"] == db["code_version"]
    assert [(s["source"], s["records_last_hour"]) for s in db["sources"]] == [("test-host", 120)]
    assert data["spool"]["segments"] == 0 and data["spool"]["records"] == 0
    text = run_cli(["status"], cli_env)
    assert text.returncode == 0
    assert text.stdout.decode().splitlines()[-1] == "status: healthy"
    assert count(conn, "SELECT count(*) FROM pmta.ingest_health") == 1


def test_unreachable_database_and_orphaned_backlog(cli_env: dict[str, str]) -> None:
    secret = "s3cr3t-pw"
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED.replace("postgres@", f"postgres:{secret}@"),
                PMTA_PIPE_DRAIN_TIMEOUT="0")  # fmt: skip
    got = run_cli(["ingest"], down, input=HEADER + numbered(1, 50))
    assert got.returncode == 75
    st = run_cli(["status", "--format", "json"], down)
    assert st.returncode == 1
    assert secret.encode() not in st.stdout + st.stderr
    data = json.loads(st.stdout)
    assert data["database"]["reachable"] is False
    assert data["database"]["target"] == "postgres@127.0.0.1:1/nowhere"
    spool = data["spool"]
    assert (spool["segments"], spool["orphaned_segments"], spool["batches"]) == (1, 1, 1)
    assert spool["records"] == 51  # 50 records and their header line
    assert spool["oldest_age_seconds"] >= 0
    assert len(data["problems"]) == 2
    text = run_cli(["status"], down).stdout.decode()
    assert "UNREACHABLE" in text and "1 spool segments are not being loaded" in text
    assert secret not in text
    # once replayed into the real database, healthy again
    assert run_cli(["replay"], cli_env).returncode == 0
    assert run_cli(["status"], cli_env).returncode == 0
