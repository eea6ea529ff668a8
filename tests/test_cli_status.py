"""``pmta-pipe status``: exact output fields and exit codes for monitoring."""

from __future__ import annotations

import json
import re

import psycopg

from pmta_pipe import fastpath
from tests.conftest import count, run_cli
from tests.test_durability import CLOSED, HEADER, numbered
from tests.test_setup_faults import JOB_HEADER, POISON, refuse_poison, with_jobs

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
    path, why = fastpath.parser_path()  # the suite's PMTA_PIPE_PARSER reaches the command
    assert data["parser"] == {"path": path, "why": why}
    text = run_cli(["status"], cli_env)
    assert text.returncode == 0
    assert text.stdout.decode().splitlines()[0] == f"parser: {why}"
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


# -- the reject share of the last hour, and rejects PostgreSQL refused -------------------------


def bad_times(n: int) -> bytes:
    """Records the parser rejects (an unreadable timeLogged)."""
    return b"".join(b"d,not a time %d,bad-%d@x.com\n" % (i, i) for i in range(n))


def problems(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    got = run_cli(["status", "--format", "json", *args], env)
    data = json.loads(got.stdout)
    assert data["healthy"] is (got.returncode == 0), data
    return got.returncode, [str(p) for p in data["problems"]]


def test_reject_share_above_the_limit_is_unhealthy(cli_env: dict[str, str], conn: Conn) -> None:
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(1, 95) + bad_times(5))
    assert got.returncode == 0, got.stderr.decode()
    assert count(conn, "SELECT sum(records) FROM pmta.ingest_batches") == 100
    assert count(conn, "SELECT sum(rejected) FROM pmta.ingest_batches") == 5  # a 5 % share
    code, found = problems(cli_env)
    assert code == 1
    share = [p for p in found if "test-host" in p and re.search(r"(^|[^\d.])5(\.0+)? ?%", p)]
    assert len(share) == 1, found
    text = run_cli(["status"], cli_env)
    assert text.returncode == 1
    assert share[0] in text.stdout.decode()
    # the limit: a fraction or a percentage, by flag or environment; exceeded only above it
    for args, env, expected in (
        (["--max-reject-share", "50%"], cli_env, 0),
        (["--max-reject-share", "0.1"], cli_env, 0),
        (["--max-reject-share", "6%"], cli_env, 0),
        (["--max-reject-share", "4%"], cli_env, 1),
        (["--max-reject-share", "0.04"], cli_env, 1),
        ([], dict(cli_env, PMTA_PIPE_MAX_REJECT_SHARE="10%"), 0),
        ([], dict(cli_env, PMTA_PIPE_MAX_REJECT_SHARE="0.02"), 1),
        (["--max-reject-share", "50%"], dict(cli_env, PMTA_PIPE_MAX_REJECT_SHARE="2%"), 0),
    ):
        code, found = problems(env, *args)
        assert code == expected, (args, found)
        assert len(found) == expected, (args, found)


def test_reject_share_below_the_default_is_healthy(cli_env: dict[str, str], conn: Conn) -> None:
    got = run_cli(["ingest"], cli_env, input=HEADER + numbered(1, 199) + bad_times(1))
    assert got.returncode == 0, got.stderr.decode()
    assert count(conn, "SELECT sum(rejected) FROM pmta.ingest_batches") == 1  # 0.5 %
    assert problems(cli_env) == (0, [])


def test_a_record_the_database_refused_is_unhealthy(cli_env: dict[str, str], conn: Conn) -> None:
    refuse_poison(conn)
    data = JOB_HEADER + with_jobs(1, 400, {123}, POISON)  # 0.25 %: below the share
    got = run_cli(["ingest"], dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="5"), input=data)
    assert got.returncode == 0, got.stderr.decode()
    assert count(conn, "SELECT sum(rejected_by_database) FROM pmta.ingest_batches") == 1
    for args in ([], ["--max-reject-share", "50%"]):
        code, found = problems(cli_env, *args)
        assert code == 1, found
        assert len(found) == 1, found
        assert "database" in found[0] and "reject" in found[0] and "test-host" in found[0]
