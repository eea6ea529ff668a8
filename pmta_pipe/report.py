"""Terminal reports from the SQL views (``pmta-pipe report KIND``).

Each report kind is a fixed ``Report``: the fact view it reads (``pmta.daily_counts``,
``pmta.daily_diag``, ``pmta.delivery_time_histogram``, ``pmta.ip_alerts`` or
``pmta.blocklist_hits``: all answered from the rollups), the columns it groups by, the
measures it computes (the same ``sum``/``pmta.rate`` definitions as the views in
``sql/views``), and the filters that make sense for it. A filter a report cannot
honour (its view has no such dimension) is a one-line error naming those it can.

The time window is whole UTC days: ``--since``/``--until`` (ISO timestamp, date, or
an age such as ``24h``, ``7d``) select the days whose span overlaps
``[since, until)``; the default is the last 24 hours, i.e. yesterday and today.

SQL is built only from the fixed strings below; every value is a bound parameter.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg

from pmta_pipe import db
from pmta_pipe.config import Settings
from pmta_pipe.errors import ConfigError, DatabaseUnavailable, PmtaPipeError, first_line
from pmta_pipe.table import format_table

#: report filter (argparse dest) -> (flag, column of the fact views)
FILTERS: dict[str, tuple[str, str]] = {
    "filter_source": ("--source", "source"),
    "job": ("--job", "job_id"),
    "vmta": ("--vmta", "vmta"),
    "domain": ("--domain", "rcpt_domain"),
}
ALL_FILTERS = frozenset(FILTERS)

_ATTEMPTS = "sum(delivered) + sum(bounced) + sum(deferred)"
_COUNTS = {
    name: f"sum({name})::bigint"
    for name in ("received", "delivered", "bounced", "expired", "deferred", "complaints")
}
_RATES = {
    "delivery_rate": "pmta.rate(sum(delivered), sum(delivered) + sum(bounced))",
    "bounce_rate_db": "pmta.rate(sum(bounced), sum(delivered) + sum(bounced))",
    "bounce_rate": f"pmta.rate(sum(bounced), {_ATTEMPTS})",
    "deferral_rate": f"pmta.rate(sum(deferred), {_ATTEMPTS})",
    "complaint_rate": "pmta.rate(sum(complaints), sum(delivered))",
}


def _m(*names: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name in names:
        if name == "attempts":
            out.append((name, f"({_ATTEMPTS})::bigint"))
        elif name == "bounce_rate_db":
            out.append(("bounce_rate", _RATES[name]))
        else:
            out.append((name, _COUNTS.get(name) or _RATES[name]))
    return tuple(out)


@dataclass(frozen=True)
class Report:
    """One report kind: where it reads, what it groups by and computes, what it can filter."""

    relation: str  # FROM clause; {where} marks where the filters go
    keys: tuple[str, ...]
    measures: tuple[tuple[str, str], ...]
    order: str
    filters: frozenset[str] = ALL_FILTERS
    having: str = ""
    text_measures: frozenset[str] = field(default_factory=frozenset)  # left-aligned
    grouped: bool = True
    numeric_keys: frozenset[str] = field(default_factory=frozenset)
    time_column: str = "day"  # or "hour": a view by UTC hour, for the same whole days


_TRAFFIC = "pmta.daily_counts WHERE {where}"
_DEFERRALS = "pmta.daily_diag WHERE record_type = 't' AND {where}"
_DIAG_FILTERS = frozenset({"filter_source", "vmta", "domain"})
_QUANTILES = tuple(
    (f"p{int(p * 100)}_seconds",
     f"pmta.histogram_quantile(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin), {p})")
    for p in (0.5, 0.9, 0.99)
)  # fmt: skip

REPORTS: dict[str, Report] = {
    "summary": Report(
        _TRAFFIC, ("day",),
        _m("received", "delivered", "bounced", "expired", "deferred", "complaints",
           "delivery_rate", "bounce_rate_db", "complaint_rate"),
        "day",
    ),
    "domains": Report(
        _TRAFFIC, ("rcpt_domain", "provider"),
        _m("delivered", "bounced", "deferred", "delivery_rate"),
        f"{_ATTEMPTS} DESC, rcpt_domain", having=f"{_ATTEMPTS} > 0",
    ),
    "providers": Report(
        _TRAFFIC, ("provider",),
        _m("delivered", "bounced", "deferred", "delivery_rate"),
        f"{_ATTEMPTS} DESC, provider", having=f"{_ATTEMPTS} > 0",
    ),
    "ips": Report(
        _TRAFFIC, ("dlv_source_ip",),
        _m("delivered", "bounced", "deferred", "attempts", "bounce_rate", "deferral_rate"),
        f"{_ATTEMPTS} DESC, dlv_source_ip", having=f"{_ATTEMPTS} > 0",
    ),
    "jobs": Report(
        _TRAFFIC, ("job_id",),
        _m("received", "delivered", "bounced", "expired", "deferred", "complaints",
           "delivery_rate", "bounce_rate_db", "complaint_rate"),
        f"{_ATTEMPTS} DESC, job_id",
    ),
    "vmtas": Report(
        _TRAFFIC, ("vmta", "vmta_pool"),
        _m("delivered", "bounced", "expired", "deferred", "attempts", "delivery_rate",
           "bounce_rate", "deferral_rate"),
        f"{_ATTEMPTS} DESC, vmta, vmta_pool", having=f"{_ATTEMPTS} > 0",
    ),
    "complaints": Report(
        _TRAFFIC, ("provider", "job_id", "dlv_source_ip"),
        _m("complaints", "delivered", "complaint_rate"),
        "sum(complaints) DESC, provider, job_id, dlv_source_ip",
        having="sum(complaints) > 0",
    ),
    "bounces": Report(
        "pmta.daily_counts WHERE record_type IN ('b', 'rb') AND {where}",
        ("provider", "bounce_cat", "bounce_class"),
        (("n", "sum(bounced)::bigint"), ("remote_bounces", "sum(remote_bounces)::bigint")),
        "sum(bounced) + sum(remote_bounces) DESC, provider, bounce_cat",
    ),
    "deferrals": Report(
        _DEFERRALS, ("provider", "code"), (("n", "sum(n)::bigint"),),
        "sum(n) DESC, provider, code", filters=_DIAG_FILTERS,
    ),
    "patterns": Report(
        _DEFERRALS, ("provider", "pattern", "category"),
        (("n", "sum(n)::bigint"), ("example", "min(example)")),
        "sum(n) DESC, provider, pattern", filters=_DIAG_FILTERS,
    ),
    "blocklists": Report(
        "pmta.blocklist_hits WHERE {where}", ("dlv_source_ip", "provider", "blocklist"),
        (("n", "sum(n)::bigint"), ("deferred", "sum(deferred)::bigint"),
         ("bounced", "sum(bounced)::bigint"), ("queue_deferrals", "sum(queue_deferrals)::bigint"),
         ("remote_bounces", "sum(remote_bounces)::bigint"), ("first_day", "min(day)"),
         ("last_day", "max(day)"), ("lookup_url", "min(lookup_url)"),
         ("example", "min(example)")),
        "sum(n) DESC, blocklist, dlv_source_ip, provider", filters=frozenset(),
        text_measures=frozenset({"lookup_url", "example"}),
    ),
    "delivery-times": Report(
        "(SELECT provider, bin::integer AS bin, sum(n)::bigint AS n"
        " FROM pmta.delivery_time_histogram WHERE {where} GROUP BY provider, bin) h",
        ("provider",),
        (("deliveries", "sum(n)::bigint"), *_QUANTILES),
        "sum(n) DESC, provider", filters=frozenset({"filter_source", "domain"}),
    ),
    "warmup": Report(
        "pmta.warmup_progress WHERE {where}",
        ("day", "dlv_source_ip", "provider", "vmta_pool", "sending_day", "sent", "planned",
         "over_plan"),
        (), "day, dlv_source_ip, provider NULLS FIRST", filters=frozenset(), grouped=False,
        numeric_keys=frozenset({"sending_day", "sent", "planned"}),
    ),
    "alerts-hourly": Report(
        "pmta.ip_alerts_hourly WHERE {where}",
        ("hour", "dlv_source_ip", "provider", "alert", "observed", "threshold", "attempts"),
        (), "hour, dlv_source_ip, alert, provider", filters=frozenset(), grouped=False,
        numeric_keys=frozenset({"observed", "threshold", "attempts"}), time_column="hour",
    ),
    "alerts": Report(
        "pmta.ip_alerts WHERE {where}",
        ("day", "dlv_source_ip", "provider", "alert", "observed", "threshold", "attempts"),
        (), "day, dlv_source_ip, alert, provider", filters=frozenset(), grouped=False,
        numeric_keys=frozenset({"observed", "threshold", "attempts"}),
    ),
}  # fmt: skip

# -- time window -----------------------------------------------------------------------

_AGE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_OFFSET = re.compile(r"([+-]\d\d)(\d\d)$")


def parse_when(text: str, now: datetime, flag: str) -> datetime:
    """An age (``24h``, ``7d``: that long before ``now``), a date or an ISO timestamp, in UTC."""
    text = text.strip()
    m = _AGE.fullmatch(text)
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _AGE_UNITS[m.group(2).lower()])
    iso = _OFFSET.sub(r"\1:\2", text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a time",
            "use an ISO timestamp (2026-01-02T15:00:00+00:00), a date (2026-01-02) "
            "or an age (90m, 24h, 7d, 2w)",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def resolve_days(since: str | None, until: str | None, now: datetime) -> tuple[date, date]:
    """The first and last UTC day of the window ``[since, until)``."""
    end = parse_when(until, now, "--until") if until else now
    start = parse_when(since, now, "--since") if since else end - timedelta(hours=24)
    if start >= end:
        raise ConfigError(
            f"--since ({start.isoformat()}) is not before --until ({end.isoformat()})",
            "give a --since earlier than --until",
        )
    return start.date(), (end - timedelta(microseconds=1)).date()


# -- query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportQuery:
    """One ``pmta-pipe report``: which kind, which window, which filters, how many rows."""

    kind: str
    since: str | None = None  # an age (24h, 7d), a date or a timestamp; default 24h
    until: str | None = None
    top: int = 20
    filters: dict[str, str] = field(default_factory=dict)  # FILTERS key -> value

    def check(self) -> None:
        """Refuse what the report cannot honour, with a one-line error and a hint."""
        if self.kind not in REPORTS:
            raise ConfigError(f"no report {self.kind!r}", f"one of {', '.join(REPORTS)}")
        if self.top < 1:
            raise ConfigError("--top must be at least 1", "e.g. --top 20")
        check_filters(self.kind, self.filters)


@dataclass
class ReportData:
    """A report's columns and rows, ready to ``render``."""

    kind: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def check_filters(kind: str, filters: dict[str, str]) -> dict[str, str]:
    """The filters given for this report, refusing those its view cannot honour."""
    spec = REPORTS[kind]
    given = {name: value for name, value in filters.items() if value}
    for name in given:
        if name not in spec.filters:
            flag = FILTERS[name][0]
            can = ", ".join(FILTERS[f][0] for f in FILTERS if f in spec.filters)
            raise ConfigError(
                f"{flag} does not apply to the '{kind}' report (its view has no such column)",
                f"'{kind}' can be filtered by {can}" if can else f"'{kind}' takes no filters",
            )
    return given


