"""Record boundaries in a byte stream of accounting CSV or JSON, and what a record is.

CSV or JSON. ``ChunkSplitter`` decides per stream, from its first non-blank byte
(after a UTF-8 byte-order mark): ``{`` or ``[`` is JSON, cut by
``jsonrecords.JsonSplitter`` into one record per object (NDJSON, an array, objects
back to back or pretty-printed; its resynchronisation rule and blind spots are in
that module's docstring); anything else is CSV, cut as follows. Whichever cuts it, a
record is then read as JSON or CSV by its own text (``jsonrecords.is_json_record``),
so that the spool, the importer, replay and ``rejects retry`` decide alike.

A CSV record ends at a line break outside double quotes (RFC 4180 allows line
breaks inside a quoted field, and a multi-line SMTP reply uses that).
``RecordAssembler`` joins physical lines into whole records by counting quotes,
so that every record handed on is complete: the spool writes whole records and
the parser reads one row per record. ``ChunkSplitter`` cuts arbitrary chunks of
a stream into lines for it; the pipe (``reader.StreamReader``), ``import``
(``reader.iter_batches``) and, through the spool, ``replay`` all frame with it.

Resynchronisation. A quote that opens and never closes (a cut-off write, a reply
text such as ``smtp;250 ok user "john doe``) would otherwise join every later
line to one record. So while a quote is open, a line that *begins like a record*
closes it: the torn record before it is handed on alone (the parser makes one
reject of it, or one event if it reads), and the line is read as the start of a
new record. A line begins like a record when it is

* a record type, a comma and a timestamp that ``values.parse_time`` reads, the
  type being one of ``KNOWN_TYPES`` (d b t tq r f rb rs) or a type this splitter
  has seen on an earlier record that opened a quote; or
* a header line: its first field, quotes set aside, reads ``type``.

The one blind spot: a continuation line of a legitimate quoted field that itself
looks like a whole record (``d,2026-01-15 14:23:11-0700,...``) is taken for one.
Only lines that arrive while a quote is open are tested, so a stream without
stray quotes costs what it did without the rule. A record larger than
``max_record_bytes`` is still cut there and handed on as it is (the backstop); a
line with no break for that long is handed on as its first ``max_record_bytes``
and the rest of the line is skipped (counted in ``skipped_bytes``): one reject per
over-long line, never an event made of its pieces.

What a record is, as ``parse.RecordParser`` decides it, on raw bytes (the spool,
the importer and the parser must agree on record positions):

* ``header_field`` / ``is_header_record``: a header line (first field ``type``);
* ``count_positions``: how many records of a batch take a position (all but
  header lines and blank records) and the last header among them;
* ``read_alone``: the row the CSV reader makes of one record on its own, or
  ``None`` when it cannot (a quoted field left open, malformed CSV);
* ``left_open``: the input ended inside the record, or may have (a JSON object not
  closed, a CSV quote left open).

A JSON record is never a header line or blank, and takes one position, as a CSV
record does.

Pure code, no I/O. Importing it sets the ``csv`` module's field size limit to
``DEFAULT_MAX_RECORD_BYTES`` (a record may be one large field).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable

from pmta_pipe import values
from pmta_pipe.jsonrecords import JsonSplitter, is_json_record, is_open

DEFAULT_MAX_RECORD_BYTES = 1 << 20
csv.field_size_limit(DEFAULT_MAX_RECORD_BYTES)

#: PowerMTA's record types; a line starting with one of them, a comma and a
#: timestamp begins a record
KNOWN_TYPES = frozenset((b"d", b"b", b"t", b"tq", b"r", b"f", b"rb", b"rs"))
_MAX_LEARNED_TYPES = 64
_MAX_TYPE_BYTES = 32
_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()
_BLANK_RUN = re.compile(rb"\s*+")


def header_field(first: str) -> bool:
    """True when ``first``, a record's first field as the CSV reader gives it, marks a header.

    A UTF-8 byte-order mark and surrounding whitespace are ignored; ``type`` in any case.
    """
    return len(first) >= 4 and first.lstrip(_BOM).strip().lower() == "type"


def decode_record(record: bytes) -> str:
    """A record's text as the parser reads it: invalid UTF-8 and NUL become U+FFFD."""
    text = record.decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def read_alone(record: bytes) -> list[str] | None:
    """The row the CSV reader makes of ``record`` alone, as the parser reads it.

    ``None`` when the record leaves a quoted field open at its end (the reader would
    run on into the next record) or is malformed CSV: the parser rejects it.
    """
    reader = csv.reader((decode_record(record), ""))
    try:
        row = next(reader)
    except csv.Error:
        return None
    return row if reader.line_num == 1 else None


