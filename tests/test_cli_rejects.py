"""``pmta-pipe rejects``: list and retry, in real subprocesses, on rejects ``ingest`` made."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import count, run_cli

Conn = psycopg.Connection[tuple[Any, ...]]

HEADER = "type,timeLogged,orig,rcpt,dsnStatus"
GOOD_1 = "d,2026-03-01 10:00:00+0000,o@x.com,u1@gmail.com,2.0.0"
BAD_TIME = "d,yesterday,o@x.com,u2@gmail.com,2.0.0"  # position 2
TOO_WIDE = "b,2026-03-01 10:00:02+0000,sender@example.com,u3@yahoo.com,5.1.1,extra"  # position 3
GOOD_4 = "d,2026-03-01 10:00:03+0000,o@x.com,u4@gmail.com,2.0.0"
BAD_TIME_2 = "t,soon,o@x.com,u5@hotmail.com,4.0.0"  # position 5
STREAM = "\n".join((HEADER, GOOD_1, BAD_TIME, TOO_WIDE, GOOD_4, BAD_TIME_2)) + "\n"
#: when each reject's batch was received, pinned so that the output can be checked exactly
RECEIVED = {2: "2026-03-02 10:00:00+00", 3: "2026-03-03 10:00:00+00", 5: "2026-03-04 10:00:00+00"}

WIDE = "6 fields, more than the header's 5"


def ingest(env: dict[str, str], text: str) -> None:
    proc = run_cli(["ingest"], env, input=text.encode())
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.fixture
def env(cli_env: dict[str, str], conn: Conn) -> dict[str, str]:
    ingest(cli_env, STREAM)
    for position, when in RECEIVED.items():
        conn.execute(
            "UPDATE pmta.rejects SET received_at = %s WHERE position = %s", (when, position)
        )
    return cli_env


def last_line(err: str) -> str:
    """The error line: the last of stderr, after the log lines; never a traceback."""
    assert "Traceback" not in err
    return err.splitlines()[-1]


def rejects(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = run_cli(["rejects", *args], env)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def listed(env: dict[str, str], *args: str) -> Any:
    code, out, err = rejects(env, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def retry(env: dict[str, str], *args: str) -> str:
    code, out, err = rejects(env, "retry", *args)
    assert code == 0, err
    return out


def reject_rows(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT position, reason, retries, retried_at IS NOT NULL, raw_line FROM pmta.rejects"
        " ORDER BY position"
    ).fetchall()


def recipients(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT rcpt FROM pmta.events ORDER BY rcpt").fetchall()]


def retry_batches(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT source, records, inserted, duplicates, rejected FROM pmta.ingest_batches"
        " WHERE route = 'retry' ORDER BY batch_id"
    ).fetchall()


# -- list ------------------------------------------------------------------------------


def test_list_counts_by_reason_then_lists_newest_first(env: dict[str, str]) -> None:
    code, out, err = rejects(env)
    assert code == 0, err
    assert out == (
        "rejects  reason\n"
        "-------  ----------------------------------\n"
        "      1  6 fields, more than the header's 5\n"
        "      1  unreadable timeLogged 'soon'\n"
        "      1  unreadable timeLogged 'yesterday'\n"
        "\n"
        "received_at                source     stage   position  retries"
        "  reason                              raw_line\n"
        "-------------------------  ---------  ------  --------  -------"
        "  ----------------------------------  " + "-" * 60 + "\n"
        "2026-03-04 10:00:00+00:00  test-host  parser         5        0"
        "  unreadable timeLogged 'soon'        t,soon,o@x.com,u5@hotmail.com,4.0.0\n"
        "2026-03-03 10:00:00+00:00  test-host  parser         3        0"
        "  6 fields, more than the header's 5"
        "  b,2026-03-01 10:00:02+0000,sender@example.com,u3@yahoo.com,…\n"
        "2026-03-02 10:00:00+00:00  test-host  parser         2        0"
        "  unreadable timeLogged 'yesterday'   d,yesterday,o@x.com,u2@gmail.com,2.0.0\n"
        "3 rejects\n"
    )
    assert rejects(env, "list")[1] == out


def test_list_filters(env: dict[str, str]) -> None:
    def positions(*args: str) -> list[int]:
        return [r["position"] for r in listed(env, *args)["rejects"]]

    assert positions("--reason", "TIMELOGGED") == [5, 2]
    assert positions("--reason", "header's") == [3]
    assert positions("--since", "2026-03-03") == [5, 3]
    assert positions("--since", "2026-03-03T12:00:00Z") == [5]
    assert positions("--since", "2026-03-02 10:00:00+0000", "--reason", "yester") == [2]
    assert positions("--since", "7d") == []  # received in March 2026: long before "now"
    assert positions("--source", "test-host") == [5, 3, 2]
    assert positions("--source", "other-host") == []
    code, out, err = rejects(env, "--source", "other-host")
    assert (code, out) == (0, "no rejects\n"), err


def test_list_top(env: dict[str, str]) -> None:
    code, out, err = rejects(env, "--top", "1")
    assert code == 0, err
    assert out == (
        "rejects  reason\n"
        "-------  ----------------------------------\n"
        "      1  6 fields, more than the header's 5\n"
        "(2 more reasons; --top N for more)\n"
        "\n"
        "received_at                source     stage   position  retries"
        "  reason                        raw_line\n"
        "-------------------------  ---------  ------  --------  -------"
        "  ----------------------------  -----------------------------------\n"
        "2026-03-04 10:00:00+00:00  test-host  parser         5        0"
        "  unreadable timeLogged 'soon'  t,soon,o@x.com,u5@hotmail.com,4.0.0\n"
        "the newest 1 of 3 rejects (--top N for more)\n"
    )


def test_list_json(env: dict[str, str]) -> None:
    assert listed(env, "--reason", "soon") == {
        "total": 1,
        "reasons": 1,
        "by_reason": [{"reason": "unreadable timeLogged 'soon'", "rejects": 1}],
        "rejects": [
            {
                "reject_id": str(uuid.UUID(hashlib.md5(BAD_TIME_2.encode()).hexdigest())),
                "received_at": "2026-03-04T10:00:00+00:00",
                "source": "test-host",
                "stage": "parser",
                "sqlstate": None,
                "position": 5,
                "reason": "unreadable timeLogged 'soon'",
                "retries": 0,
                "retried_at": None,
                "raw_line": BAD_TIME_2,
                "header_line": HEADER,
            }
        ],
    }


# -- retry -----------------------------------------------------------------------------


def test_retry_loads_a_corrected_line_once(env: dict[str, str], conn: Conn) -> None:
    fixed = "d,2026-03-01 10:00:01+0000,o@x.com,u2@gmail.com,2.0.0"
    conn.execute("UPDATE pmta.rejects SET raw_line = %s WHERE position = 2", (fixed,))
    assert recipients(conn) == ["u1@gmail.com", "u4@gmail.com"]

    out = retry(env)
    assert out == "3 read = 1 inserted + 0 duplicates + 2 rejected; 1 of 3 reject rows resolved\n"
    assert recipients(conn) == ["u1@gmail.com", "u2@gmail.com", "u4@gmail.com"]
    row = conn.execute(
        "SELECT time_logged, source, record_type, dsn_status FROM pmta.events"
        " WHERE rcpt = 'u2@gmail.com'"
    ).fetchone()
    assert row is not None
    assert (row[0].isoformat(), row[1], row[2], row[3]) == (
        "2026-03-01T10:00:01+00:00", "test-host", "d", "2.0.0",
    )  # fmt: skip
    after_first = reject_rows(conn)
    assert after_first == [
        (3, WIDE, 1, True, TOO_WIDE),
        (5, "unreadable timeLogged 'soon'", 1, True, BAD_TIME_2),
    ]
    assert retry_batches(conn) == [("test-host", 3, 1, 0, 2)]

    # again: the record is not added twice, and the rows that still fail stay as they are
    out = retry(env)
    assert out == "2 read = 0 inserted + 0 duplicates + 2 rejected; 0 of 2 reject rows resolved\n"
    assert recipients(conn) == ["u1@gmail.com", "u2@gmail.com", "u4@gmail.com"]
    assert [r[:2] + r[3:] for r in reject_rows(conn)] == [r[:2] + r[3:] for r in after_first]
    assert [r[2] for r in reject_rows(conn)] == [2, 2]  # tried once more each
    assert retry_batches(conn) == [("test-host", 3, 1, 0, 2), ("test-host", 2, 0, 0, 2)]


def test_a_line_that_still_fails_keeps_its_row_with_the_new_reason(
    env: dict[str, str], conn: Conn
) -> None:
    still_bad = "t,2026-03-01 10:00:04+0000,o@x.com,u5@hotmail.com,4.0.0,x,y"
    conn.execute("UPDATE pmta.rejects SET raw_line = %s WHERE position = 5", (still_bad,))
    ids = {r[0] for r in conn.execute("SELECT reject_id FROM pmta.rejects").fetchall()}

    out = retry(env, "--reason", "soon")
    assert out == "1 read = 0 inserted + 0 duplicates + 1 rejected; 0 of 1 reject rows resolved\n"
    assert reject_rows(conn) == [
        (2, "unreadable timeLogged 'yesterday'", 0, False, BAD_TIME),  # not selected
        (3, WIDE, 0, False, TOO_WIDE),
        (5, "7 fields, more than the header's 5", 1, True, still_bad),
    ]
    # the same row, under the id it had (not one for its new text), and no copy of it
    assert {r[0] for r in conn.execute("SELECT reject_id FROM pmta.rejects").fetchall()} == ids
    assert recipients(conn) == ["u1@gmail.com", "u4@gmail.com"]


def _old_reject(conn: Conn, raw: str, position: int) -> None:
    """A reject as earlier versions of pmta-pipe wrote it when their framing let a stray
    quote swallow the lines after it: one row, the raw text of several records."""
    conn.execute(
        "INSERT INTO pmta.rejects (reject_id, source, reason, raw_line, position, header_line,"
        " received_at) VALUES (md5(%s)::uuid, 'test-host', %s, %s, %s, %s, %s)",
        (raw, WIDE, raw, position, HEADER, "2026-03-05 10:00:00+00"),
    )


SWALLOWED = (
    'd,2026-03-01 11:00:00+0000,o@x.com,"u6@gmail.com,2.0.0\n'
    "d,2026-03-01 11:00:01+0000,o@x.com,u7@gmail.com,2.0.0\n"
    'b,2026-03-01 11:00:02+0000,o@x.com,u8@yahoo.com",5.1.1,x'
)


def test_a_reject_of_several_records_becomes_that_many_events(
    env: dict[str, str], conn: Conn
) -> None:
    _old_reject(conn, SWALLOWED, 6)
    conn.execute("UPDATE pmta.rejects SET raw_line = replace(replace(raw_line, '\"', ''), ',x', '')"
                 " WHERE position = 6")  # fmt: skip  # the operator removes the stray quotes

    out = retry(env, "--since", "2026-03-05")
    assert out == "3 read = 3 inserted + 0 duplicates + 0 rejected; 1 of 1 reject rows resolved\n"
    assert recipients(conn) == [
        "u1@gmail.com", "u4@gmail.com", "u6@gmail.com", "u7@gmail.com", "u8@yahoo.com",
    ]  # fmt: skip
    assert [r[0] for r in reject_rows(conn)] == [2, 3, 5]
    assert retry_batches(conn) == [("test-host", 3, 3, 0, 0)]


def test_a_reject_of_several_records_is_cut_before_it_is_parsed(
    env: dict[str, str], conn: Conn
) -> None:
    # not corrected: the framing cuts the text where a record begins; the whole records
    # load, the torn one stays in the row, which keeps its whole text for the operator
    _old_reject(conn, SWALLOWED, 6)

    out = retry(env, "--since", "2026-03-05")
    assert out == "3 read = 1 inserted + 0 duplicates + 2 rejected; 0 of 1 reject rows resolved\n"
    assert recipients(conn) == ["u1@gmail.com", "u4@gmail.com", "u7@gmail.com"]
    assert reject_rows(conn)[3] == (6, "unterminated quoted field", 1, True, SWALLOWED)
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 4  # no row for each piece


def test_a_record_already_loaded_is_a_duplicate_and_its_reject_goes(
    env: dict[str, str], conn: Conn
) -> None:
    fixed = "b,2026-03-01 10:00:02+0000,sender@example.com,u3@yahoo.com,5.1.1"
    conn.execute("UPDATE pmta.rejects SET raw_line = %s WHERE position = 3", (fixed,))
    ingest(env, f"{HEADER}\n{fixed}\n")  # meanwhile loaded again, from the accounting file
    assert recipients(conn) == ["u1@gmail.com", "u3@yahoo.com", "u4@gmail.com"]

    out = retry(env, "--reason", "fields")
    assert out == "1 read = 0 inserted + 1 duplicates + 0 rejected; 1 of 1 reject rows resolved\n"
    assert recipients(conn) == ["u1@gmail.com", "u3@yahoo.com", "u4@gmail.com"]
    assert [r[0] for r in reject_rows(conn)] == [2, 5]
    assert retry_batches(conn) == [("test-host", 1, 0, 1, 0)]


def test_a_record_without_a_time_gets_the_time_it_was_first_received(
    cli_env: dict[str, str], conn: Conn
) -> None:
    ingest(cli_env, f"{HEADER}\nd,,o@x.com,u9@gmail.com,2.0.0,extra\n")
    conn.execute("UPDATE pmta.rejects SET received_at = '2026-03-05 08:00:00+00',"
                 " raw_line = 'd,,o@x.com,u9@gmail.com,2.0.0'")  # fmt: skip

    assert retry(cli_env) == (
        "1 read = 1 inserted + 0 duplicates + 0 rejected; 1 of 1 reject rows resolved\n"
    )
    row = conn.execute("SELECT time_logged, extra->>'pmtaPipeTimeFrom' FROM pmta.events").fetchone()
    assert row is not None
    assert (row[0].isoformat(), row[1]) == ("2026-03-05T08:00:00+00:00", "received")


def test_nothing_to_retry(cli_env: dict[str, str], conn: Conn) -> None:
    assert retry(cli_env) == (
        "0 read = 0 inserted + 0 duplicates + 0 rejected; 0 of 0 reject rows resolved\n"
    )
    code, out, err = rejects(cli_env, "retry", "--json")
    assert code == 0, err
    assert json.loads(out) == {"records": 0, "inserted": 0, "duplicates": 0, "rejected": 0,
                               "reject_rows": 0, "resolved": 0}  # fmt: skip


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"],
         "error: --since 'last tuesday' is not a time (hint: use an ISO timestamp"
         " (2026-01-02T15:00:00+00:00), a date (2026-01-02) or an age (90m, 24h, 7d, 2w))"),
        (["--top", "0"], "error: --top must be at least 1 (hint: e.g. --top 20)"),
        (["retry", "--top", "5"],
         "error: --top only applies to 'rejects list'"
         " (hint: narrow a retry with --since, --reason or --source)"),
        (["--top", "many"],
         "error: argument --top: invalid int value: 'many' (hint: run 'pmta-pipe rejects --help')"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors(
    cli_env: dict[str, str], args: list[str], message: str
) -> None:
    assert rejects(cli_env, *args) == (2, "", message + "\n")


def test_an_unknown_action_is_one_line_with_a_hint(cli_env: dict[str, str]) -> None:
    code, out, err = rejects(cli_env, "fix")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith("error: argument ACTION: invalid choice: 'fix'")
    assert err.endswith("(hint: run 'pmta-pipe rejects --help')\n")


@pytest.mark.parametrize("action", ["list", "retry"])
def test_unreachable_database_is_one_line(cli_env: dict[str, str], action: str) -> None:
    env = dict(cli_env, PMTA_PIPE_DSN="postgresql://nobody:s3cret@127.0.0.1:1/nowhere")
    code, out, err = rejects(env, action)
    last = last_line(err)
    assert (code, out) == (1, "")
    assert last.startswith("error: cannot use nobody@127.0.0.1:1/nowhere: connection failed:")
    assert last.endswith("(hint: check --dsn / PMTA_PIPE_DSN and that PostgreSQL is running)")
    assert "s3cret" not in err


@pytest.fixture
def stranger(dsn: str, conn: Conn, admin_dsn: str) -> Iterator[str]:
    """A login role that was granted nothing on the pmta schema."""
    name = f"pmta_t_stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_missing_grant_is_one_line_with_a_hint(
    env: dict[str, str], dsn: str, conn: Conn, stranger: str
) -> None:
    as_stranger = dict(env, PMTA_PIPE_DSN=make_conninfo(dsn, user=stranger))
    code, out, err = rejects(as_stranger)
    last = last_line(err)
    assert (code, out) == (1, ""), err
    assert last.startswith("error: ") and "permission denied for schema pmta" in last
    assert last.endswith("(hint: listing needs SELECT on pmta.rejects, which deploy/roles.sql"
                         " gives pmta_analyst: GRANT pmta_analyst TO <login>)")  # fmt: skip

    # may read the rejects, may not load: the retry stops at its first batch, changing nothing
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pmta TO {0}; GRANT SELECT ON pmta.rejects TO {0}")
                 .format(sql.Identifier(stranger)))  # fmt: skip
    code, out, err = rejects(as_stranger, "retry")
    last = last_line(err)
    assert (code, out) == (1, ""), err
    assert last.startswith("error: ") and "(hint: " in last
    assert count(conn, "SELECT count(*) FROM pmta.rejects") == 3
    assert recipients(conn) == ["u1@gmail.com", "u4@gmail.com"]
