"""Sessions that outlive their client: keepalives, session timeouts, and a bounded drain."""

from __future__ import annotations

import threading

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pmta_pipe import db
from tests.conftest import count, run_cli
from tests.helpers import stream
from tests.test_durability import HEADER, numbered, spool_of, spooled_lines

Conn = psycopg.Connection[tuple[object, ...]]
SHOW = (
    "SELECT current_setting('idle_in_transaction_session_timeout'),"
    " current_setting('lock_timeout'), current_setting('tcp_keepalives_idle')"
)


def libpq_params(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, bytes | None]:
    return {o.keyword.decode(): o.val for o in conn.pgconn.info}


def test_every_session_gets_timeouts_unless_something_set_them(dsn: str, conn: Conn) -> None:
    with db.connect(dsn) as ours:
        tcp = "30" if not ours.info.host.startswith("/") else "0"  # no keepalives on a socket
        assert ours.execute(SHOW).fetchone() == ("1min", "30s", tcp)
        assert libpq_params(ours)["keepalives_idle"] == b"30"  # this side's keepalives
    # the DBA's ALTER DATABASE ... SET and the DSN's options win over pmta-pipe's
    name = str(conninfo_to_dict(dsn)["dbname"])
    conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '5s'")
    with db.connect(dsn) as ours:
        assert ours.execute(SHOW).fetchone() == ("1min", "5s", tcp)
    mine = make_conninfo(dsn, options="-c idle_in_transaction_session_timeout=7s",
                         keepalives_idle="45")  # fmt: skip
    with db.connect(mine) as ours:
        assert ours.execute(SHOW).fetchone() == ("7s", "5s", tcp)
        assert libpq_params(ours)["keepalives_idle"] == b"45"


def test_drain_timeout_bounds_the_end_while_a_statement_is_blocked(
    cli_env: dict[str, str], conn: Conn, dsn: str
) -> None:
    data = HEADER + numbered(1, 500)
    locker = psycopg.connect(dsn)
    locker.execute("LOCK TABLE pmta.events IN ACCESS EXCLUSIVE MODE")  # held, idle in a txn
    env = dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="2")
    try:
        got = run_cli(["ingest"], env, input=data, timeout=25)  # lock_timeout alone is 30 s
    finally:
        locker.rollback()
        locker.close()
    assert got.returncode == 75, got.stderr.decode()
    assert b"500 records" in got.stderr and b"left in the spool" in got.stderr
    assert spooled_lines(spool_of(cli_env)) == 501  # the header and every record, kept
    replay = run_cli(["replay"], cli_env)
    assert replay.returncode == 0, replay.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 500
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0


def test_a_lock_held_by_an_idle_session_is_released_and_the_loader_goes_on(
    cli_env: dict[str, str], conn: Conn, dsn: str
) -> None:
    # a client that vanished in the middle of a transaction: its session idles there,
    # holding its locks, until the server's idle_in_transaction_session_timeout ends it
    name = str(conninfo_to_dict(dsn)["dbname"])
    conn.execute(f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '2s'")
    vanished = db.connect(dsn)
    vanished.execute("LOCK TABLE pmta.events IN ACCESS EXCLUSIVE MODE")
    ended = threading.Event()

    def watch() -> None:
        try:
            vanished.execute("SELECT 1")
        except psycopg.Error:
            ended.set()

    got = run_cli(["ingest"], dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="30"),
                  input=HEADER + numbered(2, 300), timeout=60)  # fmt: skip
    watch()
    vanished.close()
    assert got.returncode == 0, got.stderr.decode()
    assert ended.is_set()  # the server ended the idle session
    assert count(conn, "SELECT count(*) FROM pmta.events") == 300


def test_a_healthy_backlog_outlasts_the_drain_timeout(cli_env: dict[str, str], conn: Conn) -> None:
    # the drain timeout bounds waiting for a database that does not take the records,
    # never a database busy loading them: 60,000 records read at once take longer
    data = stream(60_000, days=2, seed=21)
    env = dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="1", PMTA_PIPE_BATCH_ROWS="2000")
    got = run_cli(["ingest"], env, input=data, timeout=300)
    assert got.returncode == 0, got.stderr.decode()
    assert count(conn, "SELECT count(*) FROM pmta.events") == 60_000
    assert b"60000 read = 60000 inserted + 0 duplicates + 0 rejected + 0 left" in got.stderr
