"""What a BI client (Superset, Metabase, SQLAlchemy's inspector) meets, as a ``pmta_reader`` login.

* Time zone: every report view gives the same rows to a session in UTC,
  America/Los_Angeles and Asia/Kolkata (day and time are computed in UTC), and
  ``deploy/roles.sql`` pins ``timezone = 'UTC'`` on the BI logins for the tools' own
  day grains.
* ``dlv_source_ip_text``: the sending IP as text, beside the ``inet`` column.
* Schema ``pmta_report``: listed the way SQLAlchemy lists a schema, it holds the
  report views and nothing else, each readable by the reader.
* ``deploy/superset/pmta_report``: the dataset bundle parses as Superset's importer
  reads it, names columns the views have, and every metric's SQL runs as the reader
  with the right numbers (and ``AVG`` of a rate does not).
* ``ingest_health`` has ``time`` and ``day``; ``ip_alerts`` answers the reader.

Real PostgreSQL, each test its own database and group roles (``tests/test_roles.py``).
"""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from datetime import date, datetime, timezone
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import ROOT, run_cli
from tests.helpers import stream
from tests.test_reports import alert_rows, rec, to_bytes
from tests.test_roles import RolesDb, load_as, roles_db, run_roles_sql

__all__ = ["roles_db"]  # the fixture, shared with tests/test_roles.py

Conn = psycopg.Connection[tuple[Any, ...]]
BUNDLE = ROOT / "deploy" / "superset" / "pmta_report"
REPORT_SQL = ROOT / "sql" / "views" / "99_report_schema.sql"
ZONES = ("UTC", "America/Los_Angeles", "Asia/Kolkata")
#: views the time-zone test's traffic fills (every report view is compared)
NONEMPTY = {"daily_counts", "daily_traffic", "daily_bounces", "hourly_traffic", "daily_diag",
            "delivery_time_histogram", "delivery_summary", "delivery_by_domain",
            "delivery_by_provider", "bounce_categories", "job_summary", "vmta_summary",
            "complaints", "hourly", "hourly_by_ip", "hourly_by_provider", "deferral_codes",
            "diag_patterns", "deferral_patterns", "ip_summary", "ip_provider_summary",
            "ip_alerts", "time_to_deliver", "ingest_health"}  # fmt: skip
IP1, IP2, IP6 = "203.0.113.5", "198.51.100.7", "2001:db8::25"


def boundary_records() -> bytes:
    """Records near UTC midnight, where a Los Angeles or Kolkata day would differ."""
    diag = "smtp;421 4.7.0 [TS01] Messages from 198.51.100.7 temporarily deferred"
    rows = [
        # 20:00 UTC is 01:30 the next day in Kolkata
        rec("d", "2026-03-01 20:00:00+0000", "a@gmail.com", dlvSourceIp=IP1, vmta="v1"),
        rec("d", "2026-03-01 23:30:00+0000", "b@yahoo.com", dlvSourceIp=IP6, vmta="v6"),
        # 00:30 UTC is 16:30 the day before in Los Angeles
        rec(
            "b",
            "2026-03-02 00:30:00+0000",
            "c@gmail.com",
            dlvSourceIp=IP1,
            vmta="v1",
            bounceCat="bad-mailbox",
            dsnDiag="smtp;550 5.1.1 user unknown",
        ),
        rec(
            "t",
            "2026-03-02 07:59:00+0000",
            "d@hotmail.com",
            dlvSourceIp=IP2,
            vmta="v2",
            dsnStatus="4.7.0 (x)",
            dsnDiag=diag,
        ),
        rec("f", "2026-03-02 01:00:00+0000", "a@gmail.com", repSourceIp=IP1, jobId="j1"),
        rec("d", "2026-03-02 12:00:00+0000", "e@example.org"),  # no IP
    ]
    return to_bytes(rows)


