"""Setup faults hold batches, record faults become rejects: real processes, every row counted.

A database error that is the setup's fault (a missing privilege, a dropped schema, a
read-only database) must never turn a record into a row of ``pmta.rejects``: ``ingest``
keeps the batches in its spool, keeps reading stdin, says once what is wrong and how
to fix it, and loads everything once the cause is fixed; ``import`` and ``replay``
stop with a one-line error and leave the spool and the import ledger as they were.
A value PostgreSQL refuses in one record is that record's fault: it alone is
rejected (stage ``database``) and the rest of its batch loads.

The role without INSERT has every other grant ``deploy/roles.sql`` gives
``pmta_writer``; it is created in the test's own database and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import string
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pmta_pipe.spool import list_files, read_segment
from tests.conftest import count, run_cli
from tests.test_durability import (
    CLOSED,
    HEADER,
    WRITE_BOUND,
    numbered,
    spool_of,
    start_ingest,
    wait_for,
    write_timed,
)

Conn = psycopg.Connection[tuple[object, ...]]
LOADED_WITHIN = 90.0  # once the cause is fixed: retries are at most ~10 s apart


# -- a login role with a writer's grants minus INSERT on pmta.events ----------------------


@dataclass(frozen=True)
class Role:
    name: str
    dsn: str  # the test database, logged in as this role
    admin: str  # the test database, as the superuser

    def grant_insert(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(
                sql.SQL("GRANT INSERT ON pmta.events TO {}").format(sql.Identifier(self.name))
            )


WRITER_GRANTS = (
    "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
    "GRANT USAGE, CREATE ON SCHEMA pmta TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pmta TO {role}",
    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA pmta TO {role}",
    "REVOKE INSERT, UPDATE, DELETE ON pmta.schema_migrations FROM {role}",
    "ALTER FUNCTION pmta.ensure_partitions(date[])"
    " SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
    "GRANT EXECUTE ON FUNCTION pmta.ensure_partitions(date[]) TO {role}",
    "REVOKE INSERT ON pmta.events FROM {role}",
)


@pytest.fixture
def no_insert(dsn: str, admin_dsn: str) -> Iterator[Role]:
    """A login role that has what ``pmta_writer`` has, except INSERT on pmta.events."""
    name = f"pmta_t_noins_{uuid.uuid4().hex[:8]}"
    role, db = sql.Identifier(name), sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            for statement in WRITER_GRANTS:
                c.execute(sql.SQL(statement).format(db=db, role=role))  # type: ignore[arg-type]
            partitions = c.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'pmta.events'::regclass"
            ).fetchall()
            for (partition,) in partitions:
                c.execute(
                    sql.SQL("REVOKE INSERT ON {} FROM {}").format(sql.SQL(str(partition)), role)
                )
        yield Role(name, make_conninfo(dsn, user=name), dsn)
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            c.execute(sql.SQL("DROP OWNED BY {}").format(role))
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


# -- helpers -------------------------------------------------------------------------------


class Pipe:
    """A running ``pmta-pipe ingest``, fed from a thread so that a blocked write shows."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = log.open("wb")
        self.proc = start_ingest(env, stderr=self._log)
        self.longest = 0.0  # the longest a single write to its stdin blocked

    def write(self, data: bytes, timeout: float = 30.0) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.longest = max(self.longest, write_timed(self.proc, data))
            except BaseException as exc:  # a broken pipe: the process is gone
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout)
        assert not t.is_alive(), f"writing to the pipe still blocks after {timeout} s"
        assert not errors, f"{errors[0]!r}; stderr: {self.stderr()}"
        assert self.longest < WRITE_BOUND, f"a write blocked {self.longest:.1f} s"

    def stderr(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 90.0) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self._log.close()


@contextlib.contextmanager
def pipe(env: dict[str, str], log: Path) -> Iterator[Pipe]:
    p = Pipe(env, log)
    try:
        yield p
    finally:
        p.close()


