"""Accounting records -> rows for ``pmta.events`` (or rejects), mapped by the header line.

Pure code, no I/O: ``RecordParser.parse`` takes whole records (``bytes``, as the
``framing`` module cuts them) and returns a ``ParsedBatch``.

Rules (documented for users in ``docs/reference.md``):

* Columns are mapped by the header line (a row whose first field is ``type``),
  never by position. A header can arrive at any point; the mapping changes from
  there on. Before any header, the PowerMTA v5 default order is assumed.
* A UTF-8 byte-order mark before the header is ignored. Bytes that are not UTF-8
  become U+FFFD; NUL characters, which PostgreSQL text cannot hold, become U+FFFD.
* A row with fewer fields than its header is padded with empty fields; a row with
  more fields is rejected.
* Known fields go to typed columns (``fields.KNOWN_FIELDS``); a typed value that does
  not parse leaves the column NULL and is kept in ``extra`` under its field name.
  Every other non-empty column is kept in ``extra`` under its original name; the
  k-th repeat of a column name in one header is kept as ``name#k``.
* ``time_logged`` comes from ``timeLogged``; when a record has none, from
  ``timeQueued``, then ``timeFirstAttempt``, then the time pmta-pipe received the
  batch (kept with the batch in the spool, so a replay gives the same time); ``extra``
  then says where it came from under ``pmtaPipeTimeFrom``. A ``timeLogged`` that is
  present but cannot be read, a missing record type, and malformed CSV are rejects.

Identity: ``record_id`` is an MD5 (as a UUID) of the record type, the raw text of
every known field and every non-empty other column with its name. It does not depend
on the column order, on empty columns, nor on the source host, so the same record
loaded again by any route (pipe, replay, file import) is recognised and not added.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from operator import itemgetter

from pmta_pipe import values
from pmta_pipe.fields import DEFAULT_V5_HEADER, KNOWN_FIELDS, KNOWN_INDEX
from pmta_pipe.framing import DEFAULT_MAX_RECORD_BYTES

_BOM = "\ufeff"
csv.field_size_limit(DEFAULT_MAX_RECORD_BYTES)
_TIME_FALLBACKS = ("timeQueued", "timeFirstAttempt")
_I_RCPT = KNOWN_INDEX["rcpt"]

_CONVERTERS: dict[str, Callable[[str], str | None]] = {
    "int": values.check_int,
    "bigint": values.check_bigint,
    "inet": values.check_inet,
}


@dataclass(frozen=True)
class Reject:
    """A record that could not be loaded, with why and where it was."""

    raw: str
    reason: str
    position: int


@dataclass
class ParsedBatch:
    """What ``RecordParser.parse`` made of some records."""

    source: str = ""
    rows: list[list[str]] = field(default_factory=list)  # in fields.EVENT_COLUMNS order
    raw: list[str] = field(default_factory=list)  # raw text of each row, for rejects
    positions: list[int] = field(default_factory=list)  # position of each row
    rejects: list[Reject] = field(default_factory=list)
    days: set[date] = field(default_factory=set)  # UTC days of time_logged
    headers: int = 0

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.rejects)


class Header:
    """A header line, compiled into what parsing one row needs."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.width = len(self.names)
        sentinel = self.width  # index of the '' appended to every padded row
        known = [sentinel] * len(KNOWN_FIELDS)
        self.time_logged = sentinel
        self.extras: list[tuple[int, str]] = []
        seen: dict[str, int] = {}
        for i, name in enumerate(self.names):
            if i == 0:
                continue  # the record type
            key = name.strip()
            low = key.lower()
            is_known = low in KNOWN_INDEX or low == "timelogged"
            ident = low if is_known else key  # known names match in any case, others exactly
            n = seen[ident] = seen.get(ident, 0) + 1
            if n > 1:
                self.extras.append((i, f"{key}#{n}"))
            elif low == "timelogged":
                self.time_logged = i
            elif low in KNOWN_INDEX:
                known[KNOWN_INDEX[low]] = i
            else:
                self.extras.append((i, key))
        self.getter = itemgetter(*known)
        self.typed: list[tuple[int, str, Callable[[str], str | None] | None]] = [
            (k, f.name, _CONVERTERS.get(f.type))
            for k, f in enumerate(KNOWN_FIELDS)
            if f.type != "text" and known[k] != sentinel
        ]
        self.fallbacks = [KNOWN_INDEX[n.lower()] for n in _TIME_FALLBACKS]

    @classmethod
    def default(cls) -> Header:
        return cls(DEFAULT_V5_HEADER)


