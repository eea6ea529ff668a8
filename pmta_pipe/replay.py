"""Load the spool without reading stdin (``pmta-pipe replay``)."""

from __future__ import annotations

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError


def run_replay(settings: Settings) -> int:
    raise PmtaPipeError("not available yet")
