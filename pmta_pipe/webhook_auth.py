"""Who may post to ``pmta-pipe serve``: the ``--auth-file``, and a request's credentials checked.

The file holds one credential a line; ``#`` starts a comment, blank lines are skipped::

    TOKEN [SOURCE]              a bearer token:  Authorization: Bearer TOKEN
    USER:PASSWORD [SOURCE]      basic auth:      Authorization: Basic base64(USER:PASSWORD)

A credential with a ``:`` is a user and password, one without is a token (so a token
never holds a ``:``). ``SOURCE``, when given, is the source name stored on every record
posted with that credential (it wins over the request's ``X-Pmta-Source`` header).
Every credential is compared, each in constant time (``hmac.compare_digest``), so the
time an answer takes tells nothing about how much of a secret was right. The file
is read once at start; a file that group or others may read is a WARNING (keep it
mode 0600, owned by the user ``serve`` runs as).

Pure apart from reading the file; ``serve`` turns a failed check into ``401``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from pmta_pipe.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credential:
    """One line of the auth file: ``kind`` is ``bearer`` or ``basic``."""

    kind: str
    secret: bytes  # the token, or USER:PASSWORD, as bytes
    source: str | None
    line: int


@dataclass(frozen=True)
class Verdict:
    """The check of one request: ``ok``, and the credential's source name if it has one."""

    ok: bool
    source: str | None = None
    why: str = ""


class Credentials:
    """The credentials of an auth file; ``check`` an ``Authorization`` header against them."""

    def __init__(self, entries: list[Credential]) -> None:
        self.entries = entries

    def check(self, authorization: str | None) -> Verdict:
        if not authorization:
            return Verdict(False, why="credentials required (Authorization: Bearer or Basic)")
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            kind, given = "bearer", value.encode("utf-8", "surrogateescape")
        elif scheme == "basic":
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return Verdict(False, why="malformed basic credentials")
            kind = "basic"
        else:
            return Verdict(False, why=f"unsupported authorization scheme {scheme!r}")
        found: Credential | None = None
        for entry in self.entries:  # every entry compared: no early exit on a match
            same = hmac.compare_digest(entry.secret, given)
            if same and entry.kind == kind and found is None:
                found = entry
        if found is None:
            return Verdict(False, why="invalid credentials")
        return Verdict(True, found.source)


def parse_credentials(text: str, name: str = "auth file") -> Credentials:
    """Read the lines of an auth file; a line that is not a credential is a ``ConfigError``."""
    entries: list[Credential] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ConfigError(
                f"{name} line {number}: expected TOKEN [SOURCE] or USER:PASSWORD [SOURCE],"
                f" got {len(parts)} words",
                "one credential a line; a source name has no spaces",
            )
        secret = parts[0]
        source = parts[1] if len(parts) == 2 else None
        if ":" in secret:
            user, _, password = secret.partition(":")
            if not user or not password:
                raise ConfigError(f"{name} line {number}: basic credentials need USER:PASSWORD")
            kind = "basic"
        else:
            kind = "bearer"
            if len(secret) < 16:
                raise ConfigError(
                    f"{name} line {number}: a bearer token of {len(secret)} characters is too"
                    " short (at least 16)",
                    "make one with: openssl rand -hex 32",
                )
        entries.append(Credential(kind, secret.encode(), source, number))
    if not entries:
        raise ConfigError(f"{name} holds no credential", "add a line TOKEN [SOURCE]")
    return Credentials(entries)


def load_credentials(path: Path) -> Credentials:
    """Read ``--auth-file``; WARNING when group or others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read --auth-file {path}: {exc.strerror or exc}",
            "give a readable file of credentials (see docs/reference.md, pmta-pipe serve)",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--auth-file {path} is not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--auth-file %s may be read by others (mode %04o): chmod 0600 it",
                    path, stat.S_IMODE(mode))  # fmt: skip
    return parse_credentials(text, f"--auth-file {path}")
