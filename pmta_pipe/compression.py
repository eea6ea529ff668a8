"""Open accounting files whatever their compression, recognised by content.

``detect`` reads the magic bytes (gzip ``1f 8b``, bzip2 ``BZh``, xz ``fd 37 7a 58 5a
00``, zstd ``28 b5 2f fd``); a file's name plays no part, so ``acct.csv`` that is
really gzip and ``acct.csv.gz`` that is really plain text are both read right.

``open_records`` stacks three readers over the raw file:

* ``CountingReader`` counts the bytes taken from disk (what a progress bar shows
  against the file size), and stops at a given size (a plain file that PowerMTA
  is still writing is read as it was when the import planned it);
* the decompressor of the detected format (standard library, or ``zstandard``);
* ``LineGuard``, which only ever hands on data up to a line break. When the
  decompressor fails (a truncated or corrupt file), the unterminated rest is dropped
  and the error is kept in ``LineGuard.error`` instead of raised: the records read
  before the damage are loaded, and none of them is a cut-off half record. An
  unterminated last line at a clean end is handed on (``LineGuard.tail`` keeps it,
  so that the importer can tell whether it is a whole record), unless the caller
  asks to hold it back (a file that PowerMTA may still be writing).

``verify`` decompresses a whole file to nowhere first, so that a damaged archive is
known before any of it is loaded. The formats' own checksums decide:

* gzip: CRC-32 and ISIZE (length mod 2**32) at the end of every member;
* bzip2: the CRC-32 of every block and of the stream;
* xz: the check of every block (CRC-64 by default; CRC-32, SHA-256, or none when
  the file was made with ``--check=none``), and the index's sizes;
* zstd: the content checksum of a frame when the frame has one (``zstd``'s
  command line writes it by default; python-zstandard and ``--no-check`` do not),
  else only the frame's structure and, when the header states it, its size.

A file that ends inside a member or frame is ``truncated`` (a cut-off download:
the importer loads its complete lines and fails the file); any other decoding
error or checksum mismatch is ``corrupt`` (the importer loads nothing of it). What
a truncated file holds before the cut cannot be checked (the checksum of the cut
member is missing), and a zstd frame without a content checksum can decode to
wrong bytes without an error when the damage is in a raw or RLE block or in raw
literals: there only the structure is checked.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

MAGIC: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)
HEAD_BYTES = 6


def detect(head: bytes) -> str:
    """The compression of a stream starting with ``head``: gzip, bzip2, xz, zstd or plain."""
    for name, magic in MAGIC:
        if head.startswith(magic):
            return name
    return "plain"


def _decompression_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read from ``raw``), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def sniff(raw: BinaryIO) -> tuple[str, BinaryIO]:
    """The compression of a stream that cannot seek (a pipe), and a reader of all of it.

    Reads the first ``HEAD_BYTES`` (several reads if a pipe hands them on in pieces);
    the reader returned gives them again, then the rest of ``raw``.
    """
    head = b""
    while len(head) < HEAD_BYTES:
        more = raw.read(HEAD_BYTES - len(head))
        if not more:
            break
        head += more
    return detect(head), cast(BinaryIO, _Prefixed(head, raw))


class CountingReader(io.RawIOBase):
    """Passes reads through, counting the bytes; ends after ``limit`` bytes when given."""

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self.raw = raw
        self.count = 0
        self.limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = len(buffer)
        if self.limit is not None:
            want = min(want, self.limit - self.count)
            if want <= 0:
                return 0
        data = self.raw.read(want)
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def decompressor(raw: BinaryIO, kind: str) -> BinaryIO:
    """A reader of the decompressed bytes of ``raw``."""
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(raw, mode="rb"))
    if kind == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw, mode="rb"))
    if kind == "zstd":
        return cast(BinaryIO, ZstdReader(raw))
    return raw


class TruncatedError(EOFError):
    """The compressed data ended inside a frame."""


class ZstdReader:
    """Decompresses every zstd frame of ``raw`` in turn; a cut-off last frame is an error.

    (``zstandard``'s own stream reader ends quietly at a truncated frame.)
    """

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._zstd = zstandard
        self.raw = raw
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False

    def read1(self, size: int = -1) -> bytes:
        while True:
            chunk = self.raw.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise TruncatedError("compressed file ended inside a zstd frame")
                return b""
            out = b""
            while chunk:
                self._in_frame = True
                out += self._dobj.decompress(chunk)
                if not self._dobj.eof:
                    break
                self._in_frame = False
                chunk = self._dobj.unused_data
                self._dobj = self._zstd.ZstdDecompressor().decompressobj()
            if out:
                return out

    read = read1


class LineGuard:
    """Hands on decompressed data only up to line breaks; turns read errors into ``error``."""

    def __init__(self, inner: BinaryIO, *, hold_unterminated_tail: bool = False) -> None:
        self.inner = inner
        self.hold_tail = hold_unterminated_tail
        self.errors = _decompression_errors()
        self.error: BaseException | None = None
        self.consumed = 0  # bytes handed on
        self.dropped = 0  # unterminated bytes not handed on (damage or held back)
        self.tail = b""  # the unterminated last line, when it was handed on
        self._rest = b""
        self._done = False
        # read1: one decompression step at a time, so that damage loses little before it
        self._read1 = getattr(inner, "read1", inner.read)

    def read(self, size: int = -1) -> bytes:
        while not self._done:
            try:
                chunk = self._read1(size if size > 0 else 1 << 18)
            except self.errors as exc:
                self.error = exc
                chunk = b""
            if not chunk:
                self._done = True
                rest, self._rest = self._rest, b""
                if rest and (self.error is not None or self.hold_tail):
                    self.dropped = len(rest)
                    return b""
                self.consumed += len(rest)
                self.tail = rest
                return rest
            data = self._rest + chunk if self._rest else chunk
            cut = data.rfind(b"\n") + 1
            self._rest = data[cut:]
            if cut:
                self.consumed += cut
                return data[:cut]
        return b""


def open_records(
    raw: BinaryIO, kind: str, *, hold_unterminated_tail: bool = False, limit: int | None = None
) -> tuple[LineGuard, CountingReader]:
    """Wrap an open binary file: (reader of whole decompressed lines, counter of raw bytes).

    ``limit``: read no more than that many raw bytes.
    """
    counter = CountingReader(raw, limit)
    buffered = cast(BinaryIO, io.BufferedReader(counter, 1 << 18))
    inner = decompressor(buffered, kind)
    return LineGuard(inner, hold_unterminated_tail=hold_unterminated_tail), counter


@dataclass(frozen=True)
class Check:
    """What decompressing a whole file to nowhere found."""

    state: str  # "ok", "truncated", "corrupt" or "unreadable" (the disk failed)
    message: str = ""
    decompressed: int = 0  # bytes decoded before the end or the damage
    checksummed: bool = True  # False: a zstd frame without a content checksum


def zstd_checksummed(head: bytes) -> bool:
    """Whether the zstd frame starting ``head`` carries a content checksum."""
    import zstandard

    try:
        return bool(zstandard.get_frame_parameters(head).has_checksum)
    except zstandard.ZstdError:
        return True  # not a readable frame header: decoding it will say what is wrong


def verify(raw: BinaryIO, kind: str, *, chunk: int = 1 << 20) -> Check:
    """Decompress all of ``raw`` (a ``kind`` file at its start) to nowhere.

    Truncation (the data ends inside a member or frame) and corruption (a checksum
    that does not match, data the format cannot decode) are told apart; see the
    module docstring for what each format checks.
    """
    head = raw.read(32)
    checksummed = kind != "zstd" or zstd_checksummed(head)
    inner = decompressor(cast(BinaryIO, io.BufferedReader(_Prefixed(head, raw), 1 << 18)), kind)
    read = getattr(inner, "read1", inner.read)
    done = 0
    try:
        while True:
            data = read(chunk)
            if not data:
                return Check("ok", decompressed=done, checksummed=checksummed)
            done += len(data)
    except EOFError as exc:
        return Check("truncated", str(exc), done, checksummed)
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data
            return Check("unreadable", exc.strerror or str(exc), done, checksummed)
        return Check("corrupt", str(exc), done, checksummed)
    except _decompression_errors() as exc:
        return Check("corrupt", str(exc) or type(exc).__name__, done, checksummed)
