"""Report rollups of a batch, counted by the loader and added to PostgreSQL in a few rows.

Each loaded batch adds its new records to the four rollup tables of
``sql/migrations/0002_reports.sql`` (``pmta.rollup_daily``, ``rollup_hourly``,
``rollup_diag``, ``rollup_delivery_time``), in the batch's own transaction. The
records are counted here, in the loader's process (``Deltas``); the loader COPYs
the groups into the temporary table ``batch_rollups`` and runs ``APPLY``, one
``INSERT … SELECT … ON CONFLICT DO UPDATE`` per table. PostgreSQL then only updates
the few thousand rollup rows a batch touches, instead of grouping the batch's rows
and normalizing every distinct diagnostic itself. Measured in
``docs/performance.md`` ("Rollups counted by the loader").

The derivations are those of the SQL functions in ``0002_reports.sql``
(``pmta.utc_day``, ``utc_hour``, ``rollup_domain``, ``rollup_ip``, ``rollup_job``,
``rollup_bounce_cat``, ``reply_code``, ``diag_pattern``, ``delivery_seconds``,
``delivery_bin``), which stay in the database as their reference definition:
``tests/test_rollups.py`` compares the two on every field of the reference samples,
and ``tests/test_reports_rollups.py`` recounts every rollup from ``pmta.events``
with them, and rebuilds them with ``pmta.apply_rollups()``, and compares. The
regular expressions are PostgreSQL's, written for Python's ``re``: ``\\m``/``\\M``
(word start/end) become ``\\b``, ``\\d`` becomes ``[0-9]``; for ASCII text (SMTP
replies are ASCII unless SMTPUTF8) the results are the same.
``example`` of ``rollup_diag`` is the smallest raw text by code point
(``COLLATE "C"``), whatever the database's collation. Every text key is bounded by
``rollup_key`` (``pmta.rollup_key``, migration 0007), so that no value can make an
index entry too large.

Input rows are ``pmta.events`` rows as the parser makes them: text in
``EVENT_COLUMNS`` order, ``''`` for NULL.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from operator import itemgetter
from typing import Any

from pmta_pipe.fields import EVENT_COLUMNS

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
_ONE_MINUTE = timedelta(minutes=1)
_DIAG_TYPES = frozenset(("t", "tq", "b", "rb"))
_BOUNCE_TYPES = frozenset(("b", "rb"))
_NO_IP = "0.0.0.0"
_INT4_MAX = 2147483647

_COLUMNS = tuple(
    itemgetter(EVENT_COLUMNS.index(c))
    for c in (
        "time_logged", "record_type", "source", "rcpt_domain", "queue", "dlv_source_ip",
        "rep_source_ip", "vmta", "vmta_pool", "job_id", "extra", "bounce_cat", "dsn_diag",
        "dsn_status", "total_seconds_queued", "time_queued",
    )
)  # fmt: skip
_LOCAL_HOUR = itemgetter(slice(0, 13))  # YYYY-MM-DDTHH
_OFFSET = itemgetter(slice(19, None))  # ±HH:MM in the parser's form


#: longest rollup key kept as it is (``pmta.rollup_key``): an index entry holds ~2.7 kB
KEY_CHARS = 255


# -- derivations (see the SQL functions of the same names) ---------------------------
def rollup_key(text: str) -> str:
    """``pmta.rollup_key``: a text as a rollup key, bounded so that it always fits an index:
    longer than ``KEY_CHARS``, it becomes its first ``KEY_CHARS`` characters, ``…`` and
    the first 8 hex digits of the MD5 of the whole text (``pmta.events`` keeps it whole)."""
    if len(text) <= KEY_CHARS:
        return text
    digest = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{text[:KEY_CHARS]}…{digest}"


def _bounded(column: Sequence[str]) -> Sequence[str]:
    """``column`` with every value as ``rollup_key`` makes it (unchanged in the usual case)."""
    if max(map(len, column), default=0) <= KEY_CHARS:
        return column
    return list(map(rollup_key, column))


@lru_cache(maxsize=4096)
def buckets(time_logged: str) -> tuple[str, str]:
    """``(pmta.utc_day, pmta.utc_hour)`` of a time as the parser writes it, as ISO text."""
    utc = datetime.fromisoformat(time_logged).astimezone(timezone.utc)
    hour = utc.replace(minute=0, second=0, microsecond=0)
    return hour.replace(hour=0).isoformat(), hour.isoformat()


def _all_buckets(logged: list[str]) -> tuple[Sequence[str], Sequence[str]]:
    """``buckets`` of every time: per local hour when all are in the parser's form
    (``YYYY-MM-DDTHH:MM:SS±HH:MM``) with one whole-hour offset, as a stream usually is."""
    offsets = set(map(_OFFSET, logged))
    if len(offsets) == 1 and set(map(len, logged)) == {25}:
        (offset,) = offsets
        if offset.endswith(":00"):
            local_hours = list(map(_LOCAL_HOUR, logged))
            known = {h: buckets(f"{h}:00:00{offset}") for h in set(local_hours)}
            days, hours = zip(*map(known.__getitem__, local_hours), strict=True)
            return days, hours
    days, hours = zip(*map(buckets, logged), strict=True)
    return days, hours


@lru_cache(maxsize=4096)
def _micros(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // _MICRO


@lru_cache(maxsize=4096)
def _minute(prefix: str) -> int:
    """Minutes since 1970 of ``YYYY-MM-DDTHH:MM`` (local time: only differences are used)."""
    return (datetime.fromisoformat(prefix + "+00:00") - _EPOCH) // _ONE_MINUTE


def delivery_seconds(total_seconds_queued: str, time_logged: str, time_queued: str) -> float | None:
    """``pmta.delivery_seconds`` of a ``d`` record."""
    if total_seconds_queued:
        return float(int(total_seconds_queued))
    if not time_queued:
        return None
    if len(time_logged) == len(time_queued) == 25 and time_logged[19:] == time_queued[19:]:
        # the parser's form, one offset: whole seconds, from the cached minutes
        minutes = _minute(time_logged[:16]) - _minute(time_queued[:16])
        return float(minutes * 60 + int(time_logged[17:19]) - int(time_queued[17:19]))
    return (_micros(time_logged) - _micros(time_queued)) / 1_000_000


def delivery_bin(seconds: float) -> int:
    """``pmta.delivery_bin``: 0..63 exact, then 16 bins per power of two."""
    s = min(max(math.floor(seconds), 0), _INT4_MAX)
    if s < 64:
        return s
    e = s.bit_length() - 1
    return 64 + (e - 6) * 16 + (s >> (e - 4)) - 16


_REPLY = re.compile(
    r"\s*(?:smtp;)?\s*([245][0-9][0-9])(?:[ -]+([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?![0-9])", re.I
)
_STATUS = re.compile(r"\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})")
_SMTP_PREFIX = re.compile(r"\s*smtp;\s*", re.I)
_HEAD = re.compile(r"[245][0-9][0-9](?:[ -][245]\.[0-9]{1,3}\.[0-9]{1,3})?(?![\w.])")
# (regex, placeholder, what every match holds: a quick search that skips the regex).
# Two are written for speed, with the same matches as PostgreSQL's: <addr> starts
# only where a run of address characters starts (no match can start inside one, as
# the run before '@' has no '@'), and <n> tests what precedes its first digit
# after reading it, so that re can look for a digit first.
_PLACEHOLDERS = tuple(
    (re.compile(regex, flags), placeholder, re.compile(needed, re.S))
    for regex, flags, placeholder, needed in (
        (r"https?://[^\s<>\"')\]]+", re.I, "<url>", "://"),
        (
            r"<?(?<![^\s<>@\"'(),;:\[\]])[^\s<>@\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+>?",
            0,
            "<addr>",
            "@",
        ),
        (r"\b[0-9]{4}-[0-9][0-9]-[0-9][0-9]\b", 0, "<date>", "[0-9]-[0-9]"),
        (r"\b[0-9][0-9]?:[0-9][0-9](?::[0-9][0-9])?\b", 0, "<time>", "[0-9]:[0-9]"),
        (r"\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b", 0, "<ip>", r"[0-9]\.[0-9]"),
        (r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{1,4}(?![\w:])", re.I, "<ip>", ":.*:"),
        (r"\b(?=\w)(?=[\w.-]*[0-9])(?=[\w.-]*[a-z])\w[\w.-]{7,}", re.I, "<id>", "[0-9]"),
        (r"[0-9](?<![\w.-][0-9])[0-9]*(?![\w.-])", 0, "<n>", "[0-9]"),
    )
)
_SPACES = re.compile(r"\s+")


def reply_code(dsn_diag: str, dsn_status: str) -> str:
    """``pmta.reply_code``: ``'421 4.7.0'``, ``'421'``, the status's ``'4.4.7'``, or ``''``."""
    m = _REPLY.match(dsn_diag)
    if m:
        code, status = m.groups()
        return f"{code} {status}" if status else code
    m = _STATUS.match(dsn_status)
    return m.group(1) if m else ""


