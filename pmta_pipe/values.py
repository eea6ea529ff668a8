"""Typed values of accounting fields: timestamps, IP addresses, integers.

Pure functions, cached: an accounting stream repeats the same second, the same
source IP and the same few sizes over and over, so a cache hit is the common case.

Timestamps accepted (PowerMTA writes the first by default; see
``docs/reference.md``):

* ``2026-01-15 14:23:11-0700`` (space or ``T``, offset ``±HHMM``, ``±HH:MM``,
  ``±HH`` or ``Z``, optional fraction of a second);
* UNIX epoch seconds (``1178807903``, optionally with a fraction);
* ``01/15/2026 14:23:11-0700`` (month first, as PowerMTA's guide describes).

A timestamp without an offset is taken as UTC. Every accepted value is returned
as ISO 8601 text with an explicit offset, so PostgreSQL reads it the same way
whatever its ``DateStyle`` or ``TimeZone``.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

_ISO = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r" ?(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?"
)
_MDY = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r" ?(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
# PowerMTA's own form, read without building a datetime (the other forms take _ISO)
_CANON = re.compile(
    r"(\d{4}-\d\d-\d\d)[ T]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)([+-])([01]\d|2[0-3]):?([0-5]\d)"
)
_ONE_DAY = timedelta(days=1)

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


def _offset(text: str | None) -> timezone:
    if not text or text in ("Z", "z", "UTC"):
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _build(y: str, mo: str, d: str, h: str, mi: str, s: str, frac: str | None,
           off: str | None) -> datetime:  # fmt: skip
    micro = int((frac or "0")[:6].ljust(6, "0"))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, _offset(off))


@lru_cache(maxsize=65536)
def parse_time(text: str) -> tuple[str, date] | None:
    """Read an accounting timestamp.

    Returns ``(iso_text, utc_day)`` or ``None`` when the text is not a timestamp.
    """
    text = text.strip()
    m = _CANON.fullmatch(text)
    if m:
        return _canonical(*m.groups())
    try:
        m = _ISO.fullmatch(text)
        if m:
            dt = _build(*m.groups())
        elif _EPOCH.fullmatch(text):
            dt = datetime.fromtimestamp(float(text), timezone.utc)
        else:
            m = _MDY.fullmatch(text)
            if not m:
                return None
            mo, d, y, *rest = m.groups()
            dt = _build(y, mo, d, *rest)
        utc = dt.astimezone(timezone.utc)  # may overflow in year 1 or 9999
    except (ValueError, OverflowError, OSError):
        return None
    return dt.isoformat(), utc.date()


@lru_cache(maxsize=4096)
def _day(ymd: str) -> date | None:
    try:
        return date.fromisoformat(ymd)
    except ValueError:
        return None


def _canonical(ymd: str, hh: str, mm: str, ss: str, sign: str, oh: str, om: str
               ) -> tuple[str, date] | None:  # fmt: skip
    """``parse_time`` of ``YYYY-MM-DD HH:MM:SS±HHMM``: the same result, ten times faster."""
    day = _day(ymd)
    if day is None:
        return None
    offset = int(oh) * 60 + int(om)
    if sign == "-":
        offset = -offset
    minute = int(hh) * 60 + int(mm) - offset  # of the UTC day, relative to the local one
    try:
        if minute < 0:
            day = day - _ONE_DAY
        elif minute >= 1440:
            day = day + _ONE_DAY
    except OverflowError:
        return None
    if not offset:
        sign = "+"  # datetime writes a zero offset as +00:00
    return f"{ymd}T{hh}:{mm}:{ss}{sign}{oh}:{om}", day


@lru_cache(maxsize=16384)
def check_inet(text: str) -> str | None:
    """Return the address as PostgreSQL ``inet`` will read it, or ``None``."""
    text = text.strip()
    if "%" in text or "/" in text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def check_int(text: str, maximum: int = INT4_MAX) -> str | None:
    """Return the integer text if it is a whole number within ``±maximum``, else ``None``."""
    t = text.strip()
    digits = t[1:] if t[:1] in "-+" else t
    if not (digits.isascii() and digits.isdigit()):
        return None
    value = int(t)
    if -maximum - 1 <= value <= maximum:
        return str(value)
    return None


def check_bigint(text: str) -> str | None:
    """``check_int`` for ``bigint`` columns."""
    return check_int(text, INT8_MAX)
