"""Import rotated accounting files (``pmta-pipe import``)."""

from __future__ import annotations

from collections.abc import Sequence

from pmta_pipe.config import Settings
from pmta_pipe.errors import PmtaPipeError


def run_import(settings: Settings, paths: Sequence[str], *, force: bool = False) -> int:
    raise PmtaPipeError("not available yet")