def is_header_record(record: bytes) -> bool:
    """True for a header line, exactly as the parser decides it.

    The first field before the first comma, with its double quotes, a byte-order
    mark and whitespace set aside, must read ``type``; then the record must read
    as CSV on its own and its first field pass ``header_field``. A record of
    ``DEFAULT_MAX_RECORD_BYTES`` or more (cut at the limit) is none.
    """
    if len(record) >= DEFAULT_MAX_RECORD_BYTES or not _looks_like_header(record):
        return False  # a record cut at the limit is a reject
    if is_json_record(record):
        return False
    row = read_alone(record)
    return row is not None and len(row) > 0 and header_field(row[0])


def _looks_like_header(record: bytes) -> bool:
    """The first field before the first comma reads ``type`` once its quotes are removed.

    True for every header line (and for a few records that are not one).
    """
    comma = record.find(b",")
    first = record if comma < 0 else record[:comma]
    return len(first) >= 4 and header_field(first.replace(b'"', b"").decode("utf-8", "replace"))


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def count_positions(records: Iterable[bytes]) -> tuple[int, bytes | None]:
    """(records that take a position, the last header record or ``None``).

    Every record takes a position but header lines and blank records (no field, or
    one field of whitespace), the numbering of ``RecordParser``; a record cut at
    the limit takes one whatever it holds.
    """
    positions = 0
    header: bytes | None = None
    for rec in records:
        comma = rec.find(b",")
        if len(rec) >= DEFAULT_MAX_RECORD_BYTES:
            pass
        elif comma < 0:  # one field: perhaps blank, perhaps a header of one column
            row = None if is_json_record(rec) else read_alone(rec)
            if row is not None:
                if _is_blank(row):
                    continue
                if header_field(row[0]):
                    header = rec
                    continue
        elif comma >= 4 and is_header_record(rec):
            header = rec
            continue
        positions += 1
    return positions, header


def left_open(record: bytes) -> bool:
    """The input ended inside ``record``, or may have: a JSON object not closed
    (``jsonrecords.is_open``), or a CSV record with a double quote left open."""
    if is_json_record(record):
        return is_open(record)
    return bool(record.count(b'"') & 1)


def _is_time(field: bytes) -> bool:
    try:
        text = field.decode("ascii")
    except UnicodeDecodeError:
        return False
    return values.parse_time(text) is not None


def _type_and_time(line: bytes) -> tuple[bytes, bool]:
    """(the bytes before the first comma, whether the second field is a timestamp)."""
    comma = line.find(b",")
    if comma < 1:
        return b"", False
    end = line.find(b",", comma + 1)
    return line[:comma], _is_time(line[comma + 1 :] if end < 0 else line[comma + 1 : end])


