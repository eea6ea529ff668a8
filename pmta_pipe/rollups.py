"""The report rollups' derivations in Python: the independent reference of the SQL.

The rollups are counted by PostgreSQL (``materialize``, ``sql/views/05_rollups.sql``)
with the SQL functions of ``sql/migrations/0002_reports.sql`` (``pmta.utc_day``,
``utc_hour``, ``rollup_domain``, ``rollup_ip``, ``rollup_job``, ``rollup_bounce_cat``,
``reply_code``, ``diag_pattern``, ``delivery_seconds``, ``delivery_bin``) and
``pmta.rollup_key`` (0007). This module computes the same in Python, so that tests
can count the input independently of the database: ``tests/test_rollups.py``
compares the two on every field of the reference samples. The regular expressions
are PostgreSQL's, written for Python's ``re``: ``\\m``/``\\M`` (word start/end) become
``\\b``, ``\\d`` becomes ``[0-9]``; for ASCII text (SMTP replies are ASCII unless
SMTPUTF8) the results are the same.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from operator import itemgetter

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
_ONE_MINUTE = timedelta(minutes=1)
_INT4_MAX = 2147483647

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