def ingest_as(conninfo: str, data: bytes, env: dict[str, str], source: str) -> None:
    """``pmta-pipe ingest`` as that login: events, rollups and the ingest health rows."""
    proc = run_cli(["ingest"], {**env, "PMTA_PIPE_DSN": conninfo, "PMTA_PIPE_SOURCE": source},
                   input=data)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()


def report_view_names(conn: Conn) -> list[str]:
    """Every view of pmta but the rollup views (the analyst's): the report views."""
    got = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pmta'::regnamespace"
        " AND relkind = 'v' AND relname NOT LIKE 'rollup\\_%' ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in got]


def sqlalchemy_names(conn: Conn, schema: str, relkinds: tuple[str, ...]) -> list[str]:
    """What SQLAlchemy's PostgreSQL dialect lists for a schema (get_table_names: r, p;
    get_view_names: v; get_materialized_view_names: m; get_foreign_table_names: f)."""
    got = conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = ANY (%s) ORDER BY c.relname",
        (schema, list(relkinds)),
    ).fetchall()
    return [str(r[0]) for r in got]


def all_rows(conn: Conn, rel: sql.Composable) -> list[tuple[Any, ...]]:
    """Every row of a relation, ordered by every column."""
    cur = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(rel))
    width = len(cur.description or ())
    order = sql.SQL(", ").join(sql.Literal(i) for i in range(1, width + 1))
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(rel, order)).fetchall()


# --- time zone --------------------------------------------------------------------


def test_every_report_view_answers_the_same_in_any_time_zone(
    roles_db: RolesDb, cli_env: dict[str, str]
) -> None:
    ingest_as(roles_db.writer, boundary_records(), cli_env, "mta1")
    ingest_as(roles_db.writer, stream(400, days=2, seed=31, start="2026-03-01"), cli_env, "mta2")
    ingest_as(roles_db.writer, to_bytes(alert_rows()), cli_env, "mta3")
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        views = report_view_names(c)
    assert {"hourly", "hourly_by_ip", "hourly_by_provider", "hourly_traffic", "ingest_health",
            "delivery_summary", "ip_alerts", "time_to_deliver"} <= set(views)  # fmt: skip
    with psycopg.connect(roles_db.reader) as c:  # one transaction: one now() for all
        compared = 0
        for schema in ("pmta", "pmta_report"):
            for name in views:
                rel = sql.Identifier(schema, name)
                answers = []
                for zone in ZONES:
                    c.execute(sql.SQL("SET TIME ZONE {}").format(sql.Literal(zone)))
                    answers.append(all_rows(c, rel))
                assert answers[0] or name not in NONEMPTY, f"{schema}.{name} is empty"
                for zone, got in zip(ZONES[1:], answers[1:], strict=True):
                    assert got == answers[0], f"{schema}.{name} differs in {zone}"
                compared += 1
        assert compared == 2 * len(views)

        # the hazard the views avoid: the session's own day of a timestamptz
        hour = datetime(2026, 3, 2, 0, tzinfo=timezone.utc)  # the 00:30 UTC bounce
        c.execute("SET TIME ZONE 'America/Los_Angeles'")
        got = c.execute(
            "SELECT day, time::date, bounced FROM pmta_report.hourly WHERE time = %s", (hour,)
        ).fetchone()
        assert got == (date(2026, 3, 2), date(2026, 3, 1), 1)
        hour = datetime(2026, 3, 1, 20, tzinfo=timezone.utc)
        c.execute("SET TIME ZONE 'Asia/Kolkata'")
        got = c.execute(
            "SELECT day, time::date, dlv_source_ip_text, delivered FROM pmta_report.hourly_by_ip"
            " WHERE time = %s AND dlv_source_ip_text = %s",
            (hour, IP1),
        ).fetchone()
        assert got == (date(2026, 3, 1), date(2026, 3, 2), IP1, 1)
        got = c.execute(
            "SELECT day, delivered, bounced FROM pmta_report.ip_summary"
            " WHERE dlv_source_ip_text = %s ORDER BY day",
            (IP1,),
        ).fetchall()
        assert got == [(date(2026, 3, 1), 1, 0), (date(2026, 3, 2), 0, 1)]
        c.rollback()


