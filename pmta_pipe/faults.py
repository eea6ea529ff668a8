"""Whose fault a database error is: the record's, nobody's (transient), or the setup's.

Every error PostgreSQL or psycopg raises while a batch is loaded is put in one of
three classes, decided from psycopg's exception classes and the SQLSTATE's class
(the first two characters), never from message text. The table is in
``docs/reference.md`` ("Errors: whose fault"):

* ``RECORD``: a value of one record PostgreSQL refuses: data exceptions (class 22),
  integrity violations of one row (class 23: check, not-null), program limits
  (class 54, such as an index row too large). The loader isolates the record by
  splitting the batch, stores it in ``pmta.rejects`` with the database's message,
  and loads the rest.
* ``TRANSIENT``: the connection was lost or refused, the server is shutting down or
  starting (classes 08, 57P01-57P03, and errors without a SQLSTATE), serialization
  failure and deadlock (class 40), lock not available (55P03), statement or lock
  timeout (57014), a session ended for idling in a transaction (25P03), too many
  connections and out of memory (53300, 53200). Retried with backoff on a new
  connection.
* ``SETUP``: everything else, in particular insufficient privilege (42501), an
  undefined table, function or schema (42P01, 42883, 3F000), a read-only
  transaction (25006, a standby after failover), disk full on the server (53100),
  an I/O error (class 58), a schema version mismatch. Never a reject: ``ingest``
  keeps the batch in its spool and retries until an operator fixes the cause;
  ``import`` and ``replay`` stop with a one-line error.

``setup_hint`` says what an operator can do about a setup fault.
"""

from __future__ import annotations

import enum

import psycopg
from psycopg import errors as pg_errors

from pmta_pipe.errors import MigrationError, first_line


class Fault(enum.Enum):
    RECORD = "record"
    TRANSIENT = "transient"
    SETUP = "setup"


_TRANSIENT_STATES = frozenset(
    (
        "40001",
        "40P01",
        "55P03",
        "57014",
        "57P01",
        "57P02",
        "57P03",
        "57P05",
        "53300",
        "53200",
        "25P03",
    )
)
_RECORD_CLASSES = frozenset(("22", "23", "54"))
#: setup faults that mean "the schema is not there": migrate again on reconnect
SCHEMA_MISSING = frozenset(("3F000", "42P01"))


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, when the server sent one."""
    return getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None


def classify(exc: BaseException) -> Fault | None:
    """``RECORD``, ``TRANSIENT`` or ``SETUP`` for a database error; ``None`` for other errors."""
    if isinstance(exc, MigrationError):
        return Fault.SETUP
    if not isinstance(exc, psycopg.Error):
        return None
    state = sqlstate(exc)
    if state is None:
        # no SQLSTATE: the client side failed (connection refused, lost, closed)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return Fault.TRANSIENT
        return Fault.SETUP
    if state in _TRANSIENT_STATES or state[:2] == "08":
        return Fault.TRANSIENT
    if state[:2] in _RECORD_CLASSES:
        return Fault.RECORD
    return Fault.SETUP


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch may succeed without anybody doing anything."""
    return classify(exc) is Fault.TRANSIENT


def is_setup(exc: BaseException) -> bool:
    return classify(exc) is Fault.SETUP


def is_record_fault(exc: BaseException) -> bool:
    return classify(exc) is Fault.RECORD


def setup_hint(exc: BaseException) -> str:
    """What an operator can do about a setup fault."""
    if isinstance(exc, MigrationError):
        return exc.hint or "run 'pmta-pipe migrate'"
    state = sqlstate(exc) or ""
    diag = getattr(exc, "diag", None)
    table = getattr(diag, "table_name", None) if diag is not None else None
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        what = f"pmta.{table}" if table else "the pmta tables"
        return (
            f"GRANT the loading role what deploy/roles.sql gives pmta_writer (INSERT on {what}), "
            "e.g. GRANT pmta_writer TO <login>"
        )
    if state in SCHEMA_MISSING or state == "42883":
        return "run 'pmta-pipe migrate' (ingest migrates again by itself on its next try)"
    if state == "25006":
        return (
            "the database is read-only (a standby, or default_transaction_read_only): "
            "point --dsn at the primary"
        )
    if state == "53100":
        return "the database server's disk is full: free space on it"
    if state[:2] == "58":
        return "the database server reports an I/O error: look at its log"
    return "look at the PostgreSQL log; the records wait in the spool meanwhile"


def describe(exc: BaseException) -> str:
    """``SQLSTATE 42501: permission denied for table events`` (one line, no data values)."""
    state = sqlstate(exc)
    text = first_line(exc)
    return f"SQLSTATE {state}: {text}" if state else text