def spooled(folder: Path, marker: bytes) -> int:
    """Records of the spool's intact batches that contain ``marker`` (a run's rcpt prefix)."""
    total = 0
    for f in list_files(folder):
        if f.kind == "segment":
            with contextlib.suppress(FileNotFoundError):
                for batch in read_segment(f.path).batches:
                    total += sum(1 for r in batch.records if marker in r)
    return total


def segments(folder: Path) -> int:
    return sum(1 for f in list_files(folder) if f.kind == "segment")


def has_events(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass('pmta.events') IS NOT NULL").fetchone()
    return bool(row and row[0])


def events(conn: Conn, like: str = "%") -> int:
    """Events whose rcpt matches ``like``; -1 while there is no pmta.events at all."""
    if not has_events(conn):
        return -1
    return count(conn, "SELECT count(*) FROM pmta.events WHERE rcpt LIKE %s", like)


def rejects(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.rejects")


def loaded_once(conn: Conn, run: int, n: int) -> None:
    """Records r<run>-0 … r<run>-(n-1) are in pmta.events, each exactly once."""
    got = [
        str(r[0])
        for r in conn.execute(
            "SELECT rcpt FROM pmta.events WHERE rcpt LIKE %s ORDER BY rcpt", (f"r{run}-%",)
        )
    ]
    assert len(got) == n
    assert set(got) == {f"r{run}-{i}@x.com" for i in range(n)}


def error_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line and needle in line]


def one_line_error(stderr: bytes) -> str:
    """The single ``error: … (hint: …)`` line of a command that stopped; no traceback."""
    lines = stderr.decode(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith("Traceback")], stderr.decode()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr.decode()
    assert "(hint: " in errors[0], errors[0]
    return errors[0]


def status(env: dict[str, str]) -> tuple[int, str]:
    got = run_cli(["status"], env)
    return got.returncode, got.stdout.decode()


def db_name(conn: Conn) -> sql.Identifier:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return sql.Identifier(str(row[0]))


def terminate_pipes(conn: Conn) -> int:
    """Close every pmta-pipe session on the test database (it must reconnect)."""
    return count(
        conn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'pmta-pipe%%'"
        " AND pid <> pg_backend_pid()",
    )


# -- setup faults in ingest ------------------------------------------------------------------


def test_missing_insert_privilege_holds_the_stream_until_granted(
    cli_env: dict[str, str], conn: Conn, no_insert: Role, tmp_path: Path
) -> None:
    env = dict(cli_env, PMTA_PIPE_DSN=no_insert.dsn, PMTA_PIPE_BATCH_ROWS="500")
    folder = spool_of(env)
    with pipe(env, tmp_path / "stderr") as p:
        started = time.monotonic()
        p.write(HEADER + numbered(1, 2000))
        wait_for(lambda: spooled(folder, b"r1-") == 2000)
        wait_for(lambda: error_lines(p.stderr(), "42501"))
        # the state is held, not resolved by rejecting: nothing written, nothing lost
        assert p.alive()
        assert rejects(conn) == 0
        assert events(conn) == 0
        assert count(conn, "SELECT count(*) FROM pmta.ingest_batches") == 0
        (err,) = error_lines(p.stderr(), "42501")
        assert re.search(r"\bevents\b", err) and "GRANT" in err, err  # the object, the fix
        # it keeps reading and journaling while the fault lasts
        p.write(numbered(1, 1000, start=2000))
        wait_for(lambda: spooled(folder, b"r1-") == 3000)
        assert p.alive() and rejects(conn) == 0 and events(conn) == 0
        code, text = status(env)
        assert code == 1, text
        assert "42501" in text and "GRANT" in text and "status: UNHEALTHY" in text, text
        js = run_cli(["status", "--format", "json"], env)
        assert js.returncode == 1
        data = json.loads(js.stdout)
        assert data["healthy"] is False
        assert any("42501" in problem and "GRANT" in problem for problem in data["problems"])
        # the operator fixes it: everything is loaded once, without a restart
        no_insert.grant_insert()
        wait_for(lambda: events(conn) == 3000, timeout=LOADED_WITHIN)
        loaded_once(conn, 1, 3000)
        assert rejects(conn) == 0
        assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 3000
        assert count(conn, "SELECT sum(rejected) FROM pmta.ingest_batches") == 0
        assert p.finish() == 0, p.stderr()
        elapsed = time.monotonic() - started
        # logged when the state started (and again only every few minutes)
        assert 1 <= len(error_lines(p.stderr(), "42501")) <= 1 + int(elapsed // 60), p.stderr()
    assert events(conn) == 3000 and rejects(conn) == 0
    assert segments(folder) == 0
    code, text = status(env)
    assert code == 0, text


def test_dropped_schema_is_migrated_again_and_the_stream_goes_on(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    folder = spool_of(cli_env)
    with pipe(cli_env, tmp_path / "stderr") as p:
        p.write(HEADER + numbered(1, 1000))
        wait_for(lambda: events(conn) == 1000)  # phase one committed
        before = len(p.stderr())
        conn.execute("SET lock_timeout = '20s'")
        conn.execute("DROP SCHEMA pmta CASCADE")
        assert not has_events(conn)
        p.write(numbered(2, 1500))  # phase two, journaled after the drop
        assert p.alive()
        wait_for(lambda: events(conn, "r2-%") == 1500, timeout=LOADED_WITHIN)
        assert p.alive()
        later = p.stderr()[before:]
        assert "migrat" in later.lower(), later
        assert p.finish() == 0, p.stderr()
    loaded_once(conn, 2, 1500)
    assert events(conn) == 1500  # phase one went with the schema; nothing of it came back
    assert events(conn, "r1-%") == 0
    assert rejects(conn) == 0
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 1500
    assert segments(folder) == 0


def test_read_only_database_holds_batches_instead_of_rejecting(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    folder = spool_of(cli_env)
    db = db_name(conn)
    with pipe(cli_env, tmp_path / "stderr") as p:
        p.write(HEADER + numbered(1, 500))
        wait_for(lambda: events(conn) == 500)
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(db))
        assert terminate_pipes(conn) >= 1
        p.write(numbered(2, 1000))
        wait_for(lambda: spooled(folder, b"r2-") == 1000)
        wait_for(lambda: error_lines(p.stderr(), "25006"))
        assert p.alive()
        assert rejects(conn) == 0
        assert events(conn) == 500 and events(conn, "r2-%") == 0
        code, text = status(cli_env)
        assert code == 1, text
        assert "25006" in text or "read-only" in text.lower(), text
        assert spooled(folder, b"r2-") == 1000  # status changed nothing
        conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(db))
        terminate_pipes(conn)
        wait_for(lambda: events(conn) == 1500, timeout=LOADED_WITHIN)
        assert p.finish() == 0, p.stderr()
    loaded_once(conn, 1, 500)
    loaded_once(conn, 2, 1000)
    assert rejects(conn) == 0
    assert count(conn, "SELECT sum(inserted) FROM pmta.ingest_batches") == 1500
    assert segments(folder) == 0
    assert status(cli_env)[0] == 0


# -- setup faults in import and replay: stop, change nothing ----------------------------------


def test_import_without_insert_privilege_stops_and_leaves_the_ledger(
    cli_env: dict[str, str], conn: Conn, no_insert: Role, tmp_path: Path
) -> None:
    env = dict(cli_env, PMTA_PIPE_DSN=no_insert.dsn)
    acct = tmp_path / "acct-2026-01-15.csv"
    acct.write_bytes(HEADER + numbered(1, 300))
    got = run_cli(["import", str(acct)], env)
    assert got.returncode == 1, (got.stdout + got.stderr).decode()
    line = one_line_error(got.stderr)
    assert "GRANT" in line and ("42501" in line or "permission denied" in line), line
    assert rejects(conn) == 0
    assert events(conn) == 0
    assert count(conn, "SELECT count(*) FROM pmta.ingest_batches") == 0
    ledger = conn.execute("SELECT completed, records, inserted FROM pmta.import_files").fetchall()
    assert ledger in ([], [(False, 0, 0)]), ledger
    no_insert.grant_insert()
    got = run_cli(["import", str(acct)], env)
    assert got.returncode == 0, got.stderr.decode()
    loaded_once(conn, 1, 300)
    assert rejects(conn) == 0
    ledger = conn.execute("SELECT completed, records, inserted FROM pmta.import_files").fetchall()
    assert ledger == [(True, 300, 300)]


def test_replay_without_insert_privilege_stops_and_keeps_the_spool(
    cli_env: dict[str, str], conn: Conn, no_insert: Role
) -> None:
    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0")
    assert run_cli(["ingest"], down, input=HEADER + numbered(1, 400)).returncode == 75
    folder = spool_of(cli_env)
    names = sorted(f.name for f in list_files(folder) if f.kind == "segment")
    assert len(names) == 1 and spooled(folder, b"r1-") == 400
    env = dict(cli_env, PMTA_PIPE_DSN=no_insert.dsn)
    got = run_cli(["replay"], env)
    assert got.returncode == 1, (got.stdout + got.stderr).decode()
    line = one_line_error(got.stderr)
    assert "GRANT" in line and ("42501" in line or "permission denied" in line), line
    assert rejects(conn) == 0
    assert events(conn) == 0
    assert count(conn, "SELECT count(*) FROM pmta.ingest_batches") == 0
    assert sorted(f.name for f in list_files(folder) if f.kind == "segment") == names
    assert spooled(folder, b"r1-") == 400
    no_insert.grant_insert()
    got = run_cli(["replay"], env)
    assert got.returncode == 0, got.stderr.decode()
    loaded_once(conn, 1, 400)
    assert rejects(conn) == 0
    assert segments(folder) == 0


# -- record faults: the one record is rejected, its batch loads -------------------------------

JOB_HEADER = b"type,timeLogged,rcpt,jobId\n"


def huge_job_id(seed: int = 5, size: int = 10_000) -> bytes:
    """A jobId too large for a btree entry even compressed (random letters and digits)."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size)).encode()


def with_jobs(run: int, n: int, bad: set[int], value: bytes) -> bytes:
    return b"".join(
        b"d,2026-01-15 14:%02d:%02d-0700,r%d-%d@x.com,%s\n"
        % (i // 60 % 60, i % 60, run, i, value if i in bad else b"job-%d" % (i % 3))
        for i in range(n)
    )


POISON = b"poison-job"


def refuse_poison(conn: Conn) -> None:
    """A rule of the database that one value breaks: PostgreSQL refuses that row (23514)."""
    conn.execute(
        "ALTER TABLE pmta.events ADD CONSTRAINT no_poison"
        " CHECK (job_id IS DISTINCT FROM 'poison-job')"
    )


def test_value_the_database_refuses_is_the_only_reject(cli_env: dict[str, str], conn: Conn) -> None:
    refuse_poison(conn)
    data = JOB_HEADER + with_jobs(1, 200, {37}, POISON)
    got = run_cli(["ingest"], dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="5"), input=data)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 199
    assert events(conn, "r1-37@%") == 0
    rows = conn.execute("SELECT stage, sqlstate, raw_line FROM pmta.rejects").fetchall()
    assert len(rows) == 1
    stage, sqlstate, raw = rows[0]
    assert stage == "database"
    assert sqlstate == "23514"  # check_violation: a rule of the database refuses the row
    assert "r1-37@x.com" in str(raw)
    batches = conn.execute(
        "SELECT sum(records), sum(inserted), sum(rejected), sum(rejected_by_database)"
        " FROM pmta.ingest_batches"
    ).fetchone()
    assert batches == (200, 199, 1, 1)


def test_a_key_too_long_for_an_index_loads_with_a_bounded_rollup_key(
    cli_env: dict[str, str], conn: Conn
) -> None:
    job = huge_job_id()  # 10,000 random characters: once SQLSTATE 54000 for the whole batch
    data = JOB_HEADER + with_jobs(1, 200, {37, 38}, job)
    got = run_cli(["ingest"], dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="5"), input=data)
    assert got.returncode == 0, got.stderr.decode()
    assert events(conn) == 200
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    assert conn.execute("SELECT job_id FROM pmta.events WHERE rcpt = 'r1-37@x.com'").fetchone() == (
        job.decode(),
    )  # the event keeps the whole value
    bounded = job[:255].decode() + "…" + hashlib.md5(job).hexdigest()[:8]
    assert conn.execute(
        "SELECT job_id, sum(n) FROM pmta.rollup_daily WHERE length(job_id) > 10 GROUP BY 1"
    ).fetchall() == [(bounded, 2)]


# -- the closing summary line ----------------------------------------------------------------


def summary_stream(run: int) -> bytes:
    """13 records: 10 new, 2 repeated, 1 the parser rejects; and a header line repeated."""
    records = numbered(run, 10)
    lines = records.splitlines(keepends=True)
    return (
        HEADER + b"".join(lines[:6]) + HEADER + b"".join(lines[6:]) + lines[2] + lines[7]
        + b"d,not a time,r%d-bad@x.com\n" % run
    )  # fmt: skip


def has_summary(text: str, expected: str) -> bool:
    pattern = re.compile(r"(^|[^\d])" + re.escape(expected) + r"\s*$")
    return any(pattern.search(line) for line in text.splitlines())


def test_summary_line_of_ingest_import_and_replay(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    got = run_cli(["ingest"], cli_env, input=summary_stream(1))
    assert got.returncode == 0, got.stderr.decode()
    expected = "13 read = 10 inserted + 2 duplicates + 1 rejected + 0 left in the spool"
    assert has_summary(got.stderr.decode(), expected), got.stderr.decode()
    assert events(conn) == 10 and rejects(conn) == 1

    acct = tmp_path / "acct.csv"
    acct.write_bytes(summary_stream(2))
    got = run_cli(["import", str(acct)], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    expected = "13 read = 10 inserted + 2 duplicates + 1 rejected"
    assert has_summary(got.stdout.decode(), expected), got.stdout.decode()
    assert "left in the spool" not in got.stdout.decode()

    down = dict(cli_env, PMTA_PIPE_DSN=CLOSED, PMTA_PIPE_DRAIN_TIMEOUT="0")
    got = run_cli(["ingest"], down, input=summary_stream(3))
    assert got.returncode == 75, got.stderr.decode()
    expected = "13 read = 0 inserted + 0 duplicates + 0 rejected + 13 left in the spool"
    assert has_summary(got.stderr.decode(), expected), got.stderr.decode()
    got = run_cli(["replay"], cli_env)
    assert got.returncode == 0, got.stderr.decode()
    expected = "13 read = 10 inserted + 2 duplicates + 1 rejected + 0 left in the spool"
    assert has_summary(got.stdout.decode(), expected), got.stdout.decode()
    assert events(conn) == 30 and rejects(conn) == 3


def test_a_schema_newer_than_this_pmta_pipe_holds_the_records(
    cli_env: dict[str, str], conn: Conn
) -> None:
    conn.execute("INSERT INTO pmta.schema_migrations VALUES (99, 'from_the_future', 'x')")
    got = run_cli(
        ["ingest"], dict(cli_env, PMTA_PIPE_DRAIN_TIMEOUT="2"), input=HEADER + numbered(7, 50)
    )
    assert got.returncode == 75, got.stderr.decode()
    err = got.stderr.decode()
    assert "newer than this pmta-pipe" in err and "upgrade pmta-pipe" in err
    assert "50 records" in err and "left in the spool" in err
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 0
    assert count(conn, "SELECT count(*) FROM pmta.events") == 0
