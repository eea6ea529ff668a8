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
    except (ValueError, OverflowError, OSError):
        return None
    utc = dt.astimezone(timezone.utc)
    return dt.isoformat(), utc.date()


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
