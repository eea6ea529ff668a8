"""Which database a run uses, and connections to it.

Order: ``--dsn`` / ``PMTA_PIPE_DSN``; else, when any of ``PGHOST``, ``PGHOSTADDR``,
``PGDATABASE``, ``PGSERVICE`` or ``PGPORT`` is set, libpq's own defaults (so
``PGPASSFILE``, service files and every ``PG*`` variable work as in ``psql``);
else the embedded PostgreSQL in ``--data-dir``. ``describe`` names a target for
logs and ``status`` without its password.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pmta_pipe import __version__
from pmta_pipe.config import LIBPQ_TARGET_VARS, Settings
from pmta_pipe.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    conninfo: str
    embedded: bool
    description: str


def describe(conninfo: str) -> str:
    """``user@host:port/dbname``, from the conninfo and libpq's environment; no password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part of the DSN it could not read, which may hold the password
        reason = re.sub(r'"[^"]*"', '"…"', str(exc)).strip().splitlines()[0]
        raise ConfigError(f"invalid DSN: {reason}", "use a libpq URI or key=value string") from None
    host = str(params.get("host") or os.environ.get("PGHOST") or "local socket")
    if host.startswith("/"):
        host = f"socket {host}"
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or "(default)")
    user = str(params.get("user") or os.environ.get("PGUSER") or "(default user)")
    service = params.get("service") or os.environ.get("PGSERVICE")
    where = f"{user}@{host}:{port}/{dbname}"
    return f"{where} (service {service})" if service else where


def resolve_target(settings: Settings, *, start_embedded: bool = True) -> Target:
    """Find the database for this run, starting the embedded server if it is the one."""
    if settings.dsn:
        return Target(settings.dsn, False, describe(settings.dsn))
    if any(os.environ.get(v) for v in LIBPQ_TARGET_VARS):
        return Target("", False, describe(""))
    from pmta_pipe import embedded

    data_dir = settings.data_path
    if not start_embedded:
        return Target("", True, f"embedded PostgreSQL in {data_dir}")  # not started here
    try:
        uri = embedded.start(data_dir)
    except Exception as exc:  # the library raises plain subprocess/OS errors
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc}",
            "check the folder's permissions and free space, or set --dsn",
        ) from exc
    return Target(uri, True, f"embedded PostgreSQL in {data_dir}")


#: TCP keepalives, so that a connection whose network path broke is noticed within a
#: minute on this side (libpq parameters; one the DSN sets wins)
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
#: settings of every pmta-pipe session, each applied only where nothing set it before
#: (its source in pg_settings is "default": a value from the DSN's ``options``,
#: ``PGOPTIONS``, ``ALTER ROLE/DATABASE … SET`` or postgresql.conf wins). The server
#: ends a session of ours that a vanished client left idle in a transaction, and
#: releases its locks, within a minute; its keepalives find a dead client as fast; a
#: loader waits at most 30 s for a lock, then retries (55P03 is transient).
SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": "60s",
    "lock_timeout": "30s",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}
_UNSET = "SELECT name FROM pg_settings WHERE source = 'default' AND name = ANY(%s)"


def _keepalives(conninfo: str) -> dict[str, str]:
    """The keepalive parameters ``conninfo`` does not set."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return {}  # connect() reports the DSN's error
    return {k: v for k, v in KEEPALIVES.items() if k not in given}


def connect(conninfo: str, *, autocommit: bool = False, timeout: float = 10) -> psycopg.Connection:
    """Open a connection named ``pmta-pipe`` in ``pg_stat_activity``, with keepalives and
    the session settings of ``SESSION_SETTINGS`` where nothing else set them."""
    conn = psycopg.connect(
        make_conninfo(conninfo, **_keepalives(conninfo)),
        autocommit=True,
        connect_timeout=max(1, int(timeout)),
        application_name=f"pmta-pipe {__version__}",
    )
    try:
        unset = [r[0] for r in conn.execute(_UNSET, (list(SESSION_SETTINGS),)).fetchall()]
        for name in unset:
            conn.execute("SELECT set_config(%s, %s, false)", (name, SESSION_SETTINGS[name]))
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn
