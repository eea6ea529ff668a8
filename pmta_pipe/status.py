"""Health of the pipe: database, schema, spool, last commits (``pmta-pipe status``)."""

from __future__ import annotations

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError


def run_status(settings: Settings, *, fmt: str = "text") -> int:
    raise PmtaPipeError("not available yet")