def test_roles_sql_sets_utc_for_every_bi_login(roles_db: RolesDb, admin_dsn: str) -> None:
    u = uuid.uuid4().hex[:8]
    superset, analyst, ingest = f"pmta_t_superset_{u}", f"pmta_t_alice_{u}", f"pmta_t_ing_{u}"
    made = [(superset, "reader"), (analyst, "analyst"), (ingest, "writer")]
    try:
        with psycopg.connect(roles_db.admin, autocommit=True) as c:
            for login, group in made:
                c.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(login), sql.Identifier(roles_db.groups[group])))  # fmt: skip
                # a zone of the login's own, everywhere: this database's setting wins
                c.execute(sql.SQL("ALTER ROLE {} SET timezone = 'America/Los_Angeles'").format(
                    sql.Identifier(login)))  # fmt: skip
            # PostgreSQL 16 and later: a CREATEROLE owner changes a login's settings only
            # with ADMIN OPTION on it, which the deployment gives (deploy/roles.sql)
            if c.info.server_version >= 160000:
                owner = conninfo_to_dict(roles_db.owner)["user"]
                logins = [
                    r[0] for r in c.execute(
                        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname LIKE"
                        " 'pmta\\_t\\_%%' AND rolname <> %s", (owner,)
                    )
                ]  # fmt: skip
                for login in logins:
                    c.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                        sql.Identifier(login), sql.Identifier(owner)))  # fmt: skip
        for attempt in (1, 2):
            proc = run_roles_sql(roles_db.owner, roles_db.groups)
            assert proc.returncode == 0, f"run {attempt}: {proc.stderr}"
            assert "WARNING" not in proc.stderr
        zones = {}
        for login, _ in made:
            with psycopg.connect(make_conninfo(roles_db.admin, user=login), autocommit=True) as c:
                zones[login] = c.execute("SHOW timezone").fetchone()
        assert zones == {superset: ("UTC",), analyst: ("UTC",),
                         ingest: ("America/Los_Angeles",)}  # fmt: skip
        with psycopg.connect(roles_db.admin, autocommit=True) as c:
            got = c.execute(
                "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
                " JOIN pg_roles r ON r.oid = s.setrole"
                " JOIN pg_database d ON d.oid = s.setdatabase AND d.datname = current_database()"
                " ORDER BY 1"
            ).fetchall()
        # the fixture's reader and analyst logins too; never the writer's
        bi_logins = [
            analyst,
            superset,
            *(conninfo_to_dict(x)["user"] for x in (roles_db.reader, roles_db.analyst)),
        ]
        assert got == sorted((login, ["TimeZone=UTC"]) for login in bi_logins)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            for login, _ in made:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


def test_ingest_health_has_time_and_day(cli_env: dict[str, str], conn: Conn) -> None:
    got = run_cli(["ingest"], cli_env, input=stream(500, days=1, seed=9))
    assert got.returncode == 0, got.stderr.decode()
    with conn.transaction():
        answers = []
        for zone in ZONES:
            conn.execute(sql.SQL("SET LOCAL TIME ZONE {}").format(sql.Literal(zone)))
            answers.append(conn.execute(
                "SELECT source, time = now(), day = (now() AT TIME ZONE 'UTC')::date,"
                " time, day, records_last_hour FROM pmta.ingest_health"
            ).fetchall())  # fmt: skip
        now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    utc_day = now[0].astimezone(timezone.utc).date()
    assert answers[0] == [("test-host", True, True, now[0], utc_day, 500)]
    assert answers[1] == answers[0] and answers[2] == answers[0]
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'pmta.ingest_health'::regclass AND attnum > 0 ORDER BY attnum DESC"
        " LIMIT 2"
    ).fetchall()
    assert cols == [("day", "date"), ("time", "timestamp with time zone")]  # appended, last


