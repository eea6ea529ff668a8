"""Accounting records -> rows for ``pmta.events`` (or rejects), mapped by the header line.

Pure code, no I/O: ``RecordParser.parse`` takes whole records (``bytes``, as the
``framing`` module cuts them) and returns a ``ParsedBatch``. Each record is read
as one record: CSV never runs on from one into the next.

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
* A record that leaves a quoted field open at its end (``framing`` hands on a torn
  record alone) is rejected as an "unterminated quoted field"; a quote inside an
  unquoted field is only a character (``smtp;250 ok user "john doe`` reads). A
  record of ``framing.DEFAULT_MAX_RECORD_BYTES`` or more was cut there: rejected.
* Header lines, blank records and positions are decided as ``framing.header_field``
  and ``framing.count_positions`` say, so the spool and the importer count alike.
* ``time_logged`` comes from ``timeLogged``; when a record has none, from
  ``timeQueued``, then ``timeFirstAttempt``, then the time pmta-pipe received the
  batch (kept with the batch in the spool, so a replay gives the same time); ``extra``
  then says where it came from under ``pmtaPipeTimeFrom``. A ``timeLogged`` that is
  present but cannot be read, a missing record type, and malformed CSV are rejects.

JSON records (``jsonrecords``; a record whose text begins with ``{``, or is another
JSON value: see ``jsonrecords.is_json_record``) are read by ``_parse_json``: each
object's members become a row under a header of their names (a run of objects shares
one header, the union of their names, as a CSV file's header is the union of every
type's fields), so the mapping, the typed values, ``extra``, the time fallbacks and
``record_id`` are exactly the CSV ones. Values are text (numbers as written, ``null``
empty); a nested object or array, invalid JSON, a value that is not an object and an
object without a type are rejects. A JSON record neither reads nor changes the CSV
header in force, and takes one position. The compiled path never reads one (its first
field is no usual record type), so JSON always takes the pure-Python path.

Identity: ``record_id`` is an MD5 (as a UUID) of the record type, the raw text of
every known field and every non-empty other column with its name. It does not depend
on the column order, on empty columns, nor on the source host, so the same record
loaded again by any route (pipe, replay, file import) is recognised and not added;
nor on the format: the same record as CSV and as JSON has one identity.

Two paths, one result. Where the compiled extension is built (``fastpath``,
``_fastpath.c``) and ``PMTA_PIPE_PARSER`` is not ``python``, ``_parse_compiled`` hands the
batch to C, which reads every ordinary record in one pass into its COPY line, id, time
and raw text, and lists the others; each run of those is read by ``_parse_python`` in
its place (a header line among them ends the C call, so that the records after it are
read by the new header), and the pieces are merged in input order. ``_parse_python`` is
the reference: ``tests/test_fastpath.py`` checks that both paths give the same.

Speed of the pure-Python path: a batch is parsed in two passes. The first walks the rows that C's
``csv.reader`` yields and only sorts them: header lines, blank lines, rows of the
wrong width or without a type; rows of the header's width and a usual type go on
untouched. One reader reads the whole batch; its ``line_num`` tells when a row took
more than one record (an unterminated quote), and the reader is started again
after that record. An empty line after the last record lets it tell there too.
The second pass works column by column on the rows that share a header
(``zip(*rows)``): identities, timestamps, typed values and domains are computed
with ``map`` over cached converters, so that no Python bytecode runs per field;
the rare cases (a typed value that does not parse, a missing timeLogged, an unknown
column with a value) are then fixed row by row. See ``docs/performance.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache, partial
from itertools import chain, islice, repeat
from operator import itemgetter, methodcaller
from typing import TYPE_CHECKING

from pmta_pipe import fastpath, values
from pmta_pipe.fields import DEFAULT_V5_HEADER, EVENT_COLUMNS, KNOWN_FIELDS, KNOWN_INDEX
from pmta_pipe.framing import (
    DEFAULT_MAX_RECORD_BYTES,
    count_positions,
    decode_record,
    header_field,
    is_header_record,
    read_alone,
)
from pmta_pipe.jsonrecords import is_json_record, is_open, read_object

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader

_BOM = "\ufeff"
_END = ("",)  # read after the last record, see _reader
#: the reason of a record that opens a quoted field and does not close it
UNTERMINATED = "unterminated quoted field"
#: the reason of a last record the input ended inside (see ``RecordParser.parse``)
TORN = (
    "torn: the input ended inside this record (no line break, and it cannot be shown whole);"
    " importing the whole record removes this reject"
)
#: the reason of a record of ``DEFAULT_MAX_RECORD_BYTES`` or more (framing cut it there)
CUT = (
    f"cut at the record limit of {DEFAULT_MAX_RECORD_BYTES} bytes (the first"
    f" {DEFAULT_MAX_RECORD_BYTES} bytes are kept here; the rest of the line is not)"
)
#: the reason of a JSON record that is not closed (framing handed it on alone)
UNTERMINATED_JSON = (
    "unterminated JSON object (the input broke off inside it, or a string ran to the end"
    " of its line)"
)
#: the reason of a JSON record of ``DEFAULT_MAX_RECORD_BYTES`` or more
CUT_JSON = (
    f"cut at the record limit of {DEFAULT_MAX_RECORD_BYTES} bytes (the first"
    f" {DEFAULT_MAX_RECORD_BYTES} bytes are kept here; the rest of the object is not)"
)
#: the reason of a JSON object without a record type
NO_TYPE_JSON = 'no record type (the JSON object has no "type", or it is empty)'
_TIME_FALLBACKS = ("timeQueued", "timeFirstAttempt")
_FALLBACKS = [KNOWN_INDEX[n.lower()] for n in _TIME_FALLBACKS]
_I_RCPT = KNOWN_INDEX["rcpt"]
_RECORD_ID = EVENT_COLUMNS.index("record_id")
#: record types that take the first pass's shortest way (any other type is kept too)
_USUAL_TYPES = frozenset(("d", "b", "t", "tq", "r", "f", "rb", "rs"))

_decode = partial(bytes.decode, encoding="utf-8", errors="replace")
_md5 = partial(hashlib.md5, usedforsecurity=False)
_hexdigest = methodcaller("hexdigest")
_rpartition_at = methodcaller("rpartition", "@")
_first = itemgetter(0)
_second = itemgetter(1)
_join_identity = "\x1f".join


def _column_converter(conv: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """``conv`` for one field value: ``""`` stays ``""``, else the value or ``None``."""

    @lru_cache(maxsize=65536)
    def convert(text: str) -> str | None:
        return conv(text) if text else text

    return convert


def _time_text(text: str) -> str | None:
    t = values.parse_time(text)
    return None if t is None else t[0]


# Whole columns of integers are checked by one regular expression over the column
# joined with NUL (which no field can hold): digits without a sign, a leading zero
# or spaces, few enough to fit the type, come out of check_int unchanged.
_INT_COLUMN = {
    "int": re.compile(r"(?:0|-?[1-9][0-9]{0,8})?(?:\x00(?:0|-?[1-9][0-9]{0,8})?)*"),
    "bigint": re.compile(r"(?:0|-?[1-9][0-9]{0,17})?(?:\x00(?:0|-?[1-9][0-9]{0,17})?)*"),
}

_CONVERTERS: dict[str, Callable[[str], str | None]] = {
    "time": _column_converter(_time_text),
    "int": _column_converter(values.check_int),
    "bigint": _column_converter(values.check_bigint),
    "inet": _column_converter(values.check_inet),
}


@lru_cache(maxsize=4096)
def _domain_of(tail: str) -> str:
    return tail.strip().strip(">").lower()


@dataclass(frozen=True)
class Reject:
    """A record that could not be loaded, with why and where it was."""

    raw: str
    reason: str
    position: int


class ParsedBatch:
    """What ``RecordParser.parse`` made of some records.

    Per row, in ``fields.EVENT_COLUMNS`` order: ``rows`` (the values), ``lines`` (the
    row's COPY line, ``copy_format`` text or csv, as ``load.render_copy`` writes the
    batch), ``ids`` (record_id), ``times`` (time_logged), ``raw`` (the record's text,
    for rejects) and ``positions``. The compiled path makes the lines and decodes
    ``rows`` from them only when asked; the pure path makes the rows, and the lines
    when asked. Either way both give the same.
    """

    def __init__(
        self,
        source: str = "",
        rows: list[Sequence[str]] | None = None,
        raw: list[str] | None = None,
        positions: list[int] | None = None,
        rejects: list[Reject] | None = None,
        days: set[date] | None = None,
        headers: int = 0,
        *,
        lines: list[str] | None = None,
        ids: list[str] | None = None,
        times: list[str] | None = None,
    ) -> None:
        self.source = source
        self.raw: list[str] = [] if raw is None else raw
        self.positions: list[int] = [] if positions is None else positions
        self.rejects: list[Reject] = [] if rejects is None else rejects
        self.days: set[date] = set() if days is None else days  # UTC days of time_logged
        self.headers = headers
        # text-format lines when given; else the rows, and the lines made from them
        self._lines: list[str] | None = lines if rows is None else None
        self._rows: list[Sequence[str]] | None = (
            rows if rows is not None or lines is not None else []
        )
        self._format = "text"
        self.ids: list[str] = ids if ids is not None else [r[_RECORD_ID] for r in self.rows]
        self.times: list[str] = times if times is not None else [r[0] for r in self.rows]

    @property
    def rows(self) -> list[Sequence[str]]:
        if self._rows is None:
            assert self._lines is not None
            self._rows = [tuple(line[:-1].split("\t")) for line in self._lines]
        return self._rows

    @property
    def lines(self) -> list[str]:
        """Each row's COPY line, ``\\n`` included; ``"".join(lines)`` is the batch's data."""
        if self._lines is None:
            self._format, self._lines = copy_lines(self.rows)
        return self._lines

    @property
    def copy_format(self) -> str:
        """``"text"`` or ``"csv"``: the format of ``lines`` (see ``load.render_copy``)."""
        self.lines  # noqa: B018  # made with its format
        return self._format

    @property
    def records(self) -> int:
        return len(self.ids) + len(self.rejects)

    def drop_rows(self) -> None:
        """Forget every row (its lines, ids, times, raw text, position and day)."""
        self._rows, self._lines, self._format = [], None, "text"
        for column in (self.raw, self.positions, self.ids, self.times):
            column.clear()
        self.days.clear()

    def extend(self, other: ParsedBatch) -> None:
        """Append the rows, rejects and days of ``other`` to this batch's."""
        self._rows = [*self.rows, *other.rows]
        self._lines, self._format = None, "text"
        self.raw.extend(other.raw)
        self.positions.extend(other.positions)
        self.ids.extend(other.ids)
        self.times.extend(other.times)
        self.rejects.extend(other.rejects)
        self.days.update(other.days)
        self.headers += other.headers


