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
    def advance(self, name: str, nbytes: int, records: int) -> None: ...
    def end_file(self, name: str, records: int, note: str) -> None: ...
    def close(self) -> None: ...


def _eta(done: int, total: int | None, started: float) -> str:
    elapsed = time.monotonic() - started
    if not total or not done or done >= total:
        return "-"
    return f"{elapsed * (total - done) / done:.0f} s"


class _FileState:
    def __init__(self, index: int, size: int | None) -> None:
        self.index = index
        self.size = size
        self.bytes = 0
        self.records = 0


class LogProgress:
    """Info lines at most every ``LOG_EVERY`` seconds."""

    def __init__(self, total_bytes: int, files: int) -> None:
        self.total = total_bytes
        self.files = files
        self.started = time.monotonic()
        self.done_bytes = 0
        self.records = 0
        self.last_log = self.started
        self.started_files = 0
        self.active: dict[str, _FileState] = {}

    def start_file(self, name: str, size: int | None) -> None:
        self.started_files += 1
        self.active[name] = _FileState(self.started_files, size)

    def advance(self, name: str, nbytes: int, records: int) -> None:
        self.done_bytes += nbytes
        self.records += records
        f = self.active.get(name)
        if f is not None:
            f.bytes += nbytes
            f.records += records
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY and f is not None:
            self.last_log = now
            rate = self.records / max(now - self.started, 1e-6)
            pct = f"{100 * f.bytes / f.size:.0f}%" if f.size else "?"
            log.info(
                "file %d/%d %s: %s, %d records; overall %d records, %.0f records/s, "
                "%.1f of %.1f MB, ETA %s",
                f.index, self.files, name, pct, f.records, self.records, rate,
                self.done_bytes / 1e6, self.total / 1e6,
                _eta(self.done_bytes, self.total, self.started),
            )  # fmt: skip

    def end_file(self, name: str, records: int, note: str) -> None:
        f = self.active.pop(name, None)
        index = f.index if f else self.started_files
        log.info("file %d/%d %s: %d records, %s", index, self.files, name, records, note)

    def close(self) -> None:
        pass


class BarProgress:
    """tqdm bars: one for the whole run, one per file being read."""

    def __init__(self, total_bytes: int, files: int) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.records = 0
        self.started = time.monotonic()
        self.overall: Any = tqdm(
            total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"{files} files", position=0, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        self.bars: dict[str, tuple[Any, list[float]]] = {}

    def start_file(self, name: str, size: int | None) -> None:
        used = {bar.pos for bar, _ in self.bars.values()}
        position = next(i for i in range(1, len(used) + 2) if i not in used and -i not in used)
        bar = self._tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name[-40:],
            position=position, leave=False, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        self.bars[name] = (bar, [0.0, time.monotonic()])

    def advance(self, name: str, nbytes: int, records: int) -> None:
        self.records += records
        now = time.monotonic()
        self.overall.set_postfix_str(
            f"{self.records:,} records, {self.records / max(now - self.started, 1e-6):,.0f}/s",
            refresh=False,
        )
        self.overall.update(nbytes)
        entry = self.bars.get(name)
        if entry is not None:
            bar, state = entry
            state[0] += records
            rate = state[0] / max(now - state[1], 1e-6)
            bar.set_postfix_str(f"{state[0]:,.0f} records, {rate:,.0f}/s", False)
            bar.update(nbytes)

    def end_file(self, name: str, records: int, note: str) -> None:
        entry = self.bars.pop(name, None)
        if entry is not None:
            entry[0].close()
        self.overall.write(f"{name}: {records:,} records, {note}", file=sys.stderr)

    def close(self) -> None:
        for bar, _ in self.bars.values():
            bar.close()
        self.bars.clear()
        self.overall.close()


def make_progress(total_bytes: int, files: int, *, terminal: bool | None = None) -> Progress:
    """Bars when stderr is a terminal, log lines otherwise."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    if terminal:
        return BarProgress(total_bytes, files)
    return LogProgress(total_bytes, files)