# --- the IP as text -----------------------------------------------------------------


def test_every_view_with_the_ip_has_it_as_text(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, boundary_records())
    load_as(roles_db.writer, to_bytes(alert_rows()))
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        with_ip = c.execute(
            "SELECT n.nspname, c.relname,"
            " (SELECT format_type(t.atttypid, t.atttypmod) FROM pg_attribute t"
            "  WHERE t.attrelid = c.oid AND t.attname = 'dlv_source_ip_text')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'dlv_source_ip'"
            " WHERE n.nspname IN ('pmta', 'pmta_report') AND c.relkind = 'v'"
            "   AND c.relname NOT LIKE 'rollup\\_%' ORDER BY 1, 2"
        ).fetchall()
    names = {name for _, name, _ in with_ip}
    assert {"daily_counts", "daily_traffic", "daily_bounces", "hourly_traffic", "daily_diag",
            "complaints", "hourly_by_ip", "ip_summary", "ip_provider_summary",
            "ip_alerts"} <= names  # fmt: skip
    assert [(s, n) for s, n, typ in with_ip if typ != "text"] == []
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        for schema, name, _ in with_ip:
            rel = sql.Identifier(schema, name)
            bad = c.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE dlv_source_ip_text IS DISTINCT FROM"
                " host(dlv_source_ip)").format(rel)).fetchone()  # fmt: skip
            assert bad == (0,), f"{schema}.{name}"
        # what Superset sends for "contains" on a text column
        got = c.execute(
            "SELECT day, dlv_source_ip_text, delivered, bounced FROM pmta_report.ip_summary"
            " WHERE dlv_source_ip_text ILIKE %s ORDER BY 1, 2",
            ("%0.113.%",),
        ).fetchall()
        assert got == [(date(2026, 3, 1), IP1, 1, 0), (date(2026, 3, 2), IP1, 0, 1)]
        got = c.execute(
            "SELECT dlv_source_ip_text, delivered FROM pmta_report.ip_summary"
            " WHERE dlv_source_ip_text LIKE '2001:db8:%'"
        ).fetchall()
        assert got == [(IP6, 1)]
        got = c.execute(
            "SELECT count(*) FROM pmta_report.daily_counts"
            " WHERE dlv_source_ip IS NULL AND dlv_source_ip_text IS NULL"
        ).fetchone()
        assert got is not None and got[0] > 0  # the record without an IP


# --- the reader's own schema --------------------------------------------------------


def test_reader_lists_only_report_views_in_pmta_report(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, boundary_records())
    with psycopg.connect(roles_db.admin, autocommit=True) as c:
        expected = report_view_names(c)
        docs = c.execute(
            "SELECT n.nspname, c.relname, a.attname, obj_description(c.oid, 'pg_class'),"
            " col_description(c.oid, a.attnum)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname IN ('pmta', 'pmta_report') AND c.relkind = 'v'"
        ).fetchall()
    assert len(expected) >= 20
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        # the stumble: schema pmta lists the raw tables beside the views
        assert "events" in sqlalchemy_names(c, "pmta", ("r", "p"))
        # pmta_report: views only, all of them the report views, each readable
        assert sqlalchemy_names(c, "pmta_report", ("r", "p")) == []
        assert sqlalchemy_names(c, "pmta_report", ("m",)) == []
        assert sqlalchemy_names(c, "pmta_report", ("f",)) == []
        assert sqlalchemy_names(c, "pmta_report", ("S", "i", "c", "t")) == []
        assert sqlalchemy_names(c, "pmta_report", ("v",)) == expected
        info = c.execute(
            "SELECT table_name, table_type FROM information_schema.tables"
            " WHERE table_schema = 'pmta_report' ORDER BY 1"
        ).fetchall()
        assert info == [(name, "VIEW") for name in expected]
        for name in expected:
            c.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("pmta_report", name))).fetchone()  # fmt: skip
        for statement in ("CREATE VIEW pmta_report.zz_mine AS SELECT 1",
                          "CREATE TABLE pmta_report.zz_mine (x int)",
                          "DROP VIEW pmta_report.delivery_summary"):  # fmt: skip
            with pytest.raises(pg_errors.InsufficientPrivilege):
                c.execute(statement)
    # the same comments as the views of pmta, on every view and column
    by_view = {(s, v, a): (vd, cd) for s, v, a, vd, cd in docs}
    for name in expected:
        cols = [a for s, v, a in by_view if s == "pmta_report" and v == name]
        assert cols, name
        for col in cols:
            view_doc, col_doc = by_view["pmta_report", name, col]
            assert view_doc and col_doc, f"pmta_report.{name}.{col} has no comment"
            assert view_doc == by_view["pmta", name, col][0]
            assert col_doc == by_view["pmta", name, col][1], f"{name}.{col}"