class RecordAssembler:
    """Turns physical lines (``bytes`` without their ``\\n``) into records (likewise)."""

    __slots__ = ("_max", "_parts", "_quotes", "_size", "_types")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._max = max_record_bytes
        self._parts: list[bytes] = []
        self._quotes = 0
        self._size = 0
        self._types: set[bytes] = set()  # other types seen on records that opened a quote

    def push(self, line: bytes, out: list[bytes]) -> None:
        """Add a line; append to ``out`` the records it completes (none, one or two)."""
        q = line.count(b'"')
        if not self._parts:
            if not q & 1:
                out.append(line)  # the common case: one line, balanced quotes
                return
            self._learn(line)
        elif self.begins_record(line):
            out.append(self._take())  # the torn record, alone
            self.push(line, out)
            return
        self._parts.append(line)
        self._quotes += q
        self._size += len(line) + 1
        if not self._quotes & 1 or self._size >= self._max:
            out.append(self._take())

    def begins_record(self, line: bytes) -> bool:
        """True when ``line`` looks like the start of a record or a header line."""
        rtype, timed = _type_and_time(line)
        if timed and (rtype in KNOWN_TYPES or rtype in self._types):
            return True
        return _looks_like_header(line)

    def _learn(self, line: bytes) -> None:
        """Remember the type of a record that opens a quote, if it is one."""
        if len(self._types) >= _MAX_LEARNED_TYPES:
            return
        rtype, timed = _type_and_time(line)
        if (
            timed
            and rtype not in KNOWN_TYPES
            and len(rtype) <= _MAX_TYPE_BYTES
            and rtype.strip() == rtype
            and b'"' not in rtype
        ):
            self._types.add(rtype)

    def _take(self) -> bytes:
        record = b"\n".join(self._parts)
        self._parts.clear()
        self._quotes = 0
        self._size = 0
        return record

    def flush(self) -> bytes | None:
        """Return what is pending (at end of input), or ``None``."""
        return self._take() if self._parts else None

    @property
    def pending(self) -> bool:
        return bool(self._parts)


