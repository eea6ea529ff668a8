"""Progress of ``pmta-pipe import``: bars on a terminal, log lines otherwise.

``make_progress`` picks ``BarProgress`` (two ``tqdm`` bars on stderr: the current
file and the whole run, in bytes as stored on disk, with records per second and an
ETA) when stderr is a terminal, and ``LogProgress`` (one info line every
``LOG_EVERY`` seconds, and one per finished file) when it is not, for cron jobs and
systemd. ``tqdm`` is imported here only, so ``ingest`` never loads it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)

LOG_EVERY = 10.0


class Progress(Protocol):
    def start_file(self, name: str, size: int | None) -> None: ...
    def advance(self, nbytes: int, records: int) -> None: ...
    def end_file(self, name: str, records: int, note: str) -> None: ...
    def close(self) -> None: ...


def _eta(done: int, total: int | None, started: float) -> str:
    elapsed = time.monotonic() - started
    if not total or not done or done >= total:
        return "-"
    return f"{elapsed * (total - done) / done:.0f} s"


class LogProgress:
    """Info lines at most every ``LOG_EVERY`` seconds."""

    def __init__(self, total_bytes: int, files: int) -> None:
        self.total = total_bytes
        self.files = files
        self.started = time.monotonic()
        self.done_bytes = 0
        self.records = 0
        self.file_name = ""
        self.file_size: int | None = None
        self.file_bytes = 0
        self.file_records = 0
        self.file_started = self.started
        self.last_log = self.started
        self.file_index = 0

    def start_file(self, name: str, size: int | None) -> None:
        self.file_index += 1
        self.file_name, self.file_size = name, size
        self.file_bytes = self.file_records = 0
        self.file_started = time.monotonic()

    def advance(self, nbytes: int, records: int) -> None:
        self.done_bytes += nbytes
        self.file_bytes += nbytes
        self.records += records
        self.file_records += records
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY:
            self.last_log = now
            rate = self.records / max(now - self.started, 1e-6)
            pct = f"{100 * self.file_bytes / self.file_size:.0f}%" if self.file_size else "?"
            log.info(
                "file %d/%d %s: %s, %d records; overall %d records, %.0f records/s, "
                "%.1f of %.1f MB, ETA %s",
                self.file_index, self.files, self.file_name, pct, self.file_records,
                self.records, rate, self.done_bytes / 1e6, self.total / 1e6,
                _eta(self.done_bytes, self.total, self.started),
            )  # fmt: skip

    def end_file(self, name: str, records: int, note: str) -> None:
        log.info("file %d/%d %s: %d records, %s", self.file_index, self.files, name, records, note)

    def close(self) -> None:
        pass


class BarProgress:
    """Two tqdm bars: the current file and the whole run."""

    def __init__(self, total_bytes: int, files: int) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.records = 0
        self.started = time.monotonic()
        self.overall: Any = tqdm(
            total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"all {files} files", position=0, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        self.file: Any = None
        self.file_records = 0
        self.file_started = self.started

    def start_file(self, name: str, size: int | None) -> None:
        if self.file is not None:
            self.file.close()
        self.file_records = 0
        self.file_started = time.monotonic()
        self.file = self._tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name[-40:],
            position=1, leave=False, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip

    def advance(self, nbytes: int, records: int) -> None:
        self.records += records
        self.file_records += records
        now = time.monotonic()
        self.overall.set_postfix_str(
            f"{self.records:,} records, {self.records / max(now - self.started, 1e-6):,.0f}/s",
            refresh=False,
        )
        self.overall.update(nbytes)
        if self.file is not None:
            rate = self.file_records / max(now - self.file_started, 1e-6)
            self.file.set_postfix_str(f"{self.file_records:,} records, {rate:,.0f}/s", False)
            self.file.update(nbytes)

    def end_file(self, name: str, records: int, note: str) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.overall.write(f"{name}: {records:,} records, {note}", file=sys.stderr)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.overall.close()


def make_progress(total_bytes: int, files: int, *, terminal: bool | None = None) -> Progress:
    """Bars when stderr is a terminal, log lines otherwise."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    if terminal:
        return BarProgress(total_bytes, files)
    return LogProgress(total_bytes, files)