def test_a_withheld_view_stays_withheld_in_pmta_report(roles_db: RolesDb) -> None:
    """A view of pmta that shows an address gets a twin in pmta_report at the next
    migrate; roles.sql withholds both, and says so."""
    with psycopg.connect(roles_db.owner, autocommit=True) as c:
        c.execute("CREATE VIEW pmta.zz_recipients AS SELECT time_logged, rcpt FROM pmta.events")
        c.execute(REPORT_SQL.read_bytes())  # what migrate re-applies
        assert c.execute("SELECT to_regclass('pmta_report.zz_recipients')").fetchone() != (None,)
    proc = run_roles_sql(roles_db.owner, roles_db.groups)
    assert proc.returncode == 0, proc.stderr
    withheld = sorted(re.findall(r"WARNING:  view (\S+) is not granted", proc.stderr))
    assert withheld == ["pmta.zz_recipients", "pmta_report.zz_recipients"]
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        for rel in ("pmta.zz_recipients", "pmta_report.zz_recipients"):
            with pytest.raises(pg_errors.InsufficientPrivilege):
                c.execute(f"SELECT rcpt FROM {rel}")
    with psycopg.connect(roles_db.analyst, autocommit=True) as c:
        c.execute("SELECT rcpt FROM pmta_report.zz_recipients").fetchall()
    # dropped from pmta: its twin goes at the next run
    with psycopg.connect(roles_db.owner, autocommit=True) as c:
        c.execute("DROP VIEW pmta.zz_recipients CASCADE")
        c.execute(REPORT_SQL.read_bytes())
        assert c.execute("SELECT to_regclass('pmta_report.zz_recipients')").fetchone() == (None,)


def test_ip_alerts_answer_a_reader(roles_db: RolesDb) -> None:
    """ip_stopped_delivering probes the daily rollup, which the reader may not read."""
    load_as(roles_db.writer, to_bytes(alert_rows()))
    expected = [
        (date(2026, 3, 2), "10.9.9.8", None, "ip_bounce_rate", 0.03, 0.02, 100, "10.9.9.8"),
        (date(2026, 3, 2), "10.9.9.9", "Gmail", "ip_provider_deferral_rate", 1.0, 0.1, 150,
         "10.9.9.9"),
        (date(2026, 3, 2), "10.9.9.9", None, "ip_stopped_delivering", 0.0, 0.0, 150, "10.9.9.9"),
    ]  # fmt: skip
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        for rel in ("pmta.ip_alerts", "pmta_report.ip_alerts"):
            got = c.execute(
                "SELECT day, host(dlv_source_ip), provider, alert, round(observed::numeric, 6)"
                "::float8, threshold, attempts, dlv_source_ip_text"
                f" FROM {rel} ORDER BY 2, 3 NULLS LAST, 4"
            ).fetchall()
            assert got == expected, rel
        with pytest.raises(pg_errors.InsufficientPrivilege):
            c.execute("SELECT count(*) FROM pmta.rollup_daily")


