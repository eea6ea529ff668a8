"""Which parser runs (the compiled hot path or pure Python), and the plan the C code reads.

``pmta_pipe._fastpath`` (``_fastpath.c``, built by ``pip install`` when a C compiler
and the Python headers are there) parses the ordinary records of a batch: the CSV
split, the mapping by header, ``record_id``, ``time_logged`` and its day, the int,
bigint and IPv4 checks, ``rcpt_domain``, ``extra`` and the COPY line. Every other
record it leaves to ``parse.RecordParser``'s pure-Python code, which stays the
reference (every JSON record among them: its first CSV field, beginning with ``{``,
``[`` or a blank, is no usual record type, and a JSON value without a comma has no
``timeLogged``): both give the same rows, identities, rejects and positions
(``tests/test_fastpath.py``).

``PMTA_PIPE_PARSER``: ``auto`` (the default: compiled when built), ``python`` (the
pure path, for example to rule out a bug of the compiled one) or ``compiled`` (fail
when the extension is missing). ``parser_path`` says which runs and why.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from pmta_pipe.errors import ConfigError
from pmta_pipe.fields import KNOWN_FIELDS, KNOWN_INDEX

if TYPE_CHECKING:
    from pmta_pipe.parse import Header

try:
    from pmta_pipe import _fastpath
except ImportError as exc:  # not built (no compiler), or built for another Python
    _fastpath = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

ENV = "PMTA_PIPE_PARSER"
CHOICES = ("auto", "compiled", "python")
COMPILED = "compiled"
PYTHON = "python"

#: the kind of each of KNOWN_FIELDS as the C code reads it
_KINDS = bytes(
    ord({"text": "s", "time": "t", "int": "i", "bigint": "b", "inet": "n"}[f.type])
    for f in KNOWN_FIELDS
)
_RCPT = KNOWN_INDEX["rcpt"]

#: (width, time_logged, known, kinds, rcpt, ident_extras, json_extras, extras_ok)
Plan = tuple[
    int,
    int,
    tuple[int, ...],
    bytes,
    int,
    tuple[tuple[int, bytes], ...],
    tuple[tuple[int, bytes], ...],
    bool,
]


def available() -> bool:
    """Whether the compiled extension is built and imports."""
    return _fastpath is not None


def parser_path() -> tuple[str, str]:
    """(``"compiled"`` or ``"python"``, why), as ``PMTA_PIPE_PARSER`` and the build decide.

    Raises ``ConfigError`` for ``PMTA_PIPE_PARSER=compiled`` when the extension is
    missing, and for a value that is none of ``CHOICES``."""
    choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(
            f"{ENV}={os.environ.get(ENV)!r} is not one of {', '.join(CHOICES)}",
            f"unset {ENV}, or set it to 'python' or 'compiled'",
        )
    if choice == PYTHON:
        return PYTHON, f"pure Python: {ENV}=python"
    if _fastpath is not None:
        return COMPILED, "compiled C extension"
    if choice == COMPILED:
        raise ConfigError(
            f"{ENV}=compiled, but the compiled parser is not built ({_IMPORT_ERROR})",
            "install pmta-pipe where a C compiler and the Python headers are"
            " (build-essential python3-dev), or unset " + ENV,
        )
    return PYTHON, "pure Python: the compiled extension is not built"


def describe() -> str:
    """The parser in use, in words (``--version``, ``status``); never raises."""
    try:
        return parser_path()[1]
    except ConfigError as exc:
        return f"none: {exc.message}"


def plan(header: Header) -> Plan | None:
    """What the C code needs of ``header``, or ``None`` when every record of it must take
    the pure path (a header without timeLogged: every record takes a fallback time)."""
    if header.time_logged >= header.width:
        return None
    names = [name for _, name in header.extras]
    # values of other columns go into ``extra`` by C only when json.dumps would write
    # no escape in a name and no two names are the same (a dict keeps one of them)
    json_names = [json.dumps(name, ensure_ascii=False) for name in names]
    extras_ok = len(set(names)) == len(names) and not any("\\" in j for j in json_names)
    ident = tuple(sorted(((i, name.encode()) for i, name in header.extras), key=_second))
    as_json = tuple(
        (i, (j + ": ").encode()) for (i, _), j in zip(header.extras, json_names, strict=True)
    )
    return (
        header.width,
        header.time_logged,
        tuple(header.known),
        _KINDS,
        _RCPT,
        ident,
        as_json,
        extras_ok,
    )


def _second(pair: tuple[int, bytes]) -> bytes:
    return pair[1]


def parse(
    records: list[bytes], start: int, plan: Plan, source: bytes
) -> tuple[int, list[str], list[str], list[str], list[str], set[int], list[int]]:
    """``_fastpath.parse``: see ``_fastpath.c``."""
    assert _fastpath is not None
    return _fastpath.parse(records, start, plan, source)
