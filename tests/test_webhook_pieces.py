"""The webhook's pure pieces: the auth file and its check, body decoding, the memory budget."""

from __future__ import annotations

import base64
import gzip
import logging
import re
from pathlib import Path

import pytest

from pmta_pipe.bodies import BodyError, Budget, Claim, is_gzip, read_records
from pmta_pipe.config import parse_listen, resolve
from pmta_pipe.errors import ConfigError
from pmta_pipe.webhook_auth import load_credentials, parse_credentials

TOKEN = "0123456789abcdef0123456789abcdef"


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_auth_file_lines_and_checks() -> None:
    creds = parse_credentials(
        f"# comment\n\n{TOKEN} mta-1   # trailing comment\nops:pw-1\n{TOKEN[::-1]}\n"
    )
    assert [(c.kind, c.source, c.line) for c in creds.entries] == [
        ("bearer", "mta-1", 3), ("basic", None, 4), ("bearer", None, 5),
    ]  # fmt: skip
    ok = creds.check(f"Bearer {TOKEN}")
    assert ok.ok and ok.source == "mta-1"
    assert creds.check(f"bearer   {TOKEN[::-1]}").ok  # the scheme in any case
    assert creds.check(basic("ops:pw-1")).ok
    for header, why in [
        (None, "credentials required"),
        ("", "credentials required"),
        (f"Bearer {TOKEN[:-1]}", "invalid credentials"),
        (basic("ops:pw-2"), "invalid credentials"),
        (f"Basic {base64.b64encode(TOKEN.encode()).decode()}", "invalid credentials"),
        ("Bearer ops:pw-1", "invalid credentials"),  # a basic secret as a token: no
        ("Basic !!!", "malformed basic credentials"),
        ("Digest x", "unsupported authorization scheme 'digest'"),
    ]:
        verdict = creds.check(header)
        assert not verdict.ok and verdict.why.startswith(why), (header, verdict)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no credential"),
        ("# only a comment\n", "holds no credential"),
        (f"{TOKEN} a b\n", "line 1: expected TOKEN [SOURCE] or USER:PASSWORD [SOURCE]"),
        ("short\n", "line 1: a bearer token of 5 characters is too short"),
        (":pw\n", "line 1: basic credentials need USER:PASSWORD"),
        ("user:\n", "line 1: basic credentials need USER:PASSWORD"),
    ],
)
def test_bad_auth_files(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_credentials(text)


def test_auth_file_mode_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "auth"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        load_credentials(path)
    assert not caplog.records
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        load_credentials(path)
    assert "may be read by others (mode 0640)" in caplog.text
    with pytest.raises(ConfigError, match="cannot read --auth-file"):
        load_credentials(tmp_path / "missing")


def test_gzip_is_told_by_header_or_bytes() -> None:
    assert is_gzip("gzip", "", b"ty")
    assert is_gzip("X-GZIP", "", b"ty")
    assert is_gzip("", "gzip, chunked", b"ty")
    assert is_gzip("", "", b"\x1f\x8b")
    assert not is_gzip("identity", "chunked", b"ty")
    with pytest.raises(BodyError, match="unsupported Content-Encoding 'br'") as e:
        is_gzip("br", "", b"ty")
    assert e.value.status == 400


def texts(data: bytes, gzipped: bool, take: list[int] | None = None) -> bytes:
    got = read_records(data, gzipped, 1 << 20, 1000, (take if take is not None else []).append)
    return b"".join(r + b"\n" for batch in got.batches for r in batch)


def test_read_records_gzip_members_padding_limits() -> None:
    taken: list[int] = []
    text = b"type,timeLogged\nd,2026-01-01 00:00:00+0000\n" * 1000
    two = gzip.compress(text) + gzip.compress(text) + b"\x00" * 8  # members and padding
    assert texts(two, True, taken) == text + text
    assert sum(taken) == 2 * len(text)  # the decoded bytes, piece by piece
    assert texts(text, False) == text
    with pytest.raises(BodyError) as e:
        read_records(gzip.compress(b"x" * (3 << 20)), True, 1 << 20, 1000, lambda n: None)
    assert e.value.status == 413 and "larger than --max-body" in e.value.why
    for bad, why in [
        (gzip.compress(text)[:-20], "ends before its end"),
        (b"\x1f\x8b\x08\x00garbage", "ends before its end"),  # a header cut short
        (b"\x1f\x8b\x07" + b"\x00" * 20, "not valid gzip"),  # an unknown method
        (gzip.compress(text) + b"trailing junk", "not valid gzip"),
    ]:
        with pytest.raises(BodyError, match=why) as e:
            read_records(bad, True, 1 << 20, 1000, lambda n: None)
        assert e.value.status == 400


def test_read_records_in_batches_and_torn_flag() -> None:
    data = b"type,timeLogged,rcpt\n" + b"".join(
        b"d,2026-01-01 00:00:%02d+0000,r%d@x.com\n" % (i % 60, i) for i in range(12)
    )
    got = read_records(gzip.compress(data), True, 1 << 20, 5, lambda n: None)
    assert [len(b) for b in got.batches] == [5, 5, 3]  # the header line is a record
    assert not got.torn and got.decoded_bytes == len(data)
    assert read_records(b'type,rcpt\nd,"open quote', False, 1 << 20, 5, lambda n: None).torn
    empty = read_records(b"", False, 1 << 20, 5, lambda n: None)
    assert (empty.batches, empty.torn) == ([], False)
    # JSON is told apart by the splitter: an array of objects, one record each
    arr = b'[{"type": "d", "rcpt": "a@x.com"}, {"type": "b", "rcpt": "b@x.com"}]'
    assert [len(b) for b in read_records(arr, False, 1 << 20, 5, lambda n: None).batches] == [2]


def test_budget_refuses_others_but_never_a_request_alone() -> None:
    budget = Budget(100)
    a, b = Claim(budget), Claim(budget)
    a.take(80)
    with pytest.raises(BodyError) as e:
        b.take(30)
    assert e.value.status == 503 and budget.used == 80
    a.take(500)  # alone: always gets what it needs
    assert budget.used == 580
    a.release()
    b.take(30)
    assert budget.used == 30
    b.release()
    assert budget.used == 0


def test_listen_addresses_and_the_no_auth_variable() -> None:
    assert parse_listen("127.0.0.1:8025") == ("127.0.0.1", 8025)
    assert parse_listen(" [::1]:80 ") == ("::1", 80)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("localhost:9") == ("localhost", 9)
    for bad in ("8025", ":8025", "::1:80", "[::1:80", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert resolve({}, env={}).listen == ("127.0.0.1", 8025)
    assert resolve({}, env={"PMTA_PIPE_LISTEN": "10.0.0.1:81"}).listen == ("10.0.0.1", 81)
    assert resolve({}, env={"PMTA_PIPE_NO_AUTH": "yes"}).no_auth is True
    assert resolve({}, env={"PMTA_PIPE_NO_AUTH": "0"}).no_auth is False
    assert resolve({"no_auth": True}, env={"PMTA_PIPE_NO_AUTH": "0"}).no_auth is True
    with pytest.raises(ConfigError, match="PMTA_PIPE_NO_AUTH"):
        resolve({}, env={"PMTA_PIPE_NO_AUTH": "maybe"})
