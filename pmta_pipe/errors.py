"""The error hierarchy every module raises, and the exit codes the CLI turns them into.

Errors carry a ``hint``: the CLI prints ``error: <message> (hint: <hint>)`` and exits
with the error's ``exit_code``, with a traceback only at debug level. Which database
errors are whose fault (a record's, transient, the setup's) is decided in ``faults``.
"""

from __future__ import annotations

#: exit codes (sysexits.h where one fits)
EX_OK = 0
EX_FAILURE = 1  # a command failed, or ``status`` found a problem
EX_USAGE = 2  # an invalid flag or setting
EX_ALERT = 3  # ``report alerts --fail-on-alert``: an alert is open
EX_TEMPFAIL = 75  # the database stayed away: the records wait in the spool


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

    exit_code = EX_USAGE


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


class SetupFault(PmtaPipeError):
    """The database refuses every batch for a reason of its setup (a grant, the schema,
    a read-only server): not the records' fault, and nothing retrying alone can fix."""

    def __init__(self, message: str, hint: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message, hint)
        self.sqlstate = sqlstate


class SpooledForLater(DatabaseUnavailable):
    """The run ended with records still in the spool (database away, or a setup fault)."""

    exit_code = EX_TEMPFAIL