def diag_pattern(dsn_diag: str) -> str:
    """``pmta.diag_pattern``: the diagnostic with what varies per message as placeholders."""
    if not dsn_diag.strip(" "):
        return ""
    m = _SMTP_PREFIX.match(dsn_diag)
    p = dsn_diag[m.end() :] if m else dsn_diag
    m = _HEAD.match(p)
    head = m.group() if m else ""
    p = p[len(head) :]
    for regex, placeholder, needed in _PLACEHOLDERS:
        if needed.search(p):
            p = regex.sub(placeholder, p)
    return _SPACES.sub(" ", head + p).strip(" ")[:250]


@lru_cache(maxsize=4096)
def _diag_key(dsn_diag: str, dsn_status: str) -> tuple[str, str]:
    return reply_code(dsn_diag, dsn_status), diag_pattern(dsn_diag)


def _x_job(extra: str) -> str:
    if not extra:
        return ""
    value: Any = json.loads(extra).get("header_X-job")
    return "" if value is None else str(value)


# -- one batch -------------------------------------------------------------------------
class Deltas:
    """What a batch's new rows add to each rollup table."""

    def __init__(self) -> None:
        self.daily: Counter[tuple[str, ...]] = Counter()
        self.hourly: Counter[tuple[str, ...]] = Counter()
        self.diag: Counter[tuple[str, ...]] = Counter()
        self.diag_example: dict[tuple[str, ...], str] = {}
        self.delivery_time: Counter[tuple[str, str, str, int]] = Counter()

    @classmethod
    def of(cls, rows: Sequence[Sequence[str]]) -> Deltas:
        """The groups of ``rows``."""
        deltas = cls()
        deltas.add(rows)
        return deltas

    def add(self, rows: Sequence[Sequence[str]]) -> None:
        """Count ``rows`` (rows of ``pmta.events``, as the parser makes them).

        Column by column: the two large tables are counted by ``Counter.update`` over
        zipped columns (C code); only the rows that need it take a Python step.
        """
        if not rows:
            return
        (logged, rtype, source, domain, queue, dlv_ip, rep_ip, vmta, pool, job, extra,
         bounce_cat, dsn_diag, dsn_status, seconds_queued, queued) = (
            list(map(column, rows)) for column in _COLUMNS)  # fmt: skip
        days, hours = _all_buckets(logged)
        kinds = set(rtype)
        domains: Sequence[str] = domain
        if "tq" in kinds:
            domains = [
                q.partition("/")[0].lower() if not d and t == "tq" else d
                for d, t, q in zip(domain, rtype, queue, strict=True)
            ]
        ips: Sequence[str]
        jobs: Sequence[str] = job
        if "f" in kinds:
            ips = [
                (r if t == "f" else d) or _NO_IP
                for d, r, t in zip(dlv_ip, rep_ip, rtype, strict=True)
            ]
            jobs = [
                _x_job(e) if not j and t == "f" else j
                for j, e, t in zip(job, extra, rtype, strict=True)
            ]
        else:
            ips = [d or _NO_IP for d in dlv_ip]
        cats: Sequence[str] = ("",) * len(rtype)
        if kinds & _BOUNCE_TYPES:
            cats = [c if t in _BOUNCE_TYPES else "" for c, t in zip(bounce_cat, rtype, strict=True)]
        # every text key bounded (rollup_key); a no-op unless a value is over KEY_CHARS
        keys: list[Sequence[str]] = [
            _bounded(c) for c in (source, rtype, domains, vmta, pool, jobs, cats)
        ]
        source, rtype = list(keys[0]), list(keys[1])
        domains, vmta, pool, jobs, cats = keys[2], list(keys[3]), list(keys[4]), keys[5], keys[6]
        self.daily.update(
            zip(days, source, rtype, domains, ips, vmta, pool, jobs, cats, strict=True)
        )
        self.hourly.update(zip(hours, source, rtype, domains, ips, cats, strict=True))

        if kinds & _DIAG_TYPES:
            diag, examples = self.diag, self.diag_example
            for i, t in enumerate(rtype):
                if t not in _DIAG_TYPES:
                    continue
                text = dsn_diag[i]
                key = (days[i], source[i], t, domains[i], ips[i], vmta[i],
                       *_diag_key(text, dsn_status[i]))  # fmt: skip
                diag[key] += 1
                if text and (key not in examples or text < examples[key]):
                    examples[key] = text
        if "d" in kinds:
            delivered = [i for i, t in enumerate(rtype) if t == "d"]
            seconds = [delivery_seconds(seconds_queued[i], logged[i], queued[i]) for i in delivered]
            self.delivery_time.update(
                (days[i], source[i], domains[i], delivery_bin(secs))
                for i, secs in zip(delivered, seconds, strict=True)
                if secs is not None
            )

    def rows(self) -> list[tuple[str, ...]]:
        """The groups as rows of ``pg_temp.batch_rollups`` (``COLUMNS``), as text."""
        out: list[tuple[str, ...]] = []
        add = out.append
        for (b, s, t, d, ip, v, p, j, c), n in self.daily.items():
            add(("daily", b, s, t, d, ip, v, p, j, c, "", "", "", str(n), ""))
        for (b, s, t, d, ip, c), n in self.hourly.items():
            add(("hourly", b, s, t, d, ip, "", "", "", c, "", "", "", str(n), ""))
        examples = self.diag_example
        for key, n in self.diag.items():
            b, s, t, d, ip, v, code, pattern = key
            add(("diag", b, s, t, d, ip, v, "", "", "", code, pattern, "", str(n),
                 examples.get(key, "")))  # fmt: skip
        for (b, s, d, bin_), n in self.delivery_time.items():
            add(("delivery_time", b, s, "", d, "", "", "", "", "", "", "", str(bin_), str(n), ""))
        return out


