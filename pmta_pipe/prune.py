"""Retention: drop old raw-event partitions (``pmta-pipe prune``)."""

from __future__ import annotations

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError


def run_prune(settings: Settings, *, keep_days: int, keep_rollup_days: int, dry_run: bool) -> int:
    raise PmtaPipeError("not available yet")
