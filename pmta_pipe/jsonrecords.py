"""JSON accounting records: where they begin and end in a byte stream, and their fields.

PowerMTA 5.0 can write accounting as JSON instead of CSV: one object per record,
every value a string, no header line (``docs/reference.md``, "JSON accounting").
Receivers also get one array of objects, objects back to back, or objects
pretty-printed across lines. This module is the JSON half of ``framing`` (which
decides per stream which half cuts it) and of ``parse`` (which decides per record).

What a JSON record is (``is_json_record``, on a record's own bytes, so that every
route, and the spool, the importer and ``rejects retry``, decide it alike): its first
non-blank byte is ``{``, ``[``, ``]`` or ``}``, or it holds no comma and is a JSON
number, string, ``true``, ``false`` or ``null`` (a value that is not an object:
rejected as such). Anything else is CSV, also a line of plain text inside a JSON
stream (see the blind spots below).

Cutting a stream (``JsonSplitter``, used by ``framing.ChunkSplitter`` once the
stream's first non-blank byte is ``{`` or ``[``). A scanner that knows strings and
their escapes finds each top-level object: from its ``{`` to the ``}`` that closes
it, whatever lines it spans; the ``[``, ``,`` and ``]`` of an array, and blanks,
between objects are not records. A record handed on holds no line break: the line
breaks of a pretty-printed object (which JSON allows only outside strings) become
spaces, byte for byte, so a record is as long as its bytes in the input (the
importer counts bytes by record lengths).

Resynchronisation after broken JSON, on line boundaries, so that one bad line never
swallows the next good one:

* a string still open at the end of a line ends the record there (JSON strings hold
  no raw line break): the torn record is handed on alone (a reject), and scanning
  goes on at the next line;
* while an object is open, a line whose first non-blank byte is ``{`` begins a new
  record: the open one is handed on alone (a reject) up to the line break before;
* anything else at the top level (a number, a string, ``null``, a stray ``}``, a
  line of text) is handed on as one record from its first byte to the end of its
  line or to the next ``{``, with a trailing ``,`` or ``]`` dropped when what is left
  is a JSON value; a ``[`` followed on its line by something else than ``{``, ``]``
  or nothing begins such a record (an array of values, not of objects).

The blind spots: an object nested in a value that starts a line of its own (as
``json.dumps(indent=...)`` writes an object inside an array) is taken for a new
record, so such an object (rejected anyway: values are strings) makes two rejects;
and a line of a JSON stream that is no JSON at all (``hello``, ``d,2026-...``) is
read as a CSV record, as it would be in a CSV stream (with a comma usually an
unreadable ``timeLogged``, without one an event of that odd type): a record's format
is decided by its own text.

The record limit. An object that reaches ``max_record_bytes`` (its bytes so far, blank
lines inside it included) is handed on as its first ``max_record_bytes`` (the parser
rejects it) and the rest of it is skipped (``skipped_bytes``), as an over-long CSV line
is; skipping follows strings and brackets without keeping them, and ends where the
object would have (its closing bracket, or a resynchronisation). A value that is not an
object is cut likewise and the rest of its line skipped; blanks after a ``[`` longer
than the limit make the ``[`` an array's. So what is kept in memory never much passes
the limit, and the records do not depend on how the input is cut into chunks.

Reading a record (``read_object``): the object's members in order, each value as
text: strings as they are, numbers as written, ``true``/``false`` as those words,
``null`` as empty. A value that is an object or an array is refused (accounting
values are strings). NUL and lone surrogates, which PostgreSQL text cannot hold,
become U+FFFD.

Pure code, no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: a JSON record that starts like an object or array (after a byte-order mark and blanks)
_OPENS = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n\f\v]*+[{\[\]}]")
#: a whole record that is one JSON number, string, true, false or null
_SCALAR = re.compile(
    rb"\s*+(?:-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null"
    rb'|"(?:[^"\\]|\\.)*+")\s*+',
    re.S,
)
#: blanks, commas and closing brackets between top-level values
_BETWEEN = re.compile(rb"[\s,\]]*+")
#: inside an object: anything but brackets, quotes and line breaks, and whole strings
_INSIDE = re.compile(rb'[^"{}\[\]\n]*+(?:"[^"\\\n]*+(?:\\[^\n][^"\\\n]*+)*+"[^"{}\[\]\n]*+)*+')
#: a top-level value that is not an object: up to a ``{`` or a line break
_JUNK = re.compile(rb'[^"{\n]*+(?:"[^"\\\n]*+(?:\\[^\n][^"\\\n]*+)*+"?[^"{\n]*+)*+')
#: the rest of a string: up to its closing quote, a line break or a backslash before one
_STRING_REST = re.compile(rb'[^"\\\n]*+(?:\\[^\n][^"\\\n]*+)*+')
_BLANKS = re.compile(rb"\s*+")
_LINE_BLANKS = re.compile(rb"[ \t\r\f\v]*+")

_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = b"{}[]"
_QUOTE, _NL, _BACKSLASH = ord('"'), ord("\n"), ord("\\")

_TOP, _OBJECT, _JUNK_VALUE, _SKIP_OBJECT, _SKIP_LINE, _SKIP_BLANKS, _SKIP_STRING = range(7)


def _end(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """Where ``pattern`` (one that matches the empty string too) stops, from ``pos``."""
    m = pattern.match(data, pos)
    assert m is not None
    return m.end()


def is_json_record(record: bytes) -> bool:
    """True when ``record`` is read as JSON (see the module docstring), else it is CSV."""
    if _OPENS.match(record):
        return True
    return b"," not in record and _SCALAR.fullmatch(record) is not None


def is_open(record: bytes) -> bool:
    """True when the object (or array) ``record`` begins is not closed at its end: the
    input broke off inside it, or framing ended it at a resynchronisation."""
    m = _OPENS.match(record)
    if m is None or record[m.end() - 1] in (_RBRACE, _RBRACKET):
        return False
    depth, pos, n = 1, m.end(), len(record)
    while True:
        p = _end(_INSIDE, record, pos)
        if p >= n:
            return True
        c = record[p]
        if c in (_LBRACE, _LBRACKET):
            depth += 1
        elif c in (_RBRACE, _RBRACKET):
            depth -= 1
            if not depth:
                return False
        elif c == _QUOTE:
            return True  # a string left open
        pos = p + 1


def _flat(record: bytes) -> bytes:
    """``record`` with each line break (``\\n``, the ``\\r`` of a CRLF, a last ``\\r``) as a
    space: as long as its bytes in the input."""
    if b"\n" in record:
        record = record.replace(b"\r\n", b"  ").replace(b"\n", b" ")
    if record.endswith(b"\r"):
        record = record[:-1] + b" "
    return record


def _junk(text: bytes) -> bytes:
    """A top-level value that is not an object, as handed on (see the module docstring)."""
    text = text.rstrip()
    if text[-1:] in (b",", b"]"):
        value = text.rstrip(b" \t\r\f\v,]")
        if value and (_SCALAR.fullmatch(value) or _valid(value)):
            return value
    return text


def _valid(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class JsonSplitter:
    """Cuts arbitrary chunks of a JSON stream into whole records (see the module docstring).

    ``feed`` and ``finish`` as ``framing.ChunkSplitter``'s."""

    __slots__ = ("_buf", "_depth", "_max", "_pos", "_state", "skipped_bytes")

    def __init__(self, max_record_bytes: int) -> None:
        self._max = max_record_bytes
        self._buf = b""  # from the start of the record in progress (or the next byte)
        self._pos = 0  # where scanning goes on in ``_buf``
        self._state = _TOP
        self._depth = 0
        self.skipped_bytes = 0

    def feed(self, chunk: bytes, out: list[bytes]) -> None:
        """Append to ``out`` every record that ``chunk`` completes."""
        self._scan(self._buf + chunk if self._buf else chunk, out, final=False)

    def finish(self, out: list[bytes]) -> bool:
        """At end of input: hand on what is pending. True when it handed on a record
        (one the input ended inside, or with no line break after it)."""
        had = len(out)
        self._scan(self._buf, out, final=True)
        self._buf, self._pos, self._state, self._depth = b"", 0, _TOP, 0
        return len(out) > had

    def _hand_on(self, record: bytes, out: list[bytes]) -> None:
        if len(record) > self._max:
            record = record[: self._max]
        out.append(_flat(record))

    def _scan(self, data: bytes, out: list[bytes], *, final: bool) -> None:
        pos, n, state, depth, limit = self._pos, len(data), self._state, self._depth, self._max
        start = 0
        while True:
            if state == _TOP:
                pos = _end(_BETWEEN, data, pos)
                if pos >= n:
                    data, pos = b"", 0
                    break
                start = pos
                c = data[pos]
                if c == _LBRACE:
                    state, depth, pos = _OBJECT, 1, pos + 1
                    continue
                if c == _LBRACKET:
                    q = _end(_LINE_BLANKS, data, pos + 1)
                    if q >= n and not final and q - pos <= limit:
                        break  # what follows the bracket on its line is not here yet
                    if q >= n or q - pos > limit or data[q] in (_LBRACE, _RBRACKET, _NL):
                        pos += 1  # an array of objects: the bracket is no record
                        continue
                state = _JUNK_VALUE
                continue
            if state in (_OBJECT, _SKIP_OBJECT):
                p = _end(_INSIDE, data, pos)
                skipping = state == _SKIP_OBJECT
                if skipping:
                    self.skipped_bytes += p - pos
                elif p - start >= limit:
                    self._hand_on(data[start : start + limit], out)  # the parser rejects it
                    self.skipped_bytes += p - start - limit
                    state, skipping = _SKIP_OBJECT, True
                if p >= n:
                    if not final:
                        pos = p
                        break
                    if not skipping:
                        self._hand_on(_without_break(data[start:]), out)
                    data, pos, state = b"", 0, _TOP
                    break
                c = data[p]
                after = p + 1
                if c in (_LBRACE, _LBRACKET):
                    depth += 1
                elif c in (_RBRACE, _RBRACKET):
                    depth -= 1
                    if not depth:
                        if not skipping:
                            self._hand_on(data[start:after], out)
                        state = _TOP
                elif c == _QUOTE:  # a string this line does not close: the record ends here
                    nl = data.find(b"\n", p)
                    if nl < 0 and not final:  # it may close in a later chunk
                        if not skipping and n - start >= limit:  # cut now, as it will be
                            self._hand_on(data[start : start + limit], out)
                            self.skipped_bytes += p - start - limit
                            skipping = True
                        if skipping:
                            self.skipped_bytes += 1
                            state, pos = _SKIP_STRING, after
                            continue
                        pos = p
                        break
                    after = n if nl < 0 else nl
                    if not skipping:
                        self._hand_on(data[start:after], out)
                        if after - start > limit:
                            self.skipped_bytes += after - start - limit
                    state = _TOP
                else:  # a line break inside the object: does the next line begin a record?
                    if skipping:
                        self.skipped_bytes += 1
                        state, pos = _SKIP_BLANKS, after
                        continue
                    q = _end(_BLANKS, data, after)
                    if q - start >= limit and (q < n or not final):
                        # blank lines up to the limit: cut there, whatever the chunks
                        self._hand_on(data[start : start + limit], out)
                        self.skipped_bytes += after - start - limit  # _SKIP_BLANKS adds
                        state, pos = _SKIP_BLANKS, after
                        continue
                    if q >= n and not final:
                        pos = p
                        break
                    if q < n and data[q] == _LBRACE:
                        self._hand_on(data[start:p], out)
                        state = _TOP
                if skipping:
                    self.skipped_bytes += after - p
                pos = after
                continue
            if state == _JUNK_VALUE:
                p = _end(_JUNK, data, pos)
                if p - start >= limit:
                    self._hand_on(data[start : start + limit], out)
                    self.skipped_bytes += p - start - limit
                    state, pos = _SKIP_LINE, p
                    continue
                if p >= n and not final:
                    pos = start  # read again whole: it may end inside a string
                    break
                if p > start:
                    self._hand_on(_junk(data[start:p]), out)
                state, pos = _TOP, p
                if p >= n:
                    data, pos = b"", 0
                    break
                continue
            if state == _SKIP_STRING:  # skipping an object, inside a string of it
                q = _end(_STRING_REST, data, pos)
                if q >= n or (data[q] == _BACKSLASH and q + 1 >= n):  # the rest is not here
                    self.skipped_bytes += (n if final else q) - pos
                    if final:
                        data, pos, state = b"", 0, _TOP
                    else:
                        pos = q
                    break
                c = data[q]
                if c == _QUOTE:  # closed: the object goes on
                    self.skipped_bytes += q + 1 - pos
                    state, pos = _SKIP_OBJECT, q + 1
                elif c == _NL:  # open at the end of its line: the record ends there
                    self.skipped_bytes += q - pos
                    state, pos = _TOP, q
                else:  # a backslash before the line break
                    self.skipped_bytes += q + 1 - pos
                    state, pos = _TOP, q + 1
                continue
            if state == _SKIP_BLANKS:  # skipping an object, after a line break in it
                q = _end(_BLANKS, data, pos)
                self.skipped_bytes += q - pos
                if q >= n:
                    data, pos = b"", 0
                    if final:
                        state = _TOP
                    break
                state, pos = (_TOP if data[q] == _LBRACE else _SKIP_OBJECT), q
                continue
            # _SKIP_LINE: the rest of an over-long line
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.skipped_bytes += n - pos
                data, pos = b"", 0
                if final:
                    state = _TOP
                break
            self.skipped_bytes += nl - pos
            state, pos = _TOP, nl
        if state in (_OBJECT, _JUNK_VALUE) or (state == _TOP and pos < n):
            keep = start if state != _TOP else pos
        else:
            keep = pos
        self._buf, self._pos = data[keep:], pos - keep
        self._state, self._depth = state, depth