def _is_header(first: str) -> bool:
    return len(first) >= 4 and first.lstrip(_BOM).strip().lower() == "type"


class RecordParser:
    """Parses records of one input (a pipe or a file), remembering its current header."""

    def __init__(self, source: str, header: Header | None = None) -> None:
        self.source = source
        self.header = header or Header.default()
        self.header_line: str | None = None
        self.next_position = 1

    def parse(
        self, records: Sequence[bytes], received_at: datetime, first_position: int | None = None
    ) -> ParsedBatch:
        """Parse ``records`` (whole CSV records) received at ``received_at``.

        Positions continue from the previous call unless ``first_position`` is given.
        """
        out = ParsedBatch(source=self.source)
        pulled: list[str] = []
        texts = self._texts(records, pulled)
        reader = csv.reader(texts)
        position = (self.next_position if first_position is None else first_position) - 1
        received_iso = received_at.isoformat()
        received_day = received_at.astimezone(timezone.utc).date()
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                position += 1
                out.rejects.append(Reject(pulled[-1], f"malformed CSV: {exc}", position))
                reader = csv.reader(texts)
                continue
            raw = pulled[-1]
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            first = row[0]
            if first[:1] == _BOM:
                first = row[0] = first[1:]
            if _is_header(first):
                row[0] = "type"
                self.header = Header(row)
                self.header_line = raw.rstrip("\r\n")
                out.headers += 1
                continue
            position += 1
            self._parse_row(row, raw, position, received_iso, received_day, out)
        self.next_position = position + 1
        return out

    @staticmethod
    def _texts(records: Sequence[bytes], pulled: list[str]) -> Iterator[str]:
        for rec in records:
            text = rec.decode("utf-8", "replace")
            if "\x00" in text:
                text = text.replace("\x00", "\ufffd")
            pulled.append(text)
            yield text

    def _parse_row(
        self,
        row: list[str],
        raw: str,
        position: int,
        received_iso: str,
        received_day: date,
        out: ParsedBatch,
    ) -> None:
        h = self.header
        n = len(row)
        if n != h.width:
            if n > h.width:
                out.rejects.append(
                    Reject(raw, f"{n} fields, more than the header's {h.width}", position)
                )
                return
            row.extend([""] * (h.width - n))
        rtype = row[0].strip()
        if not rtype:
            out.rejects.append(Reject(raw, "no record type", position))
            return
        row.append("")  # sentinel for fields the header does not have
        known = h.getter(row)
        logged = row[h.time_logged]
        extra: dict[str, str] | None = None
        for i, name in h.extras:
            v = row[i]
            if v:
                if extra is None:
                    extra = {}
                extra[name] = v
        identity = "\x1f".join((rtype, logged, *known))
        if extra:
            identity += "\x1e" + "\x1f".join(f"{k}\x1d{v}" for k, v in sorted(extra.items()))
        record_id = hashlib.md5(identity.encode(), usedforsecurity=False).hexdigest()

        if logged:
            t = values.parse_time(logged)
            if t is None:
                out.rejects.append(Reject(raw, f"unreadable timeLogged {logged[:40]!r}", position))
                return
            time_iso, day = t
        else:
            time_iso, day = received_iso, received_day
            source_name = "received"
            for k in h.fallbacks:
                v = known[k]
                t = values.parse_time(v) if v else None
                if t is not None:
                    time_iso, day = t
                    source_name = KNOWN_FIELDS[k].name
                    break
            if extra is None:
                extra = {}
            extra["pmtaPipeTimeFrom"] = source_name

        vals = list(known)
        for k, name, conv in h.typed:
            v = vals[k]
            if v:
                ok = conv(v) if conv is not None else _time_text(v)
                if ok is None:
                    if extra is None:
                        extra = {}
                    extra[name] = v
                    vals[k] = ""
                else:
                    vals[k] = ok
        rcpt = vals[_I_RCPT]
        at = rcpt.rfind("@")
        domain = rcpt[at + 1 :].strip().strip(">").lower() if at >= 0 else ""
        out.rows.append(
            [
                time_iso,
                record_id,
                rtype,
                self.source,
                *vals,
                domain,
                json.dumps(extra, ensure_ascii=False) if extra else "",
            ]
        )
        out.raw.append(raw)
        out.positions.append(position)
        out.days.add(day)


def _time_text(text: str) -> str | None:
    t = values.parse_time(text)
    return None if t is None else t[0]
