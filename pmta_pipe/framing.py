"""Record boundaries in a byte stream of accounting CSV.

A CSV record ends at a line break outside double quotes (RFC 4180 allows line
breaks inside a quoted field). ``RecordAssembler`` joins physical lines into
whole records by counting quotes, so that every record handed on is complete:
the spool writes whole records and the parser reads one row per record.

Pure code, no I/O. A record larger than ``max_record_bytes`` (an unbalanced
quote that would otherwise swallow the rest of the stream) is cut there and
handed on as it is; the parser then rejects it with its raw text, and the
records after it are read normally.
"""

from __future__ import annotations

DEFAULT_MAX_RECORD_BYTES = 1 << 20


class RecordAssembler:
    """Turns physical lines (``bytes`` without their ``\\n``) into records (likewise)."""

    __slots__ = ("_max", "_parts", "_quotes", "_size")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._max = max_record_bytes
        self._parts: list[bytes] = []
        self._quotes = 0
        self._size = 0

    def push(self, line: bytes) -> bytes | None:
        """Add a line; return a complete record when this line ends one."""
        q = line.count(b'"')
        if not self._parts and not q & 1:
            return line  # the common case: one line, balanced quotes
        self._parts.append(line)
        self._quotes += q
        self._size += len(line) + 1
        if self._quotes & 1 and self._size < self._max:
            return None
        return self.flush()

    def flush(self) -> bytes | None:
        """Return what is pending (at end of input), or ``None``."""
        if not self._parts:
            return None
        record = b"\n".join(self._parts)
        self._parts.clear()
        self._quotes = 0
        self._size = 0
        return record

    @property
    def pending(self) -> bool:
        return bool(self._parts)


class ChunkSplitter:
    """Cuts arbitrary chunks of a byte stream into whole records."""

    __slots__ = ("_asm", "_max", "_rest")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._asm = RecordAssembler(max_record_bytes)
        self._max = max_record_bytes
        self._rest = b""

    def feed(self, chunk: bytes, out: list[bytes]) -> None:
        """Append to ``out`` every record that ``chunk`` completes (blank lines are skipped)."""
        lines = (self._rest + chunk).split(b"\n") if self._rest else chunk.split(b"\n")
        self._rest = lines.pop()
        push = self._asm.push
        for line in lines:
            if not line.strip() and not self._asm.pending:
                continue
            rec = push(line)
            if rec is not None:
                out.append(rec)
        if len(self._rest) >= self._max:
            self._cut_long_line(out)

    def _cut_long_line(self, out: list[bytes]) -> None:
        """A line with no break for ``max_record_bytes``: hand it on in pieces of that size."""
        pending = self._asm.flush()
        if pending is not None:
            out.append(pending)
        while len(self._rest) >= self._max:
            out.append(self._rest[: self._max])
            self._rest = self._rest[self._max :]

    def finish(self, out: list[bytes]) -> None:
        """At end of input: hand on the last line (with no line break) and anything pending."""
        rest, self._rest = self._rest, b""
        if rest.strip() or self._asm.pending:
            rec = self._asm.push(rest)
            if rec is not None:
                out.append(rec)
        last = self._asm.flush()
        if last is not None:
            out.append(last)
