"""``deploy/grafana``: the dashboard is valid, and every query it holds runs as a reader.

The dashboard's SQL is taken from the JSON (every target's ``rawSql`` and every query
variable), Grafana's macros and template variables are expanded the way Grafana's
PostgreSQL data source expands them, and each query runs against a database loaded
by ``pmta-pipe ingest``, as a login of ``pmta_reader`` (``deploy/roles.sql``): a query
that touched a relation the reader may not read would fail here. Queries run with
every variable on "All" and with a chosen provider and source.

Expansion rules (Grafana's SQL data sources):

* ``$__timeFilter(col)`` -> ``col BETWEEN '<from>' AND '<to>'`` (RFC 3339, UTC);
  ``$__timeFrom()`` / ``$__timeTo()`` -> the quoted bounds.
* ``$__timeGroup(col, 1h)`` -> ``floor(extract(epoch from col)/3600)*3600``;
  ``$__timeGroupAlias`` adds ``AS "time"``.
* ``$__interval`` -> the panel's minimum interval (``interval``), else ``1h``.
* ``${var}`` / ``$var`` / ``[[var]]``: a selection -> its values quoted as SQL literals
  and joined with commas; "All" -> the variable's custom ``allValue``, inserted as is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, run_cli
from tests.helpers import clean_env, stream, type_counts
from tests.test_roles import RolesDb, roles_db

__all__ = ["roles_db"]  # the fixture, shared with tests/test_roles.py

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "pmta-pipe-dashboard.json"
DS_UID = "${datasource}"
FROM = datetime(2026, 1, 1, tzinfo=timezone.utc)
TO = datetime(2026, 1, 3, tzinfo=timezone.utc)
ALL = None  # a variable set to "All"

#: relations of schema pmta that pmta_reader must never be given (personal data)
FORBIDDEN = re.compile(r'\bpmta\s*\.\s*"?(events|rejects)\b', re.IGNORECASE)
#: the panels the dashboard must keep (title -> format)
REQUIRED_PANELS = {
    "Delivery and bounce rates": "time_series",
    "Delivery rate by provider": "time_series",
    "Delivery by provider": "table",
    "Deferral patterns": "table",
    "Bounce and deferral rates per IP": "table",
    "Open alerts": "table",
    "Complaints": "time_series",
    "Time to deliver": "time_series",
    "Ingest health": "table",
}

Dashboard = dict[str, Any]


def load_dashboard() -> Dashboard:
    data: Dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def query_variables(dash: Dashboard) -> list[dict[str, Any]]:
    return [v for v in dash["templating"]["list"] if v["type"] == "query"]


# --- Grafana's expansion ------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(text: str) -> int:
    m = re.fullmatch(r"\s*'?(\d+)([smhd])'?\s*", text)
    assert m, f"unsupported interval {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(
    raw: str,
    variables: dict[str, dict[str, Any]],
    selection: dict[str, list[str] | None],
    interval: str = "1h",
) -> str:
    """``raw`` as Grafana's PostgreSQL data source sends it for [FROM, TO]."""

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.startswith("__"):
            return m.group(0)  # a macro or a global variable, handled below
        assert name in variables, f"undefined variable ${name}"
        chosen = selection.get(name, ALL)
        if chosen is ALL:
            all_value = variables[name].get("allValue")
            assert all_value, f"${name} needs a custom allValue"
            return str(all_value)
        return ",".join(quote_literal(v) for v in chosen)

    sql = raw.replace("$__interval_ms", str(interval_seconds(interval) * 1000))
    sql = re.sub(r"\$__interval\b", interval, sql)
    sql = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", variable, sql)

    start, end = (quote_literal(t.strftime("%Y-%m-%dT%H:%M:%SZ")) for t in (FROM, TO))
    sql = re.sub(r"\$__timeFilter\(\s*([^)]+?)\s*\)", rf"\1 BETWEEN {start} AND {end}", sql)
    sql = sql.replace("$__timeFrom()", start).replace("$__timeTo()", end)

    def time_group(m: re.Match[str]) -> str:
        seconds = interval_seconds(m.group(3))
        out = f"floor(extract(epoch from {m.group(2)})/{seconds})*{seconds}"
        return out + (' AS "time"' if m.group(1) else "")

    sql = re.sub(r"\$__timeGroup(Alias)?\(\s*([^,]+?)\s*,\s*([^,)]+?)\s*\)", time_group, sql)
    assert "$" not in sql, f"unexpanded macro or variable in:\n{sql}"
    return sql


