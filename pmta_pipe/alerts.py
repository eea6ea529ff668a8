"""``pmta-pipe alerts``: evaluate the alert views, keep their state, notify changes once.

One run:

1. takes a session advisory lock, so runs are serial: a second run at the same time
   waits, then sees the state the first one left (no alert is notified twice);
2. reads the alerts of the window ``[since, now]``: ``pmta.ip_alerts_hourly`` for the
   UTC hours it overlaps, ``pmta.ip_alerts`` (and ``pmta.blocklist_hits`` where that
   view exists) for the UTC days it overlaps; an alert is its name, IP, provider and
   detail (the block list), whatever the hour or day it was seen in;
3. in one transaction, updates ``pmta.alert_log``: an alert seen and not open opens
   an episode, one seen and open has its last sighting updated, one open and no
   longer seen is closed;
4. notifies every opening and every closing not notified yet, as one message, then
   marks them notified. A notification that fails leaves them unmarked: the next run
   posts them again (at least once, never twice after a success).

Without a notifier, the caller prints the changes (stdout is the channel: cron
mails it) and they count as notified. Nothing notified holds a password or a
recipient address: alert names, IPs, providers, block-list names and numbers only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from pmta_pipe.errors import PmtaPipeError
from pmta_pipe.notify import mask_addresses

log = logging.getLogger(__name__)

#: session advisory lock of the alert runs ('pmta' 'al')
LOCK_KEY = 0x706D7461_616C

_HOURLY = """
SELECT 'hour' AS grain, hour AS period, host(dlv_source_ip), provider, alert, NULL::text,
       observed, threshold, attempts
FROM pmta.ip_alerts_hourly
WHERE hour > %(since)s - interval '1 hour' AND hour <= %(now)s
"""
_DAILY = """
SELECT 'day', (day::timestamp AT TIME ZONE 'UTC'), host(dlv_source_ip), provider, alert, NULL::text,
       observed, threshold, attempts
FROM pmta.ip_alerts
WHERE day >= (%(since)s AT TIME ZONE 'UTC')::date AND day <= (%(now)s AT TIME ZONE 'UTC')::date
"""
_BLOCKLISTS = """
SELECT 'day', (day::timestamp AT TIME ZONE 'UTC'), host(dlv_source_ip), provider,
       'blocklist_hit', blocklist, sum(n)::double precision, NULL::double precision, NULL::bigint
