"""Open accounting files whatever their compression, recognised by content.

``detect`` reads the magic bytes (gzip ``1f 8b``, bzip2 ``BZh``, xz ``fd 37 7a 58 5a
00``, zstd ``28 b5 2f fd``); a file's name plays no part, so ``acct.csv`` that is
really gzip and ``acct.csv.gz`` that is really plain text are both read right.

``open_records`` stacks three readers over the raw file:

* ``CountingReader`` counts the bytes taken from disk (what a progress bar shows
  against the file size);
* the decompressor of the detected format (standard library, or ``zstandard``);
* ``LineGuard``, which only ever hands on data up to a line break. When the
  decompressor fails (a truncated or corrupt file), the unterminated rest is dropped
  and the error is kept in ``LineGuard.error`` instead of raised: the records read
  before the damage are loaded, and none of them is a cut-off half record. An
  unterminated last line at a clean end is handed on, unless the caller asks to
  hold it back (a file that PowerMTA may still be writing).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
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


class CountingReader(io.RawIOBase):
    """Passes reads through, counting the bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
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
                return rest
            data = self._rest + chunk if self._rest else chunk
            cut = data.rfind(b"\n") + 1
            self._rest = data[cut:]
            if cut:
                self.consumed += cut
                return data[:cut]
        return b""


def open_records(
    raw: BinaryIO, kind: str, *, hold_unterminated_tail: bool = False
) -> tuple[LineGuard, CountingReader]:
    """Wrap an open binary file: (reader of whole decompressed lines, counter of raw bytes)."""
    counter = CountingReader(raw)
    buffered = cast(BinaryIO, io.BufferedReader(counter, 1 << 18))
    inner = decompressor(buffered, kind)
    return LineGuard(inner, hold_unterminated_tail=hold_unterminated_tail), counter
