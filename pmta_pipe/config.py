"""Settings: one table of options, resolved flag > ``PMTA_PIPE_*`` variable > default.

``OPTIONS`` is the single list the CLI builds its flags from and the docs list
(a test checks that every option is documented). ``resolve`` validates once into a
frozen ``Settings``; a bad value raises ``ConfigError`` naming the flag, the
variable and what is expected.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from pmta_pipe.errors import ConfigError

APP = "pmta-pipe"


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise ValueError("must not be negative")
    return value


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1048576``, ``10GiB`` -> bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError("expected a size such as 500M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_share(text: str) -> float:
    """``1%``, ``0.5 %``, ``0.01`` -> a fraction from 0 to 1."""
    t = text.strip()
    percent = t.endswith("%")
    value = _number(t[:-1] if percent else t, float)
    if percent:
        value /= 100
    if not 0 <= value <= 1:
        raise ValueError("expected a share such as 1% or 0.01")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _path(text: str) -> Path:
    return Path(_text(text)).expanduser()


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1, true, yes or on (or 0, false, no, off)")


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8025``, ``[::1]:8025``, ``0.0.0.0:80`` -> (host, port)."""
    t = text.strip()
    host, sep, port = t.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:8025")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("expected [IPv6]:PORT, such as [::1]:8025")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:8025")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected a port number after ':', got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError("a port is from 0 to 65535")
    return host, number


def _url_path(text: str) -> str:
    t = text.strip()
    if not t.startswith("/") or any(c.isspace() or c in "?#" for c in t):
        raise ValueError("expected a URL path such as /accounting")
    return t


def _webhook_url(text: str) -> str:
    t = text.strip()
    if not t.startswith(("https://", "http://")) or any(c.isspace() for c in t):
        raise ValueError("expected an http:// or https:// URL")
    return t


def _level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected debug, info, warning or error")
    return level


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, its type and its help."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    boolean: bool = False  # a flag without a value (the variable takes 1/0, true/false)

    @property
    def env(self) -> str:
        return "PMTA_PIPE_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("dsn", "--dsn", _text,
           "PostgreSQL connection (libpq URI or key=value string); without it and without "
           "PGHOST/PGDATABASE/PGSERVICE, an embedded PostgreSQL in --data-dir is used", "DSN"),
    Option("data_dir", "--data-dir", _path,
           "data folder of the embedded PostgreSQL (default: the user's data directory)", "DIR"),
    Option("source", "--source", _text,
           "name stored on every row for this PowerMTA host (default: the host name)", "NAME"),
    Option("batch_rows", "--batch-rows", _positive_int,
           "most records in one batch (default 5000)", "N"),
    Option("batch_seconds", "--batch-seconds", _positive_float,
           "longest a record waits before its batch is committed (default 1.0)", "SECONDS"),
    Option("spool_dir", "--spool-dir", _path,
           "folder of the durable local spool (default: see docs/operations.md)", "DIR"),
    Option("spool_max_bytes", "--spool-max-bytes", parse_size,
           "largest the spool may grow while the database is away (default 10G)", "SIZE"),
    Option("drain_timeout", "--drain-timeout", _non_negative_float,
           "after end of input, how long to wait while nothing is committed (the database "
           "away, a setup fault, a blocked statement) before leaving the rest in the spool "
           "(default 30)", "SECONDS"),
    Option("max_reject_share", "--max-reject-share", parse_share,
           "status: largest share of rejected records in the last hour, per source, "
           "that is still healthy (default 1%)", "SHARE"),
    Option("rollup_interval", "--rollup-interval", _non_negative_float,
           "ingest and import: materialize the report rollups every SECONDS in the "
           "background; 0 turns it off (then run 'pmta-pipe rollup' from cron) (default 5)",
           "SECONDS"),
    Option("rollup_grace", "--rollup-grace", _non_negative_float,
           "how long after an hour ends before the rollups materialize it; later records "
           "of a materialized hour make it count again (default 300)", "SECONDS"),
    Option("listen", "--listen", parse_listen,
           "serve: the address to listen on (default 127.0.0.1:8025); another than a loopback"
           " address needs --auth-file (or --no-auth)", "HOST:PORT"),
    Option("webhook_path", "--path", _url_path,
           "serve: the URL path PowerMTA posts accounting batches to (default /accounting)",
           "PATH"),
    Option("max_body", "--max-body", parse_size,
           "serve: largest request body, before and after gzip decoding; larger is answered"
           " 413 (default 16M)", "SIZE"),
    Option("max_inflight", "--max-inflight", parse_size,
           "serve: bytes of request bodies held in memory at once (received and decoded);"
           " more is answered 503 with Retry-After (default 32M)", "SIZE"),
    Option("auth_file", "--auth-file", _path,
           "serve: credentials, one a line: TOKEN [SOURCE] (bearer) or USER:PASSWORD [SOURCE]"
           " (basic auth); keep it mode 0600", "FILE"),
    Option("no_auth", "--no-auth", _bool,
           "serve: accept requests without credentials on a non-loopback address (behind a"
           " proxy that authenticates)", boolean=True),
    Option("tls_cert", "--tls-cert", _path,
           "serve: TLS certificate chain (PEM); with --tls-key, serve HTTPS", "FILE"),
    Option("tls_key", "--tls-key", _path, "serve: the TLS private key (PEM)", "FILE"),
    Option("alert_webhook", "--webhook", _webhook_url,
           "alerts: incoming-webhook URL (Slack, Mattermost, Teams) to post each opening and"
           " closing to, as JSON with a text field; keep it out of command lines", "URL"),
    Option("log_level", "--log-level", _level,
           "debug, info, warning or error (default info)", "LEVEL"),
)  # fmt: skip