#: Columns of ``pg_temp.batch_rollups``: one row per group of one rollup table.
COLUMNS = (
    "rollup, bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool, job_id,"
    " bounce_cat, code, pattern, bin, n, example"
)
CREATE_TEMP_TABLE = """
    CREATE TEMP TABLE IF NOT EXISTS batch_rollups (
        rollup text, bucket timestamptz, source text, record_type text, rcpt_domain text,
        dlv_source_ip inet, vmta text, vmta_pool text, job_id text, bounce_cat text, code text,
        pattern text, bin smallint, n bigint, example text
    ) ON COMMIT DELETE ROWS
"""

# Adds pg_temp.batch_rollups to the rollup tables, one statement per table, in one
# round trip. The COPY reads '' as NULL, hence coalesce() on the text keys. Groups
# are summed again (two texts of one inet value make one key) and added in
# primary-key order, so that concurrent loaders lock rollup rows in the same order.
APPLY = """
INSERT INTO pmta.rollup_daily AS r (bucket, source, record_type, rcpt_domain, dlv_source_ip,
                                    vmta, vmta_pool, job_id, bounce_cat, n)
SELECT bucket, source, record_type, coalesce(rcpt_domain, ''), dlv_source_ip,
       coalesce(vmta, ''), coalesce(vmta_pool, ''), coalesce(job_id, ''),
       coalesce(bounce_cat, ''), sum(n)::bigint
FROM pg_temp.batch_rollups WHERE rollup = 'daily'
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool, job_id,
             bounce_cat)
DO UPDATE SET n = r.n + excluded.n;

INSERT INTO pmta.rollup_hourly AS r (bucket, source, record_type, rcpt_domain, dlv_source_ip,
                                     bounce_cat, n)
SELECT bucket, source, record_type, coalesce(rcpt_domain, ''), dlv_source_ip,
       coalesce(bounce_cat, ''), sum(n)::bigint
FROM pg_temp.batch_rollups WHERE rollup = 'hourly'
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat)
DO UPDATE SET n = r.n + excluded.n;

INSERT INTO pmta.rollup_diag AS r (bucket, source, record_type, rcpt_domain, dlv_source_ip,
                                   vmta, code, pattern, n, example)
SELECT bucket, source, record_type, coalesce(rcpt_domain, ''), dlv_source_ip,
       coalesce(vmta, ''), coalesce(code, ''), coalesce(pattern, ''), sum(n)::bigint,
       min(example COLLATE "C")
FROM pg_temp.batch_rollups WHERE rollup = 'diag'
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern)
DO UPDATE SET n = r.n + excluded.n,
              example = CASE WHEN r.example IS NULL
                               OR excluded.example COLLATE "C" < r.example COLLATE "C"
                             THEN excluded.example ELSE r.example END;

INSERT INTO pmta.rollup_delivery_time AS r (bucket, source, rcpt_domain, bin, n)
SELECT bucket, source, coalesce(rcpt_domain, ''), bin, sum(n)::bigint
FROM pg_temp.batch_rollups WHERE rollup = 'delivery_time'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
ON CONFLICT (bucket, source, rcpt_domain, bin)
DO UPDATE SET n = r.n + excluded.n
"""