def build_query(kind: str, filters: dict[str, str]) -> str:
    """The report's SQL; values are bound as %(name)s parameters."""
    spec = REPORTS[kind]
    where = ["day >= %(since)s", "day <= %(until)s"]
    if spec.time_column == "hour":
        where = ["hour >= (%(since)s::timestamp AT TIME ZONE 'UTC')",
                 "hour < ((%(until)s + 1)::timestamp AT TIME ZONE 'UTC')"]  # fmt: skip
    where += [f"{FILTERS[name][1]} = %({name})s" for name in FILTERS if name in filters]
    source = spec.relation.format(where=" AND ".join(where))
    select = [*spec.keys, *(f"{expr} AS {name}" for name, expr in spec.measures)]
    sql = f"SELECT {', '.join(select)} FROM {source}"
    if spec.grouped:
        sql += f" GROUP BY {', '.join(spec.keys)}"
        if spec.having:
            sql += f" HAVING {spec.having}"
    return sql + f" ORDER BY {spec.order} LIMIT %(top)s"


def fetch_report(
    conn: psycopg.Connection[Any],
    kind: str,
    days: tuple[date, date],
    filters: dict[str, str],
    top: int,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of a report."""
    params: dict[str, Any] = {"since": days[0], "until": days[1], "top": top, **filters}
    cur = conn.execute(build_query(kind, filters).encode(), params)
    columns = [d.name for d in cur.description or ()]
    return columns, cur.fetchall()


# -- output ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-ready value: dates and IPs as text, numbers as numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if column.endswith("_rate"):
            return f"{value * 100:.2f}%"
        if column.endswith("_seconds"):
            return f"{value:.1f}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    text = str(_plain(value))
    return text if len(text) <= 100 else text[:99] + "…"


def render(kind: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], fmt: str) -> str:
    """The report as text in ``fmt``: table, csv or json."""
    if fmt == "json":
        return (
            json.dumps([dict(zip(columns, map(_plain, r), strict=True)) for r in rows], indent=2)
            + "\n"
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_csv_cell(v) for v in r] for r in rows])
        return buf.getvalue()
    spec = REPORTS[kind]
    numeric = [
        (c not in spec.keys or c in spec.numeric_keys) and c not in spec.text_measures
        for c in columns
    ]
    text = format_table(
        columns, [[_cell(c, v) for c, v in zip(columns, r, strict=True)] for r in rows], numeric
    )
    return text if rows else text + "(no rows)\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a ``'``."""
    if value is None:
        return ""
    plain = _plain(value)
    if isinstance(plain, str) and plain.startswith(_FORMULA_START):
        try:
            float(plain)
        except ValueError:
            return "'" + plain
    return plain


def fetch(settings: Settings, query: ReportQuery, now: datetime | None = None) -> ReportData:
    """Run one report against the database ``settings`` name."""
    query.check()
    filters = check_filters(query.kind, query.filters)
    days = resolve_days(query.since, query.until, now or datetime.now(timezone.utc))
    target = db.resolve_target(settings)
    try:
        with db.connect(target.conninfo, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass('pmta.daily_traffic') IS NOT NULL")
            row = found.fetchone()
            if not row or not row[0]:
                raise PmtaPipeError(f"{target.description} has no pmta report views",
                                    "run 'pmta-pipe migrate' first")  # fmt: skip
            # measured at 10 million events (docs/performance.md): the daily views'
            # GROUP BY spills to disk with the default 4MB, and JIT costs more than it saves
            conn.execute("SET work_mem = '32MB'")
            conn.execute("SET jit = off")
            columns, rows = fetch_report(conn, query.kind, days, filters, query.top)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot query {target.description}: {first_line(exc)}",
            "check --dsn and that PostgreSQL is running",
        ) from exc
    return ReportData(query.kind, columns, rows)