def test_every_pmta_report_view_and_column_has_a_comment(conn: Conn) -> None:
    missing = conn.execute(
        """SELECT c.relname || coalesce('.' || a.attname, '')
           FROM pg_class c
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                AND col_description(c.oid, a.attnum) IS NULL
           WHERE c.relnamespace = 'pmta_report'::regnamespace AND c.relkind = 'v'
             AND (a.attname IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NULL)"""
    ).fetchall()
    assert missing == []
    assert conn.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'pmta_report'::regnamespace"
    ).fetchone() == (len(report_view_names(conn)),)


# --- the Superset bundle ------------------------------------------------------------


def bundle_files() -> dict[str, Any]:
    """Every file of the bundle as Superset reads it: YAML (these are JSON, which is
    YAML), keyed by the path below the bundle's root folder."""
    found = {}
    for path in sorted(BUNDLE.rglob("*")):
        if path.is_file():
            assert path.suffix == ".yaml", path
            found[path.relative_to(BUNDLE).as_posix()] = json.loads(path.read_text("utf-8"))
    return found


def test_superset_bundle_is_what_the_importer_takes() -> None:
    files = bundle_files()
    assert files["metadata.yaml"]["version"] == "1.0.0"
    assert files["metadata.yaml"]["type"] == "SqlaTable"
    datetime.fromisoformat(files["metadata.yaml"]["timestamp"])
    databases = {k: v for k, v in files.items() if k.startswith("databases/")}
    datasets = {k: v for k, v in files.items() if k.startswith("datasets/")}
    assert len(databases) == 1 and len(datasets) >= 10
    (database,) = databases.values()
    assert {"database_name", "sqlalchemy_uri", "uuid", "version"} <= set(database)
    # no password in the bundle: Superset asks for it at import (masked, as it exports)
    assert ":XXXXXXXXXX@" in database["sqlalchemy_uri"] and "password" not in database
    assert database["extra"]["engine_params"]["connect_args"]["options"] == "-c timezone=UTC"
    uuids = [str(uuid.UUID(database["uuid"]))]
    for name, ds in datasets.items():
        assert name == f"datasets/pmta_pipe_reports/{ds['table_name']}.yaml"
        assert ds["schema"] == "pmta_report" and ds["sql"] is None, name
        assert ds["database_uuid"] == database["uuid"] and ds["version"] == "1.0.0"
        uuids.append(str(uuid.UUID(ds["uuid"])))
        dttm = [c["column_name"] for c in ds["columns"] if c["is_dttm"]]
        assert ds["main_dttm_col"] in dttm, name
        assert all(m["expression"] and m["metric_name"] for m in ds["metrics"]), name
        assert not [m for m in ds["metrics"] if "AVG" in m["expression"].upper()], name
        assert not [m for m in ds["metrics"] if "COUNT" in m["expression"].upper()], name
    assert len(set(uuids)) == len(uuids)
    # zipped as the docs say (python3 -m zipfile -c …): Superset drops the root folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(BUNDLE.rglob("*.yaml")):
            z.write(path, path.relative_to(BUNDLE.parent).as_posix())
    with zipfile.ZipFile(buf) as z:
        inside = sorted(n.split("/", 1)[1] for n in z.namelist())
    assert inside == sorted(files)