class ChunkSplitter:
    """Cuts arbitrary chunks of a byte stream into whole records, CSV or JSON.

    The stream's first non-blank byte decides: ``{`` or ``[`` (after a byte-order mark,
    which is dropped) hands the whole stream to a ``jsonrecords.JsonSplitter``; anything
    else is CSV, cut by lines as described above (so is a stream whose blank lines
    before that byte include one of ``max_record_bytes`` or more). ``feed`` and
    ``finish`` work alike for both, so a caller holding a whole body calls
    ``feed(body, out)`` then ``finish(out)``."""

    __slots__ = ("_asm", "_head", "_json", "_max", "_rest", "_skipped", "_skipping")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._asm = RecordAssembler(max_record_bytes)
        self._max = max_record_bytes
        self._rest = b""
        self._skipping = False  # inside an over-long line whose first piece was handed on
        self._skipped = 0  # bytes of over-long lines not kept (past their first piece)
        self._head: bytes | None = b""  # blank bytes before the format is known; None: known
        self._json: JsonSplitter | None = None

    @property
    def skipped_bytes(self) -> int:
        """Bytes of over-long records not kept (past their first ``max_record_bytes``)."""
        return self._skipped if self._json is None else self._json.skipped_bytes

    @property
    def is_json(self) -> bool:
        """True once the stream's first non-blank byte said JSON."""
        return self._json is not None

    def feed(self, chunk: bytes, out: list[bytes]) -> None:
        """Append to ``out`` every record that ``chunk`` completes (blank lines are skipped)."""
        if self._head is not None:
            chunk = self._decide(chunk)
            if self._head is not None:
                return  # only blanks so far
        if self._json is not None:
            self._json.feed(chunk, out)
            return
        self._feed_csv(chunk, out)

    def _decide(self, chunk: bytes) -> bytes:
        """Tell CSV from JSON at the first non-blank byte; the bytes to feed from there.

        Until that byte comes, only what CSV would make records of is kept (a byte-order
        mark's line and the last line); a line of blanks of ``max_record_bytes`` or more
        before it makes the stream CSV (as CSV cuts such a line), whatever the chunks."""
        assert self._head is not None
        head = self._head + chunk
        if len(head) < len(_BOM_BYTES) and _BOM_BYTES.startswith(head):
            self._head = head
            return b""
        begin = len(_BOM_BYTES) if head.startswith(_BOM_BYTES) else 0
        first = _BLANK_RUN.match(head, begin).end()  # type: ignore[union-attr]  # always
        lines = head[begin:first].split(b"\n")
        if max(map(len, lines)) >= self._max:
            self._head = None
            return head
        if first == len(head):  # blanks only, so far
            if len(lines) > 1:
                kept = head[: begin + len(lines[0]) + 1] if begin else b""
                head = kept + lines[-1]
            self._head = head
            return b""
        self._head = None
        if head[first] in b"{[":
            self._json = JsonSplitter(self._max)
            return head[first:]
        return head

    def _feed_csv(self, chunk: bytes, out: list[bytes]) -> None:
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self._skipped += len(chunk)
                return
            self._skipped += end
            self._skipping = False
            chunk = chunk[end + 1 :]
        long = len(self._rest) + len(chunk) >= self._max  # a line may be over the limit
        lines = (self._rest + chunk).split(b"\n") if self._rest else chunk.split(b"\n")
        self._rest = lines.pop()
        asm = self._asm
        if long:
            self._feed_long(lines, out)
            lines = []
        parts = asm._parts  # the assembler's pending lines: empty in the common case
        append = out.append
        for line in lines:
            if parts or line.count(b'"') & 1:
                asm.push(line, out)
            elif line.strip():
                append(line)  # the common case, as asm.push would: balanced, nothing pending
        if len(self._rest) >= self._max:
            self._cut_long_line(out)

    def _feed_long(self, lines: list[bytes], out: list[bytes]) -> None:
        """The lines of a chunk that may hold one over the limit: that one is handed on as
        its first piece, alone (as ``_cut_long_line`` does), the others as usual."""
        for line in lines:
            if len(line) > self._max:
                self._hand_on_piece(line[: self._max], out)
                self._skipped += len(line) - self._max
            elif self._asm.pending or line.count(b'"') & 1:
                self._asm.push(line, out)
            elif line.strip():
                out.append(line)

    def _hand_on_piece(self, piece: bytes, out: list[bytes]) -> None:
        """The first ``max_record_bytes`` of an over-long line: it ends the record a quote
        left open (which the size limit then cuts), or is handed on alone."""
        if self._asm.pending:
            self._asm.push(piece, out)
            last = self._asm.flush()  # the size limit was reached: nothing may stay open
            if last is not None:
                out.append(last)
        else:
            out.append(piece)

    def _cut_long_line(self, out: list[bytes]) -> None:
        """A line with no break for ``max_record_bytes``: hand on its first piece of that
        size (the parser rejects it: one reject per line), and skip the rest of the line."""
        self._hand_on_piece(self._rest[: self._max], out)
        self._skipped += len(self._rest) - self._max
        self._rest = b""
        self._skipping = True

    def finish(self, out: list[bytes]) -> bool:
        """At end of input: hand on the last line (with no line break) and anything pending.

        Returns True when the last record handed on was cut off: it had no line break
        (or a quote left it open), so the input ended inside it, or may have. The
        parser then keeps it as an event only if it is provably complete. For JSON: True
        when it hands on a record (an object the input ended inside, or a value with no
        line break after it)."""
        if self._head is not None:
            head, self._head = self._head, None
            if not head.strip():
                return False
            self._feed_csv(head, out)  # blanks and a byte-order mark: nothing to hand on
        if self._json is not None:
            return self._json.finish(out)
        rest, self._rest = self._rest, b""
        self._skipping = False
        torn = False
        if rest.strip() or (rest and self._asm.pending):  # not the line after a last break
            self._asm.push(rest, out)
            torn = True
        last = self._asm.flush()
        if last is not None:
            out.append(last)
            torn = True
        return torn
