"""Shared helpers for tests: generated accounting streams and counts of them."""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import generate  # noqa: E402


def stream(records: int, *, days: int = 3, seed: int = 1, start: str = "2026-01-01") -> bytes:
    """A generated accounting stream (header line first) as bytes."""
    buf = io.StringIO()
    when = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)
    generate.write(buf, records, days=days, seed=seed, start=when)
    return buf.getvalue().encode()


def type_counts(data: bytes) -> Counter[str]:
    """Records per type in an accounting stream, counted independently of pmta-pipe."""
    rows = csv.reader(io.StringIO(data.decode()))
    return Counter(r[0] for r in rows if r and r[0] != "type")


def framed(data: bytes) -> list[bytes]:
    """The whole records of ``data``, cut as the pipe cuts them (``framing.ChunkSplitter``)."""
    from pmta_pipe.framing import ChunkSplitter

    out: list[bytes] = []
    splitter = ChunkSplitter()
    splitter.feed(data, out)
    splitter.finish(out)
    return out


def clean_env() -> dict[str, str]:
    """This process's environment without pmta-pipe's settings and libpq's ``PG*``
    variables, except ``PMTA_PIPE_PARSER``: the parser path the suite runs on."""
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PMTA_PIPE_", "PG")) or k == "PMTA_PIPE_PARSER"
    }