def test_superset_columns_and_metrics_run_as_a_reader(roles_db: RolesDb) -> None:
    load_as(roles_db.writer, boundary_records())
    load_as(roles_db.writer, to_bytes(alert_rows()))
    datasets = [v for k, v in bundle_files().items() if k.startswith("datasets/")]
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        for ds in datasets:
            rel = sql.Identifier(ds["schema"], ds["table_name"])
            types = dict(c.execute(
                "SELECT attname, upper(format_type(atttypid, atttypmod)) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (f"{ds['schema']}.{ds['table_name']}",)).fetchall())  # fmt: skip
            for col in ds["columns"]:
                assert types.get(col["column_name"]) == col["type"], (ds["table_name"], col)
            # the metrics as Superset sends them: over a time grain, and in total
            dttm = sql.Identifier(ds["main_dttm_col"])
            for m in ds["metrics"]:
                expr = sql.SQL(m["expression"])  # the bundle's text, as Superset sends it
                label = sql.Identifier(m["metric_name"])
                try:
                    c.execute(sql.SQL("SELECT {} AS {} FROM {}").format(expr, label, rel))
                    got = c.execute(sql.SQL(
                        "SELECT date_trunc('day', {d}) AS {d}, {e} AS {l} FROM {r}"
                        " GROUP BY date_trunc('day', {d}) ORDER BY 2 DESC LIMIT 10000").format(
                        d=dttm, e=expr, l=label, r=rel)).fetchall()  # fmt: skip
                except psycopg.Error as exc:
                    pytest.fail(f"{ds['table_name']}.{m['metric_name']}: {exc}")
                assert got, (ds["table_name"], m["metric_name"])
        # numbers: the metrics of ip_summary on the alert traffic of 2026-03-02
        ip = next(ds for ds in datasets if ds["table_name"] == "ip_summary")
        metrics = {m["metric_name"]: m["expression"] for m in ip["metrics"]}
        got = c.execute(sql.SQL(
            "SELECT {}, {}, {}, {} FROM pmta_report.ip_summary WHERE day = '2026-03-02'"
            " AND dlv_source_ip_text LIKE '10.9.9.%'").format(
            *(sql.SQL(metrics[k]) for k in ("sum_attempts", "sum_bounced", "bounce_rate",
                                            "deferral_rate")))).fetchone()  # fmt: skip
        # 150 t at .9; 97 d + 3 b at .8; 98 d + 2 b at .7; 50 d + 10 b at .6
        assert got is not None
        assert [int(got[0]), int(got[1]), float(got[2]), float(got[3])] == [
            410, 15, 15 / 410, 150 / 410]  # fmt: skip


def test_avg_of_a_rate_is_wrong_and_the_metric_is_right(roles_db: RolesDb) -> None:
    """The worked example of docs/reports.md ("Superset")."""

    def many(rtype: str, ip: str, k: int, **kw: str) -> list[list[str]]:
        return [rec(rtype, f"2026-03-01 09:{i // 60:02d}:{i % 60:02d}+0000",
                    f"{rtype}{i}@gmail.com", dlvSourceIp=ip, **kw) for i in range(k)]  # fmt: skip

    load_as(roles_db.writer, to_bytes([
        *many("d", "192.0.2.1", 990), *many("b", "192.0.2.1", 10, bounceCat="bad-mailbox"),
        *many("d", "192.0.2.2", 5), *many("b", "192.0.2.2", 5, bounceCat="bad-mailbox"),
    ]))  # fmt: skip
    ip = json.loads((BUNDLE / "datasets" / "pmta_pipe_reports" / "ip_summary.yaml").read_text())
    metric = next(m["expression"] for m in ip["metrics"] if m["metric_name"] == "bounce_rate")
    with psycopg.connect(roles_db.reader, autocommit=True) as c:
        per_ip = c.execute(
            "SELECT dlv_source_ip_text, attempts, bounced, bounce_rate"
            " FROM pmta_report.ip_summary ORDER BY 1"
        ).fetchall()
        assert per_ip == [("192.0.2.1", 1000, 10, 0.01), ("192.0.2.2", 10, 5, 0.5)]
        row = c.execute(sql.SQL(
            "SELECT AVG(bounce_rate), COUNT(*), {} FROM pmta_report.ip_summary").format(
            sql.SQL(metric))).fetchone()  # fmt: skip
    assert row is not None
    avg, rows, right = row
    assert (round(avg, 4), rows, round(float(right), 6)) == (0.255, 2, 0.014851)  # 15 / 1010
