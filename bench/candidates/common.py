"""What every candidate script shares: the input, the batches, the clock and the checks.

Each candidate is a script run as its own process by ``driver.py`` (so that its
import time and peak RSS are its own): ``python bench/candidates/NAME.py FILE
[--check OUT]``. It prints one JSON line on stdout (``emit``) with its figures:

* ``records``: rows produced (header lines excluded);
* ``cpu_s``: CPU time (user + system, ``resource.getrusage``) of the measured work
  only, from the file on disk to the candidate's output, imports excluded;
* ``import_s``: wall time of importing what the candidate needs beyond the
  standard library and pmta_pipe;
* ``backend_cpu_s``: for candidates that make PostgreSQL work, the CPU time of
  the backend process (``/proc/PID/stat``), and ``statement_s`` its wall time.

With ``--check OUT`` the script also writes to OUT what the equality check
compares (``write_check``): the record ids in file order, the SHA-256 of the COPY
text the candidate would send (the concatenation of ``load.render_copy``'s data,
batch by batch, is the COPY text of the whole file) and its first lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

BATCH_ROWS = 5000  # the loader's batch size (config default)
#: the time every batch is received at, so that the outputs do not depend on the clock
RECEIVED_AT = datetime(2026, 1, 5, tzinfo=timezone.utc)
SOURCE = "bench"
SAMPLE_LINES = 200


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ensure_file(records: int, work_dir: Path) -> Path:
    """The generated stream of ``records`` records (``bench/generate.py``), written once."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"acct-{records}.csv"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "generate.py"), str(records)],
                stdout=out,
                check=True,
            )
        tmp.rename(path)
    return path


def record_batches(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[list[bytes]]:
    """The file cut into whole records as ingest and import cut it (``framing``)."""
    from pmta_pipe.reader import iter_batches

    with path.open("rb") as stream:
        for batch in iter_batches(stream, batch_rows, RECEIVED_AT):
            yield batch.records


class Check:
    """Collects what ``write_check`` writes: ids in order and a digest of the COPY text."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.copy = hashlib.sha256()
        self.head: list[str] = []

    def add(self, ids: Sequence[str], copy_text: str | None) -> None:
        self.ids.extend(ids)
        if copy_text is not None:
            self.copy.update(copy_text.encode())
            if len(self.head) < SAMPLE_LINES:
                self.head.extend(copy_text.split("\n", SAMPLE_LINES)[:SAMPLE_LINES])

    def write(self, out: Path, **more: Any) -> None:
        data = {
            "ids_sha256": hashlib.sha256("\n".join(self.ids).encode()).hexdigest(),
            "ids": len(self.ids),
            "ids_head": self.ids[:SAMPLE_LINES],
            "copy_sha256": self.copy.hexdigest() if self.head else None,
            "copy_head": self.head[:SAMPLE_LINES],
            **more,
        }
        out.write_text(json.dumps(data))


def emit(candidate: str, **figures: Any) -> None:
    """Print the candidate's figures as one JSON line (read by ``driver.py``)."""
    print(json.dumps({"candidate": candidate, "pid": os.getpid(), **figures}), flush=True)


class Timer:
    """CPU and wall time of a block."""

    def __enter__(self) -> Timer:
        self.cpu0, self.wall0 = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = cpu_seconds() - self.cpu0
        self.wall = time.perf_counter() - self.wall0