def _without_break(record: bytes) -> bytes:
    """A record the input ended inside, without the line break after its last line."""
    return record[:-1] if record.endswith(b"\n") else record


class _Members(list[tuple[str, object]]):
    """An object's members in order (duplicates kept), as the decoder hands them."""


def _number(text: str) -> str:
    return text


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Members,
    parse_float=_number,
    parse_int=_number,
    parse_constant=_number,
    strict=False,
)
_KINDS = {'"': "a string", "[": "an array", "t": "true", "f": "false", "n": "null"}
_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _safe(text: str) -> str:
    """NUL and lone surrogates (``\\u0000``, ``\\ud800``) become U+FFFD."""
    return _UNSAFE.sub("\ufffd", text) if _UNSAFE.search(text) else text


Members = tuple[tuple[str, ...], list[str]]


def read_object(text: str) -> tuple[Members, None] | tuple[None, str]:
    """``((names, values), None)``: the object's member names (in order, repeats kept)
    and their values as text; or ``(None, why)`` when it cannot be read."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "not valid JSON: nested too deeply"
    if not isinstance(value, _Members):
        kind = _KINDS.get(text.lstrip()[:1], "a number")
        return None, f"not a JSON object but {kind}"
    names = tuple([name for name, _ in value])
    values: list[Any] = [v for _, v in value]
    if not all(map(str.__instancecheck__, values)):
        for k, v in enumerate(values):
            if v is None:
                values[k] = ""
            elif isinstance(v, bool):
                values[k] = "true" if v else "false"
            elif not isinstance(v, str):
                kind = "an object" if isinstance(v, _Members) else "an array"
                why = f"the value of {names[k][:40]!r} is {kind}: accounting values are text"
                return None, why
    if "\\u" in text:  # only an escape makes these (raw NUL: decode_record)
        names = tuple(map(_safe, names))
        values = list(map(_safe, values))
    return (names, values), None
