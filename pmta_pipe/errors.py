"""The error hierarchy every module raises, and the one place the CLI turns into messages.

Errors carry a ``hint``: the CLI prints ``error: <message> (hint: <hint>)`` and exits
non-zero, with a traceback only at debug level.
"""

from __future__ import annotations


def first_line(exc: BaseException | None) -> str:
    """The first line of an exception's message (libpq's run over several), or its class."""
    lines = str(exc or "").strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class PmtaPipeError(Exception):
    """Base of every error pmta-pipe raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class ConfigError(PmtaPipeError):
    """An invalid flag, environment variable or setting."""

    exit_code = 2


class ParseError(PmtaPipeError):
    """Input that cannot be read at all (not a single bad record: those go to rejects)."""


class SpoolError(PmtaPipeError):
    """The local spool folder cannot be used."""


class LoadError(PmtaPipeError):
    """The database refused a batch for a reason retrying cannot fix."""


class DatabaseUnavailable(PmtaPipeError):
    """The database cannot be reached (after retries, where retries apply)."""


class MigrationError(PmtaPipeError):
    """The schema in the database does not fit this version of pmta-pipe."""
