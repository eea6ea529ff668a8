"""A pytest plugin: every ``RecordParser.parse`` runs both parsers and compares them.

``python -m pytest -p tests.twin_parser tests/test_parse.py ...`` runs those tests
with every parse call of a compiled parser repeated on a pure-Python twin (the
same header, header line and next position), and fails the test at the first call
whose results differ in anything (``tests.test_fastpath.assert_same``). The tests'
own assertions still see the compiled parser's results. ``test_fastpath`` runs the
parser tests this way, so each of their hostile inputs is a differential case.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from pmta_pipe.parse import ParsedBatch, RecordParser

_parse = RecordParser.parse
calls = 0


def _twin_parse(
    self: RecordParser,
    records: Sequence[bytes],
    received_at: datetime,
    first_position: int | None = None,
    *,
    torn_last: bool = False,
) -> ParsedBatch:
    global calls
    if not self.compiled:
        return _parse(self, records, received_at, first_position, torn_last=torn_last)
    from tests.test_fastpath import assert_same

    records = list(records)
    twin = copy.copy(self)
    twin.__class__ = RecordParser  # the base parse only, as self's is called below
    twin.compiled = False
    ref = _parse(twin, records, received_at, first_position, torn_last=torn_last)
    got = _parse(self, records, received_at, first_position, torn_last=torn_last)
    assert_same(got, ref)
    assert self.header.names == twin.header.names
    assert (self.header_line, self.next_position) == (twin.header_line, twin.next_position)
    calls += 1
    return got


RecordParser.parse = _twin_parse  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: object) -> None:
    print(f"\ntwin parser: {calls} parse calls compared, compiled against pure Python")
