"""Request bodies of the HTTP webhook: their memory budget, gzip decoding, records.

* ``Budget``: the bytes of bodies held in memory at once (``--max-inflight``): each
  request takes what it receives and what it decodes, and gives it back when answered;
  a request that cannot take more is answered ``503`` with ``Retry-After`` instead of
  being buffered without limit. A request alone may always take what it needs, so a
  body within ``--max-body`` is never refused only for its size.
* ``read_records``: gzip (one or more members) or plain, cut into records by
  ``framing.ChunkSplitter`` as the pipe cuts its stream (CSV and JSON are told apart
  there, by content), then into batches of at most ``batch_rows`` records for the
  spool. Decoding stops as soon as the output passes ``--max-body`` (a gzip bomb
  costs at most that), and a body that is not valid gzip is a ``BodyError`` 400
  before anything is journaled. The decoded pieces go to the splitter as they come,
  so the decoded text is never held whole beside its records.

Pure code (no I/O); ``serve`` runs it in worker threads.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pmta_pipe.framing import ChunkSplitter

GZIP_MAGIC = b"\x1f\x8b"
DECODE_STEP = 1 << 20  # decoded bytes produced (and taken from the budget) at a time


class BodyError(Exception):
    """A body refused: the HTTP status and one line saying why."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class Budget:
    """Bytes of request bodies in memory at once, shared by every request (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, held: int) -> bool:
        """Take ``nbytes`` more for a request that holds ``held`` already; ``False``: no room
        (nothing taken). A request holding everything in use may always take more."""
        with self._lock:
            if self.used + nbytes > self.limit and self.used > held:
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


BUSY = "too many request bodies in memory (--max-inflight): retry later"


@dataclass
class Claim:
    """What one request took from a ``Budget``; ``release`` gives it back."""

    budget: Budget
    held: int = 0

    def take(self, nbytes: int) -> None:
        if not self.budget.take(nbytes, self.held):
            raise BodyError(503, BUSY)
        self.held += nbytes

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


def is_gzip(content_encoding: str, transfer_encoding: str, head: bytes) -> bool:
    """Whether a body is gzip: by ``Content-Encoding``, by ``Transfer-Encoding`` (``gzip,
    chunked``), or by its first bytes (no CSV or JSON starts with them)."""
    ce = content_encoding.strip().lower()
    if ce in ("gzip", "x-gzip"):
        return True
    if ce not in ("", "identity"):
        raise BodyError(400, f"unsupported Content-Encoding {ce!r} (expected gzip or none)")
    te = {t.strip().lower() for t in transfer_encoding.split(",")}
    return bool(te & {"gzip", "x-gzip"}) or head[:2] == GZIP_MAGIC


def _gunzip(data: bytes, max_body: int) -> Iterator[bytes]:
    """The decoded pieces of ``data`` (every gzip member), at most ``DECODE_STEP`` each."""
    total = 0
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while pending or not d.eof:
                piece = d.decompress(pending, DECODE_STEP)
                pending = d.unconsumed_tail
                if piece:
                    total += len(piece)
                    if total > max_body:
                        raise BodyError(
                            413, f"decoded body is larger than --max-body ({max_body} bytes)"
                        )
                    yield piece
                elif not pending:
                    break  # all input consumed and no output: the member is cut off
        except zlib.error as exc:
            raise BodyError(400, f"body is not valid gzip: {exc}") from None
        if not d.eof:
            raise BodyError(400, "gzip body ends before its end (cut off)")
        rest = d.unused_data
        if rest.strip(b"\x00") == b"":  # zero padding after the last member
            break


@dataclass
class Decoded:
    """A body's records in batches of at most ``batch_rows``, whether it ended inside its
    last record (a quoted field left open: ``parse`` decides), and its decoded size."""

    batches: list[list[bytes]]
    torn: bool
    decoded_bytes: int


def read_records(
    data: bytes, gzipped: bool, max_body: int, batch_rows: int, take: Callable[[int], None]
) -> Decoded:
    """Decode a body and cut it into records with ``framing.ChunkSplitter``, as the pipe
    cuts its stream (CSV and JSON are told apart there, by content).

    A gzip body is fed to the splitter piece by piece as it is decoded, so the decoded
    text is never held whole beside its records: a body costs its bytes as received,
    its records (``take``: about its decoded size) and one piece of ``DECODE_STEP``."""
    s = ChunkSplitter()
    out: list[bytes] = []
    decoded = 0
    if gzipped:
        for piece in _gunzip(data, max_body):
            take(len(piece))
            decoded += len(piece)
            s.feed(piece, out)
    else:
        take(len(data))
        decoded = len(data)
        s.feed(data, out)
    torn = bool(s.finish(out)) and bool(out)
    batches = [out[i : i + batch_rows] for i in range(0, len(out), batch_rows)]
    return Decoded(batches, torn, decoded)