FROM pmta.blocklist_hits
WHERE day >= (%(since)s AT TIME ZONE 'UTC')::date AND day <= (%(now)s AT TIME ZONE 'UTC')::date
GROUP BY day, dlv_source_ip, provider, blocklist
"""


@dataclass(frozen=True)
class Alert:
    """One alert as a run reports it: what it is, and its latest observation."""

    alert: str
    dlv_source_ip: str | None
    provider: str | None
    detail: str | None
    grain: str  # 'hour' or 'day'
    period: datetime  # start of the UTC hour or day of the latest observation
    observed: float | None
    threshold: float | None
    attempts: int | None
    opened: datetime | None = None
    closed: datetime | None = None

    @property
    def key(self) -> str:
        return "|".join(
            (self.alert, self.dlv_source_ip or "", self.provider or "", self.detail or "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "dlv_source_ip": self.dlv_source_ip,
            "provider": self.provider,
            "detail": self.detail,
            "grain": self.grain,
            "period": self.period.isoformat(),
            "observed": self.observed,
            "threshold": self.threshold,
            "attempts": self.attempts,
            "opened": self.opened.isoformat() if self.opened else None,
            "closed": self.closed.isoformat() if self.closed else None,
        }

    def describe(self) -> str:
        """One line: what, where, the numbers, when."""
        where = self.dlv_source_ip or "no IP"
        where += f" at {self.provider}" if self.provider else ""
        if self.detail:
            where += f" on {self.detail}"
        when = self.period.strftime("%Y-%m-%d %H:00" if self.grain == "hour" else "%Y-%m-%d")
        numbers = f"observed {_number(self.observed)}"
        if self.threshold is not None:
            numbers += f", threshold {_number(self.threshold)}"
        if self.attempts is not None:
            numbers += f", {self.attempts} attempts"
        return mask_addresses(f"{self.alert} {where}: {numbers} ({self.grain} {when} UTC)")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0")


@dataclass
class AlertsResult:
    """What a run saw and did."""

    since: datetime
    now: datetime
    open: list[Alert] = field(default_factory=list)  # open after the run
    opened: list[Alert] = field(default_factory=list)  # openings notified by this run
    closed: list[Alert] = field(default_factory=list)  # closings notified by this run
    notified: bool = False  # a notification was sent (or printed) by this run

    def message(self) -> str:
        """The notification text: one line per opening and closing."""
        lines = [f"OPEN {a.describe()}" for a in self.opened]
        lines += [f"CLOSED {a.describe()}" for a in self.closed]
        if lines:
            lines.append(f"pmta-pipe alerts: {len(self.open)} open")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "now": self.now.isoformat(),
            "open": [a.as_dict() for a in self.open],
            "opened": [a.as_dict() for a in self.opened],
            "closed": [a.as_dict() for a in self.closed],
            "notified": self.notified,
        }


def evaluate(conn: psycopg.Connection[Any], since: datetime, now: datetime) -> list[Alert]:
    """The alerts of the window, one per key, with its latest observation."""
    sql = _HOURLY + " UNION ALL " + _DAILY
    found = conn.execute("SELECT to_regclass('pmta.blocklist_hits') IS NOT NULL").fetchone()
    if found and found[0]:
        sql += " UNION ALL " + _BLOCKLISTS
    latest: dict[str, Alert] = {}
    rows = conn.execute(sql.encode(), {"since": since, "now": now}).fetchall()
    for grain, period, ip, provider, name, detail, observed, threshold, attempts in rows:
        a = Alert(str(name), ip, provider, detail, str(grain), period,
                  None if observed is None else float(observed),
                  None if threshold is None else float(threshold),
                  None if attempts is None else int(attempts))  # fmt: skip
        old = latest.get(a.key)
        if old is None or (a.period, a.observed or 0) > (old.period, old.observed or 0):
            latest[a.key] = a
    return sorted(latest.values(), key=lambda a: a.key)


_COLUMNS = (
    "alert, host(dlv_source_ip), provider, detail, grain, period, observed, threshold, attempts,"
    " opened, closed"
)


def _alert(row: tuple[Any, ...]) -> Alert:
    name, ip, provider, detail, grain, period, observed, threshold, attempts, opened, closed = row
    return Alert(name, ip, provider, detail, grain, period, observed, threshold, attempts,
                 opened, closed)  # fmt: skip


def _sync(conn: psycopg.Connection[Any], seen: list[Alert]) -> None:
    """Open, refresh and close the episodes of pmta.alert_log against what was seen."""
    with conn.transaction():
        open_keys = {
            str(k)
            for (k,) in conn.execute(
                "SELECT alert_key FROM pmta.alert_log WHERE closed IS NULL FOR UPDATE"
            ).fetchall()
        }
        for a in seen:
            values = {
                "key": a.key, "alert": a.alert, "ip": a.dlv_source_ip, "provider": a.provider,
                "detail": a.detail, "observed": a.observed, "threshold": a.threshold,
                "attempts": a.attempts, "period": a.period, "grain": a.grain,
            }  # fmt: skip
            if a.key in open_keys:
                conn.execute(
                    "UPDATE pmta.alert_log SET last_seen = now(), observed = %(observed)s,"
                    " threshold = %(threshold)s, attempts = %(attempts)s, period = %(period)s,"
                    " grain = %(grain)s"
                    " WHERE alert_key = %(key)s AND closed IS NULL",
                    values,
                )
            else:
                conn.execute(
                    "INSERT INTO pmta.alert_log (alert_key, alert, dlv_source_ip, provider,"
                    " detail, grain, opened, last_seen, observed, threshold, attempts, period)"
                    " VALUES (%(key)s, %(alert)s, %(ip)s, %(provider)s, %(detail)s, %(grain)s,"
                    " now(), now(), %(observed)s, %(threshold)s, %(attempts)s, %(period)s)",
                    values,
                )
        gone = sorted(open_keys - {a.key for a in seen})
        if gone:
            conn.execute(
                "UPDATE pmta.alert_log SET closed = now()"
                " WHERE closed IS NULL AND alert_key = ANY(%s)",
                (gone,),
            )


def run_alerts(
    conn: psycopg.Connection[Any],
    since: datetime,
    now: datetime,
    notifier: Callable[[str], None] | None = None,
) -> AlertsResult:
    """One run (``conn`` in autocommit): evaluate, update the state, notify the changes.

    ``notifier`` posts the message (``notify.post_webhook``); an exception from it leaves
    the changes to notify for the next run and propagates. Without one, the changes
    count as notified (the caller prints them)."""
    result = AlertsResult(since, now)
    found = conn.execute("SELECT to_regclass('pmta.alert_log') IS NOT NULL").fetchone()
    if not found or not found[0]:
        raise PmtaPipeError("the database has no pmta.alert_log (its schema is older)",
                            "run 'pmta-pipe migrate' first")  # fmt: skip
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        seen = evaluate(conn, since, now)
        _sync(conn, seen)
        pending = conn.execute(
            f"SELECT id, NOT notified_open, closed IS NOT NULL AND NOT notified_close, {_COLUMNS}"
            " FROM pmta.alert_log"
            " WHERE NOT notified_open OR (closed IS NOT NULL AND NOT notified_close)"
            " ORDER BY id"
        ).fetchall()
        ids = [int(r[0]) for r in pending]
        result.opened = [_alert(r[3:]) for r in pending if r[1]]
        result.closed = [_alert(r[3:]) for r in pending if r[2]]
        current = conn.execute(
            f"SELECT {_COLUMNS} FROM pmta.alert_log WHERE closed IS NULL ORDER BY alert_key"
        ).fetchall()
        result.open = [_alert(r) for r in current]
        if ids:
            if notifier is not None:
                notifier(result.message())
            with conn.transaction():
                conn.execute(
                    "UPDATE pmta.alert_log SET notified_open = true,"
                    " notified_close = notified_close OR closed IS NOT NULL WHERE id = ANY(%s)",
                    (ids,),
                )
            result.notified = True
        log.info("alerts: %d open, %d opened, %d closed", len(result.open),
                 len(result.opened), len(result.closed))  # fmt: skip
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return result


def window(since: str, now: datetime) -> datetime:
    """The start of the window: ``--since`` in the forms of ``report --since``."""
    from pmta_pipe.report import parse_when

    start = parse_when(since, now, "--since")
    if start > now:
        from pmta_pipe.errors import ConfigError

        raise ConfigError(f"--since ({start.isoformat()}) is in the future", "e.g. --since 2h")
    return start


def format_text(result: AlertsResult, *, printed: bool) -> str:
    """The run as text: the changes (when stdout is their channel), then the open alerts."""
    lines: list[str] = []
    if printed:
        lines += [f"OPEN {a.describe()}" for a in result.opened]
        lines += [f"CLOSED {a.describe()}" for a in result.closed]
    elif result.notified:
        lines.append(f"notified {len(result.opened)} openings, {len(result.closed)} closings")
    if result.open:
        lines.append(f"{len(result.open)} open:")
        lines += [f"  {a.describe()}" for a in result.open]
    else:
        lines.append("no alert open")
    return "\n".join(lines) + "\n"
