"""Terminal reports from the SQL views (``pmta-pipe report``)."""

from __future__ import annotations

import argparse

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError


def run_report(settings: Settings, args: argparse.Namespace) -> int:
    raise PmtaPipeError("not available yet")
