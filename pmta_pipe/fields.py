"""The PowerMTA accounting fields pmta-pipe knows, and the columns of ``pmta.events``.

A *known* field has a typed column named by snake-casing its PowerMTA name
(``dlvSourceIp`` -> ``dlv_source_ip``); names match case-insensitively, because
PowerMTA's own documentation spells some of them two ways (``envId``/``envid``,
``reportingMta``/``reportingMTA``). Every other column of a header (``header_*``,
``arf_*``, ``userString``, names added by later PowerMTA versions) is kept in
``events.extra`` under its original name.

``EVENT_COLUMNS`` is the column order of ``pmta.events`` and of every COPY into it;
migration ``0001`` creates the table with exactly these columns (a test checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FieldType = Literal["text", "time", "int", "bigint", "inet"]


@dataclass(frozen=True)
class Field:
    """A PowerMTA accounting field with a typed column of its own."""

    name: str  # PowerMTA's spelling, as in its documentation
    column: str  # column of pmta.events
    type: FieldType


def snake_case(name: str) -> str:
    """``dlvSourceIp`` -> ``dlv_source_ip``; ``reportingMTA`` -> ``reporting_mta``."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    return s.lower()


def _f(name: str, type_: FieldType = "text") -> Field:
    return Field(name, snake_case(name), type_)


# Every field of d, b, t, tq, r, f, rb and rs records in PowerMTA's guide (v4.0 to v5.5),
# except ``type`` and ``timeLogged``, which have columns of their own (record_type, time_logged).
KNOWN_FIELDS: tuple[Field, ...] = (
    _f("timeQueued", "time"),
    _f("timeImprinted", "time"),
    _f("timeFirstAttempt", "time"),
    _f("totalSecondsQueued", "int"),
    _f("orig"),
    _f("rcpt"),
    _f("orcpt"),
    _f("dsnAction"),
    _f("dsnStatus"),
    _f("dsnDiag"),
    _f("dsnMta"),
    _f("bounceCat"),
    _f("srcType"),
    _f("srcMta"),
    _f("dlvType"),
    _f("dlvSourceIp", "inet"),
    _f("dlvDestinationIp", "inet"),
    _f("dlvEsmtpAvailable"),
    _f("dlvSize", "bigint"),
    _f("dlvTlsProtocol"),
    _f("dlvTlsCipher"),
    _f("vmta"),
    _f("vmtaPool"),
    _f("jobId"),
    _f("envId"),
    _f("queue"),
    _f("rcvSmtpUser"),
    _f("rcvSourceIp", "inet"),
    _f("rcvDestinationIp", "inet"),
    _f("dsnReportingMta"),
    _f("format"),
    _f("feedbackType"),
    _f("userAgent"),
    _f("reportingMta"),
    _f("reportedDomain"),
    _f("repSourceIp", "inet"),
)

TYPE_FIELD = "type"
TIME_LOGGED_FIELD = "timeLogged"

#: lower-cased PowerMTA name -> index into KNOWN_FIELDS
KNOWN_INDEX: dict[str, int] = {f.name.lower(): i for i, f in enumerate(KNOWN_FIELDS)}

#: Columns of pmta.events in table order. The known fields sit between the
#: identity columns and the derived ones, in KNOWN_FIELDS order.
EVENT_COLUMNS: tuple[str, ...] = (
    "time_logged",
    "record_id",
    "record_type",
    "source",
    *(f.column for f in KNOWN_FIELDS),
    "rcpt_domain",
    "extra",
)

#: PowerMTA v5 default field order, used for input that has no header line at all.
DEFAULT_V5_HEADER: tuple[str, ...] = (
    "type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt", "dsnAction", "dsnStatus",
    "dsnDiag", "dsnMta", "bounceCat", "srcType", "srcMta", "dlvType", "dlvSourceIp",
    "dlvDestinationIp", "dlvEsmtpAvailable", "dlvSize", "vmta", "jobId", "envId", "queue",
    "vmtaPool",
)  # fmt: skip

#: Record types PowerMTA writes; any other type string is stored as it is.
RECORD_TYPES: dict[str, str] = {
    "d": "delivered",
    "b": "bounced (locally generated; bounceCat message-expired = expired)",
    "t": "transient failure (deferral), one per failed attempt",
    "tq": "transient queue-wide failure",
    "r": "received",
    "f": "feedback-loop complaint (ARF/JMRP)",
    "rb": "remote (asynchronous) bounce",
    "rs": "remote status (DSN)",
}