def copy_lines(rows: Sequence[Sequence[str]]) -> tuple[str, list[str]]:
    """``(format, lines)``: each row's COPY line, exactly as ``load.render_copy(rows)``
    writes the batch (text when no value holds a tab, line break, CR or backslash)."""
    if not rows:
        return "text", []
    joined = list(map("\t".join, rows))
    data = "\n".join(joined)
    if (
        data.count("\t") == len(rows) * (len(rows[0]) - 1)
        and data.count("\n") == len(rows) - 1
        and "\\" not in data
        and "\r" not in data
    ):
        return "text", [line + "\n" for line in joined]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    sizes = [writer.writerow(row) for row in rows]
    data = buf.getvalue()
    lines, at = [], 0
    for size in sizes:
        lines.append(data[at : at + size])
        at += size
    return "csv", lines


class Header:
    """A header line, compiled into what parsing its rows needs."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.width = len(self.names)
        sentinel = self.width  # "this header has no such field"
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
        #: for each of KNOWN_FIELDS, its index in a row, or ``width`` when absent
        self.known = known
        self.typed: list[tuple[int, str, str]] = [
            (k, f.name, f.type)
            for k, f in enumerate(KNOWN_FIELDS)
            if f.type != "text" and known[k] != sentinel
        ]
        self.fallbacks = _FALLBACKS

    @classmethod
    def default(cls) -> Header:
        return cls(DEFAULT_V5_HEADER)


def _reader(texts: list[str], start: int, stop: int) -> _CsvReader:
    """A csv reader of ``texts[start:stop]`` and then of one empty line.

    The empty line is read as a blank row, unless the last text leaves a quoted
    field open: then the reader reads it too, and its ``line_num`` tells.
    """
    whole = not start and stop == len(texts)
    return csv.reader(chain(iter(texts) if whole else islice(texts, start, stop), _END))


def _cut_records(records: Sequence[bytes]) -> list[int]:
    """Indexes of the records cut at the record limit, and ``len(records)`` last."""
    end = len(records)
    if not end or max(map(len, records)) < DEFAULT_MAX_RECORD_BYTES:
        return [end]
    return [i for i, r in enumerate(records) if len(r) >= DEFAULT_MAX_RECORD_BYTES] + [end]


@dataclass
class _Segment:
    """Rows of one batch read under one header, waiting for the column pass."""

    header: Header
    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # index of each row's raw text
    positions: list[int] = field(default_factory=list)


class RecordParser:
    """Parses records of one input (a pipe or a file), remembering its current header."""

    def __init__(
        self, source: str, header: Header | None = None, *, compiled: bool | None = None
    ) -> None:
        """``compiled``: take the compiled hot path (``True``), the pure-Python one
        (``False``), or as ``fastpath.parser_path`` says (``None``, which raises for
        ``PMTA_PIPE_PARSER=compiled`` without the extension)."""
        self.source = source
        self.header = header or Header.default()
        self.header_line: str | None = None
        self.next_position = 1
        if compiled is None:
            compiled = fastpath.parser_path()[0] == fastpath.COMPILED
        elif compiled and not fastpath.available():
            raise ValueError("the compiled parser is not built")
        self.compiled = compiled
        self._plan: tuple[Header, fastpath.Plan | None] | None = None

    def parse(
        self,
        records: Sequence[bytes],
        received_at: datetime,
        first_position: int | None = None,
        *,
        torn_last: bool = False,
    ) -> ParsedBatch:
        """Parse ``records`` (whole CSV records) received at ``received_at``.

        Positions continue from the previous call unless ``first_position`` is given.
        ``torn_last``: the input ended inside the last record, or may have (it had no
        line break: PowerMTA stopped mid-write, a signal came). It becomes an event
        only if it is provably complete: it has every field of its header and its
        last field is closed, by the carriage return of a CRLF line break or by the
        closing quote of a quoted field (an unquoted last value may have been cut
        short). Else it is a reject (``TORN``), which ``rejects retry`` or a later
        import of the whole record resolves.
        """
        if torn_last and records and not self.is_whole(records[-1], before=records[:-1]):
            out = self._parse(records[:-1], received_at, first_position)
            out.rejects.append(Reject(_decode(records[-1]), TORN, self.next_position))
            self.next_position += 1
            return out
        return self._parse(records, received_at, first_position)

    def is_whole(
        self, record: bytes, *, before: Sequence[bytes] = (), last_field_closed: bool = True
    ) -> bool:
        """Whether ``record``, with no line break after it, can be kept as it is: every
        field of the header in force (the last header line among ``before``, else this
        parser's), its quotes closed and, with ``last_field_closed``, its last field
        closed by the ``\\r`` of a CRLF or a closing quote (an unquoted last value may
        have been cut short). A blank line or a header line is whole; a record with
        more fields than its header is left to the usual rules (a reject)."""
        if is_json_record(record):
            return not is_open(record)  # a closed object is whole, whatever it holds
        if not record.strip() or is_header_record(record):
            return True  # not a record: nothing to lose
        row = read_alone(record)
        if row is None:
            return False  # a quote left open at the end: the input ended inside a field
        _, header = count_positions(before)
        width = self.header.width
        if header is not None:
            names = read_alone(header)
            width = len(names) if names is not None else width
        if len(row) >= width and not last_field_closed:
            return True
        if len(row) > width:
            return True  # more fields: rejected as such by the usual rules
        closed = record.endswith(b"\r") or (record.endswith(b'"') and row[-1] != "")
        return len(row) == width and closed

    def _parse(
        self, records: Sequence[bytes], received_at: datetime, first_position: int | None
    ) -> ParsedBatch:
        if self.compiled and not (records and is_json_record(records[0])):  # JSON: Python
            source = _source_bytes(self.source)
            if source is not None:
                return self._parse_compiled(list(records), received_at, first_position, source)
        return self._parse_python(records, received_at, first_position)

    def _header_plan(self) -> fastpath.Plan | None:
        if self._plan is None or self._plan[0] is not self.header:
            self._plan = (self.header, fastpath.plan(self.header))
        return self._plan[1]

    def _parse_compiled(
        self,
        records: list[bytes],
        received_at: datetime,
        first_position: int | None,
        source: bytes,
    ) -> ParsedBatch:
        """The compiled path: ``_fastpath.parse`` takes the ordinary records, and each run
        of the others (``slow``) is read by ``_parse_python`` in its place, so that
        rows, rejects, positions and headers come out in input order as the pure path
        makes them."""
        out = ParsedBatch(source=self.source, lines=[], ids=[], times=[])
        if first_position is not None:
            self.next_position = first_position
        position = self.next_position - 1
        parts = _Parts()
        n, i = len(records), 0
        while i < n:
            plan = self._header_plan()
            if plan is None:  # no timeLogged in this header: the pure path for the rest
                parts.pure(out, self._parse_python(records[i:], received_at, position + 1))
                position = self.next_position - 1
                break
            stop, c_lines, ids, times, raws, days, slow = fastpath.parse(records, i, plan, source)
            out.days.update(map(date.fromordinal, days))
            if not slow:
                parts.fast(
                    out, c_lines, ids, times, raws, range(position + 1, position + 1 + stop - i)
                )
                position += stop - i
                i = stop
                continue
            c, j, k = 0, i, 0  # cursor into the C outputs, next record, next slow index
            while k < len(slow):
                s = slow[k]
                m = s - j  # ordinary records before this run of slow ones
                if m:
                    parts.fast(out, c_lines[c : c + m], ids[c : c + m], times[c : c + m],
                               raws[c : c + m], range(position + 1, position + 1 + m))  # fmt: skip
                    position += m
                    c += m
                e = s + 1
                k += 1
                while k < len(slow) and slow[k] == e:
                    e += 1
                    k += 1
                parts.pure(out, self._parse_python(records[s:e], received_at, position + 1))
                position = self.next_position - 1
                j = e
            m = stop - j
            if m:
                parts.fast(out, c_lines[c:], ids[c:], times[c:], raws[c:],
                           range(position + 1, position + 1 + m))  # fmt: skip
                position += m
            i = stop
        self.next_position = position + 1
        parts.finish(out)
        out.rejects.sort(key=_position_of)
        return out

    def _parse_python(
        self, records: Sequence[bytes], received_at: datetime, first_position: int | None
    ) -> ParsedBatch:
        if any(map(is_json_record, records)):
            return self._parse_mixed(records, received_at, first_position)
        return self._parse_csv(records, received_at, first_position)

    def _parse_mixed(
        self, records: Sequence[bytes], received_at: datetime, first_position: int | None
    ) -> ParsedBatch:
        """A batch holding JSON records: each run of CSV or JSON records read in turn."""
        out = ParsedBatch(source=self.source)
        if first_position is not None:
            self.next_position = first_position
        kinds = list(map(is_json_record, records))
        i, n = 0, len(records)
        while i < n:
            j = i + 1
            while j < n and kinds[j] == kinds[i]:
                j += 1
            if kinds[i]:
                out.extend(self._parse_json(records[i:j], received_at))
            else:
                out.extend(self._parse_csv(records[i:j], received_at, None))
            i = j
        out.rejects.sort(key=_position_of)
        return out

    def _parse_json(self, records: Sequence[bytes], received_at: datetime) -> ParsedBatch:
        """JSON records (``jsonrecords``): each object's members become a row under a
        header of their names, so that mapping, typed values, ``extra`` and the identity
        are the CSV ones. Records in a row share one header (the union of their names;
        a name a record lacks is an empty field, as in a CSV file); a record that repeats
        a name has a header of its own (the repeat is ``name#2``, as in CSV)."""
        out = ParsedBatch(source=self.source)
        texts = list(map(decode_record, records))
        received = (received_at.isoformat(), received_at.astimezone(timezone.utc).date())
        position = self.next_position - 1
        names: list[str] = ["type"]
        columns: dict[str, int] = {}  # identity of a name -> its column in ``names``
        placed: dict[tuple[str, ...], list[int]] = {}  # a shape's columns in ``names``
        seg = _Segment(self.header)  # its rows are filled by flush()
        pending: list[tuple[str, list[int], list[str], _Shape]] = []

        def flush() -> None:
            nonlocal names, columns, placed, seg, pending
            if pending:
                width = len(names)
                rows = seg.rows
                for rtype, cols, values, shape in pending:
                    row = [""] * width
                    row[0] = rtype
                    for c, i in zip(cols, shape.others, strict=True):
                        row[c] = values[i]
                    rows.append(row)
                seg.header = Header(names)
                self._convert(seg, texts, received, out)
            names, columns, placed, seg, pending = ["type"], {}, {}, _Segment(self.header), []

        for k, text in enumerate(texts):
            position += 1
            if len(records[k]) >= DEFAULT_MAX_RECORD_BYTES:
                out.rejects.append(Reject(text, CUT_JSON, position))
                continue
            members, why = read_object(text.lstrip(_BOM))
            if members is None:
                assert why is not None
                reason = UNTERMINATED_JSON if is_open(records[k]) else why
                out.rejects.append(Reject(text, reason, position))
                continue
            found, values = members
            shape = _shape(found)
            rtype = values[shape.type].strip() if shape.type >= 0 else ""
            if not rtype:
                out.rejects.append(Reject(text, NO_TYPE_JSON, position))
                continue
            if shape.repeats:  # a header of its own
                flush()
                seg.rows.append([rtype, *(values[i] for i in shape.others)])
                seg.lines.append(k)
                seg.positions.append(position)
                seg.header = Header(["type", *shape.keys])
                self._convert(seg, texts, received, out)
                seg = _Segment(self.header)
                continue
            cols = placed.get(found)
            if cols is None:
                cols = placed[found] = []
                for ident, key in zip(shape.idents, shape.keys, strict=True):
                    c = columns.get(ident)
                    if c is None:
                        c = columns[ident] = len(names)
                        names.append(key)
                    cols.append(c)
            pending.append((rtype, cols, values, shape))
            seg.lines.append(k)
            seg.positions.append(position)
        flush()
        self.next_position = position + 1
        out.rejects.sort(key=_position_of)
        return out

    def _parse_csv(
        self, records: Sequence[bytes], received_at: datetime, first_position: int | None
    ) -> ParsedBatch:
        out = ParsedBatch(source=self.source)
        texts = list(map(_decode, records))
        if any(map(str.__contains__, texts, repeat("\x00"))):
            texts = [t.replace("\x00", "\ufffd") for t in texts]
        position = (self.next_position if first_position is None else first_position) - 1
        received = (received_at.isoformat(), received_at.astimezone(timezone.utc).date())
        seg = _Segment(self.header)
        width = self.header.width
        # One csv reader reads the texts one after the other. ``ln`` is the line_num
        # it has once it has read texts[base + ln - 1] alone: when it has read more,
        # that text left a quoted field open and the reader ran on into the next ones.
        # The reader stops before each record cut at the record limit (``cuts``).
        cuts = _cut_records(records)
        base, ln, cut, stop = 0, 1, 0, cuts[0]
        reader = _reader(texts, base, stop)
        while True:
            rows_append = seg.rows.append
            lines_append = seg.lines.append
            positions_append = seg.positions.append
            try:
                for row in reader:
                    if len(row) == width and row[0] in _USUAL_TYPES and reader.line_num == ln:
                        position += 1  # the common case
                        rows_append(row)
                        lines_append(base + ln - 1)
                        positions_append(position)
                        ln += 1
                        continue
                    line = base + ln - 1
                    if reader.line_num != ln:  # texts[line] is unterminated: alone, a reject
                        position += 1
                        out.rejects.append(Reject(texts[line], UNTERMINATED, position))
                        base, ln = line + 1, 1
                        reader = _reader(texts, base, stop)
                        break  # read again from the text after it
                    ln += 1
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # blank line (or the end-of-input sentinel)
                    first = row[0]
                    if first[:1] == _BOM:
                        first = row[0] = first[1:]
                    if header_field(first):
                        self._convert(seg, texts, received, out)
                        row[0] = "type"
                        self.header = Header(row)
                        self.header_line = texts[line].rstrip("\r\n")
                        out.headers += 1
                        seg = _Segment(self.header)
                        width = self.header.width
                        break  # rebind the appenders to the new segment
                    position += 1
                    n = len(row)
                    if n > width:
                        reason = f"{n} fields, more than the header's {width}"
                        out.rejects.append(Reject(texts[line], reason, position))
                        continue
                    if n < width:
                        row.extend([""] * (width - n))
                    rtype = row[0] = row[0].strip()
                    if not rtype:
                        out.rejects.append(Reject(texts[line], "no record type", position))
                        continue
                    rows_append(row)
                    lines_append(line)
                    positions_append(position)
                else:  # the reader is at its stop: a cut record, or the end
                    if stop == len(texts):
                        break
                    position += 1
                    out.rejects.append(Reject(texts[stop], CUT, position))
                    base, ln, cut = stop + 1, 1, cut + 1
                    stop = cuts[cut]
                    reader = _reader(texts, base, stop)
            except csv.Error as exc:
                position += 1
                line = base + ln - 1
                reason = f"malformed CSV: {exc}" if reader.line_num == ln else UNTERMINATED
                out.rejects.append(Reject(texts[line], reason, position))
                base, ln = line + 1, 1
                reader = _reader(texts, base, stop)
        self._convert(seg, texts, received, out)
        self.next_position = position + 1
        out.rejects.sort(key=_position_of)
        return out

    def _convert(
        self,
        seg: _Segment,
        texts: list[str],
        received: tuple[str, date],
        out: ParsedBatch,
    ) -> None:
        """The column pass: turn the segment's rows into rows of ``pmta.events``."""
        n = len(seg.rows)
        if not n:
            return
        h = seg.header
        cols: list[Sequence[str]] = list(zip(*seg.rows, strict=True))
        cols.append(("",) * n)  # index ``width``: a field the header does not have
        types = cols[0]
        logged = cols[h.time_logged]
        known = [cols[i] for i in h.known]

        extras: list[dict[str, str] | None] = [None] * n
        has_extra = False
        for i, name in h.extras:
            column = cols[i]
            if any(column):
                has_extra = True
                for j, v in enumerate(column):
                    if v:
                        e = extras[j]
                        if e is None:
                            e = extras[j] = {}
                        e[name] = v

        times = list(map(values.parse_time, logged))
        if None in times and self._fix_times(seg, times, logged, known, extras, texts, out):
            self._convert(seg, texts, received, out)  # again, without the rejected rows
            return

        idents = list(map(_join_identity, zip(types, logged, *known, strict=True)))
        if has_extra:
            for j, e in enumerate(extras):
                if e:
                    idents[j] += "\x1e" + "\x1f".join(f"{k}\x1d{v}" for k, v in sorted(e.items()))
        ids = list(map(_hexdigest, map(_md5, map(str.encode, idents))))

        received_iso, received_day = received
        for j, t in enumerate(times):
            if t is None:  # no timeLogged: _fix_times said where the time comes from
                e = extras[j]
                assert e is not None
                times[j] = _fallback_time(known, j, e, received_iso, received_day)
                has_extra = True
        out.days.update(map(_second, times))  # type: ignore[arg-type]

        vals: list[Sequence[str]] = list(known)
        for k, name, type_ in h.typed:
            column = vals[k]
            pattern = _INT_COLUMN.get(type_)
            if pattern is not None and pattern.fullmatch("\x00".join(column)):
                continue  # every value already as check_int would give it
            converted: list[str | None] = list(map(_CONVERTERS[type_], column))
            if None in converted:
                has_extra = True
                for j, value in enumerate(converted):
                    if value is None:
                        e = extras[j]
                        if e is None:
                            e = extras[j] = {}
                        e[name] = column[j]
                        converted[j] = ""
            vals[k] = converted  # type: ignore[assignment]  # no None left

        domains = [_domain_of(p[2]) if p[1] else "" for p in map(_rpartition_at, vals[_I_RCPT])]
        extra_texts: Sequence[str] = (
            [json.dumps(e, ensure_ascii=False) if e else "" for e in extras]
            if has_extra
            else cols[-1]
        )
        out.rows.extend(
            zip(
                map(_first, times),  # type: ignore[arg-type]
                ids,
                types,
                repeat(self.source, n),
                *vals,
                domains,
                extra_texts,
                strict=False,  # repeat() is endless
            )
        )
        out.ids.extend(ids)
        out.times.extend(map(_first, times))  # type: ignore[arg-type]
        out.raw.extend(map(texts.__getitem__, seg.lines))
        out.positions.extend(seg.positions)

    @staticmethod
    def _fix_times(
        seg: _Segment,
        times: list[tuple[str, date] | None],
        logged: Sequence[str],
        known: list[Sequence[str]],
        extras: list[dict[str, str] | None],
        texts: list[str],
        out: ParsedBatch,
    ) -> bool:
        """Rows whose timeLogged is unreadable become rejects (returns True: convert again);
        rows without one are marked for ``_fallback_time``."""
        bad: set[int] = set()
        for j, t in enumerate(times):
            if t is not None:
                continue
            text = logged[j]
            if text:
                reason = f"unreadable timeLogged {text[:40]!r}"
                out.rejects.append(Reject(texts[seg.lines[j]], reason, seg.positions[j]))
                bad.add(j)
            else:
                e = extras[j]
                if e is None:
                    extras[j] = {}
        if not bad:
            return False
        keep = [j for j in range(len(times)) if j not in bad]
        seg.rows = [seg.rows[j] for j in keep]
        seg.lines = [seg.lines[j] for j in keep]
        seg.positions = [seg.positions[j] for j in keep]
        return True


@dataclass(frozen=True)
class _Shape:
    """What the member names of a JSON object (in order) mean, as a CSV header's would.

    ``type``: the index of the record type (the first name that reads ``type`` as a CSV
    header's first field does: any case, blanks and a byte-order mark aside), ``-1``
    when there is none; ``others``: the indexes of the other members, their ``keys``
    (the names without surrounding blanks) and ``idents`` (known fields match in any
    case: lower-cased; others exactly); ``repeats``: an identity occurs twice."""

    type: int
    others: tuple[int, ...]
    keys: tuple[str, ...]
    idents: tuple[str, ...]
    repeats: bool


@lru_cache(maxsize=1024)
def _shape(names: tuple[str, ...]) -> _Shape:
    kind = -1
    others, keys, idents = [], [], []
    for i, name in enumerate(names):
        if kind < 0 and header_field(name):
            kind = i
            continue
        key = name.strip()
        low = key.lower()
        others.append(i)
        keys.append(key)
        idents.append(low if low in KNOWN_INDEX or low == "timelogged" else key)
    repeats = len(set(idents)) < len(idents)
    return _Shape(kind, tuple(others), tuple(keys), tuple(idents), repeats)


def _fallback_time(
    known: list[Sequence[str]],
    j: int,
    extra: dict[str, str],
    received_iso: str,
    received_day: date,
) -> tuple[str, date]:
    """timeQueued, then timeFirstAttempt, then the time the batch was received."""
    for k in _FALLBACKS:
        v = known[k][j]
        t = values.parse_time(v) if v else None
        if t is not None:
            extra["pmtaPipeTimeFrom"] = KNOWN_FIELDS[k].name
            return t
    extra["pmtaPipeTimeFrom"] = "received"
    return received_iso, received_day


class _Parts:
    """The pieces of a compiled batch, in order: C's lines, and batches of the pure path.

    While every piece is in text format, the batch's lines are their lines; once a
    piece of the pure path needs CSV (a value with a tab, line break, CR or
    backslash), the whole batch is CSV, as ``load.render_copy`` makes it: the lines
    are then made again from the rows of every piece."""

    def __init__(self) -> None:
        self.text = True
        self.pieces: list[tuple[list[str], ParsedBatch | None]] = []

    def fast(
        self,
        out: ParsedBatch,
        lines: list[str],
        ids: list[str],
        times: list[str],
        raws: list[str],
        positions: range,
    ) -> None:
        self.pieces.append((lines, None))
        out.ids.extend(ids)
        out.times.extend(times)
        out.raw.extend(raws)
        out.positions.extend(positions)

    def pure(self, out: ParsedBatch, sub: ParsedBatch) -> None:
        if sub.copy_format != "text":
            self.text = False
        self.pieces.append((sub.lines, sub))
        out.ids.extend(sub.ids)
        out.times.extend(sub.times)
        out.raw.extend(sub.raw)
        out.positions.extend(sub.positions)
        out.rejects.extend(sub.rejects)
        out.days.update(sub.days)
        out.headers += sub.headers

    def finish(self, out: ParsedBatch) -> None:
        """Fill ``out``'s lines, or its rows for a CSV batch."""
        if self.text:
            if len(self.pieces) == 1:
                out._lines = self.pieces[0][0]
            else:
                out._lines = [line for piece, _ in self.pieces for line in piece]
            out._rows = None  # decoded from the lines when asked
            return
        rows: list[Sequence[str]] = []
        for piece, sub in self.pieces:
            if sub is None or sub.copy_format == "text":
                rows.extend(tuple(line[:-1].split("\t")) for line in piece)
            else:
                rows.extend(sub.rows)
        out._rows, out._lines = rows, None


def _source_bytes(source: str) -> bytes | None:
    """``source`` as the C code writes it into a line, or ``None`` when it needs the pure
    path (a value that makes the batch CSV, or not encodable)."""
    if any(c in source for c in "\t\n\r\\"):
        return None
    try:
        return source.encode()
    except UnicodeEncodeError:
        return None


def _position_of(reject: Reject) -> int:
    return reject.position