def test_expand_follows_grafana() -> None:
    variables = {"p": {"allValue": "'__all'"}}
    raw = (
        "SELECT $__timeGroupAlias(time, $__interval) FROM t WHERE $__timeFilter(time)"
        " AND p IN (${p}) AND q IN ($p) AND $__timeFrom() < $__timeTo()"
    )
    got = expand(raw, variables, {"p": ["Gmail", "O'Reilly"]}, "1d")
    assert got == (
        'SELECT floor(extract(epoch from time)/86400)*86400 AS "time" FROM t WHERE time BETWEEN'
        " '2026-01-01T00:00:00Z' AND '2026-01-03T00:00:00Z' AND p IN ('Gmail','O''Reilly')"
        " AND q IN ('Gmail','O''Reilly') AND '2026-01-01T00:00:00Z' < '2026-01-03T00:00:00Z'"
    )
    assert expand("p IN ([[p]])", variables, {"p": ALL}) == "p IN ('__all')"


# --- the JSON itself ----------------------------------------------------------------


def test_dashboard_is_provisioning_ready() -> None:
    dash = load_dashboard()
    assert "__inputs" not in dash and "__requires" not in dash
    assert dash["uid"] == "pmta-pipe-deliverability"
    assert dash["id"] is None
    assert 36 <= dash["schemaVersion"] <= 41
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds_vars] == [
        ("datasource", "grafana-postgresql-datasource")
    ]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert len(names) == len(set(names))
    for var in query_variables(dash):
        assert var["datasource"]["uid"] == DS_UID, var["name"]
        assert var["includeAll"] and var["multi"] and var["allValue"] == "'__all'", var["name"]
    assert {v["name"] for v in query_variables(dash)} == {"source", "provider"}