OPTION_BY_NAME = {o.name: o for o in OPTIONS}

#: libpq variables that mean "a database is configured" even without --dsn
LIBPQ_TARGET_VARS = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE", "PGPORT")


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP) / "postgres"


#: the spool folder of a system install (created 0700 by root, or by the package for ``pmta``)
SYSTEM_SPOOL_DIR = Path("/var/spool/pmta-pipe")


def default_spool_dir() -> Path:
    """``/var/spool/pmta-pipe`` when running as root or when it exists and this user can
    write it (PowerMTA runs the pipe as ``pmta``); else the user's state directory."""
    system = SYSTEM_SPOOL_DIR
    if os.geteuid() == 0 or (system.is_dir() and os.access(system, os.W_OK | os.X_OK)):
        return system
    return platformdirs.user_state_path(APP) / "spool"


@dataclass(frozen=True)
class Settings:
    """Validated settings for one run."""

    dsn: str | None = None
    data_dir: Path | None = None
    source: str | None = None
    batch_rows: int = 5000
    batch_seconds: float = 1.0
    spool_dir: Path | None = None
    spool_max_bytes: int = 10 << 30
    drain_timeout: float = 30.0
    max_reject_share: float = 0.01
    rollup_interval: float = 5.0
    rollup_grace: float = 300.0
    listen: tuple[str, int] = ("127.0.0.1", 8025)
    webhook_path: str = "/accounting"
    max_body: int = 16 << 20
    max_inflight: int = 32 << 20
    auth_file: Path | None = None
    no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    alert_webhook: str | None = None
    log_level: str = "INFO"

    @property
    def source_name(self) -> str:
        return self.source or socket.gethostname()

    @property
    def data_path(self) -> Path:
        return self.data_dir or default_data_dir()

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or default_spool_dir()


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build ``Settings`` from parsed flags (already typed) and the environment."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    for opt in OPTIONS:
        if opt.name not in known:
            continue
        given = flags.get(opt.name)
        if given is not None:
            values[opt.name] = given
            continue
        raw = env.get(opt.env)
        if raw is None or raw == "":
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(
                f"invalid {opt.env}={raw!r}: {exc}", f"{opt.flag} {opt.metavar}: {opt.help}"
            ) from None
    return Settings(**values)