def test_every_panel_uses_the_datasource_variable() -> None:
    dash = load_dashboard()
    panels = list(iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"]: p for p in panels}
    assert len(titles) == len(panels), "panel titles must be unique"
    for title, fmt in REQUIRED_PANELS.items():
        assert title in titles, f"missing panel {title!r}"
        assert titles[title]["targets"][0]["format"] == fmt, title
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DS_UID, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS_UID, panel["title"]
            assert target["rawQuery"] is True and target["rawSql"].strip(), panel["title"]
            assert target["format"] in ("time_series", "table"), panel["title"]
    # no two panels overlap on the 24-column grid
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_no_query_reads_personal_data() -> None:
    dash = load_dashboard()
    queries = [t["rawSql"] for p in iter_panels(dash["panels"]) for t in p.get("targets", [])]
    queries += [v["query"] for v in query_variables(dash)]
    for raw in queries:
        assert not FORBIDDEN.search(raw), raw
        # the raw diagnostic example may quote a recipient address: not on a dashboard
        assert not re.search(r"\bexample\b", raw), raw


def test_provisioning_examples_hold_no_password() -> None:
    datasource = (GRAFANA / "provisioning" / "datasource.yaml").read_text(encoding="utf-8")
    assert "type: grafana-postgresql-datasource" in datasource
    assert re.search(r"^\s*user: grafana\s*$", datasource, re.MULTILINE)
    passwords = re.findall(r"^\s*password:\s*(.*)$", datasource, re.MULTILINE)
    assert passwords == ["$PMTA_GRAFANA_DB_PASSWORD"]
    dashboards = (GRAFANA / "provisioning" / "dashboards.yaml").read_text(encoding="utf-8")
    assert "type: file" in dashboards and "path:" in dashboards


# --- every query on a real database, as a reader -------------------------------------


def ingest_as(conninfo: str, data: bytes, tmp_path: Path, source: str) -> None:
    env = clean_env()
    env.update(
        PMTA_PIPE_DSN=conninfo,
        PMTA_PIPE_SPOOL_DIR=str(tmp_path / f"spool-{source}"),
        PMTA_PIPE_SOURCE=source,
        PMTA_PIPE_BATCH_SECONDS="0.2",
    )
    proc = run_cli(["ingest"], env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()


def delivered_to(data: bytes, domain: str) -> int:
    """d records to ``domain`` in an accounting stream, counted without pmta-pipe."""
    rows = csv.DictReader(io.StringIO(data.decode()))
    return sum(1 for r in rows if r["type"] == "d" and r["rcpt"].endswith("@" + domain))


def run(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> tuple[list[str], list[Any]]:
    cur = conn.execute(sql.encode())
    assert cur.description is not None
    return [d.name for d in cur.description], cur.fetchall()


def test_every_query_runs_as_a_reader(roles_db: RolesDb, tmp_path: Path) -> None:
    mta1 = stream(2000, days=2, seed=21, start="2026-01-01")
    mta2 = stream(1000, days=2, seed=22, start="2026-01-01")
    # ingest writes pmta.ingest_batches (ingest health) as well as the events
    ingest_as(roles_db.owner, mta1, tmp_path, "mta1")
    ingest_as(roles_db.owner, mta2, tmp_path, "mta2")
    expected = type_counts(mta1) + type_counts(mta2)

    dash = load_dashboard()
    variables = {v["name"]: v for v in query_variables(dash)}
    panels = [p for p in iter_panels(dash["panels"]) if p.get("targets")]

    with psycopg.connect(roles_db.reader, autocommit=True) as conn:
        # the variables' own queries, as Grafana runs them on a time-range change
        values: dict[str, list[str]] = {}
        for name, var in variables.items():
            cols, rows = run(conn, expand(var["query"], variables, {}))
            assert len(cols) == 1, name
            values[name] = [str(r[0]) for r in rows]
        assert values["source"] == ["mta1", "mta2"]
        assert "Gmail" in values["provider"] and "Yahoo" in values["provider"]

        selections: list[dict[str, list[str] | None]] = [
            {"source": ALL, "provider": ALL},
            {"source": ["mta2"], "provider": ["Gmail"]},
            {"source": ["mta1", "mta2"], "provider": ["Gmail", "Yahoo"]},
        ]
        results: dict[tuple[str, int], tuple[list[str], list[Any]]] = {}
        for panel in panels:
            for target in panel["targets"]:
                for i, chosen in enumerate(selections):
                    sql = expand(target["rawSql"], variables, chosen, panel.get("interval", "1h"))
                    try:
                        cols, rows = run(conn, sql)
                    except psycopg.Error as exc:
                        pytest.fail(f"{panel['title']!r} failed as pmta_reader: {exc}\n{sql}")
                    results[panel["title"], i] = (cols, rows)
                    if target["format"] == "time_series":
                        assert cols[0] == "time", panel["title"]
                        assert rows, f"{panel['title']!r} returned no rows ({chosen})"
                        if "metric" in cols:
                            assert cols == ["time", "metric", "value"], panel["title"]

    def column(title: str, name: str, sel: int = 0) -> list[Any]:
        cols, rows = results[title, sel]
        return [r[cols.index(name)] for r in rows]

    # exact totals: the panels add up to what was ingested
    assert sum(column("Volume", "delivered")) == expected["d"]
    assert sum(column("Volume", "bounced")) == expected["b"]
    assert sum(column("Volume", "deferred")) == expected["t"]
    assert sum(column("Volume", "complaints")) == expected["f"]
    assert sum(column("Bounce and deferral rates per IP", "delivered")) == expected["d"]
    assert sum(column("Bounce and deferral rates per IP", "deferred")) == expected["t"]
    assert sum(column("Deferral patterns", "deferrals")) <= expected["t"]  # top 50 rows
    # the filters narrow: Gmail at mta2 only
    assert column("Delivery by provider", "provider", 1) == ["Gmail"]
    assert sum(column("Volume", "delivered", 1)) == delivered_to(mta2, "gmail.com")
    assert set(column("Delivery by provider", "provider", 2)) == {"Gmail", "Yahoo"}
    # ingest health: one row per host, every record of both streams committed
    assert column("Ingest health", "source") == ["mta1", "mta2"]
    assert column("Ingest health", "source", 1) == ["mta2"]
    assert sum(column("Ingest health", "records_last_hour")) == 3000
    assert sum(column("Ingest health", "rejected_last_hour")) == 0
    # every daily table has rows for the loaded window (alerts depend on thresholds)
    for title in ("Delivery by provider", "Deferral patterns", "Bounce and deferral rates per IP",
                  "Complaints by provider, job and IP"):  # fmt: skip
        assert results[title, 0][1], title
