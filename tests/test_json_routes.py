"""JSON accounting through every route, against a real PostgreSQL, every row counted:
``ingest`` (a subprocess reading a pipe), ``import`` (compressed files, the ledger, a torn
last object), ``replay`` (a spooled JSON batch), and one identity with the CSV form."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import zstandard

from pmta_pipe.parse import NO_TYPE_JSON, TORN, UNTERMINATED_JSON
from pmta_pipe.spool import SpoolWriter
from tests.conftest import count, run_cli
from tests.helpers import stream

Conn = psycopg.Connection[tuple[object, ...]]


def as_json(data: bytes, keep_empty: bool = True) -> list[dict[str, str]]:
    """The records of a CSV stream with a header as JSON objects (empty fields left out
    when ``keep_empty`` is False, as records of other types lack them)."""
    rows = csv.reader(io.StringIO(data.decode()))
    header = next(rows)
    return [
        {k: v for k, v in zip(header, row, strict=True) if keep_empty or v}
        for row in rows
        if row and row[0] != "type"
    ]


def ndjson(objects: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def events(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.events")


def rejects(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM pmta.rejects")


def summary_of(proc: object) -> dict[str, object]:
    stdout = getattr(proc, "stdout", b"")
    assert stdout, getattr(proc, "stderr", b"").decode()
    result: dict[str, object] = json.loads(stdout)
    return result


def imported(cli_env: dict[str, str], *paths: Path) -> dict[str, object]:
    proc = run_cli(["import", *map(str, paths), "--format", "json"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    return summary_of(proc)


def write_old(path: Path, data: bytes, seconds: float = 3600) -> Path:
    """Write ``path``, modified ``seconds`` ago (PowerMTA no longer writes it)."""
    path.write_bytes(data)
    old = time.time() - seconds
    os.utime(path, (old, old))
    return path


def test_ndjson_through_ingest_with_bad_lines(cli_env: dict[str, str], conn: Conn) -> None:
    objects = as_json(stream(3000, days=2, seed=41), keep_empty=False)
    bad = [
        b'{"type":"d","rcpt":"torn',
        b'{"type":"d" "rcpt":"x"}',
        b"42",
        b"[1, 2]",
        b'{"rcpt":"no type"}',
        b'{"type":"d","rcpt":{"nested":"x"}}',
    ]
    lines = [json.dumps(o).encode() for o in objects]
    for k, line in enumerate(bad):  # each bad line before a good one
        lines.insert(400 * (k + 1), line)
    data = b"\n".join(lines) + b"\n"
    proc = run_cli(["ingest"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert events(conn) == 3000
    assert rejects(conn) == 6
    got = conn.execute("SELECT position, raw_line, reason FROM pmta.rejects ORDER BY position")
    rows = got.fetchall()
    assert [r[1] for r in rows] == [b.decode() for b in bad]
    assert [r[0] for r in rows] == [400 * (k + 1) + 1 for k in range(6)]
    assert (rows[0][2], rows[4][2]) == (UNTERMINATED_JSON, NO_TYPE_JSON)
    assert rows[2][2] == "not a JSON object but a number"
    # the record after each bad line loaded
    for k in range(6):
        rcpt = objects[400 * (k + 1) - k]["rcpt"]
        assert count(conn, "SELECT count(*) FROM pmta.events WHERE rcpt = %s", rcpt) >= 1
    assert count(conn, "SELECT sum(records) FROM pmta.ingest_batches") == 3006


def test_pretty_printed_array_and_back_to_back_through_ingest(
    cli_env: dict[str, str], conn: Conn
) -> None:
    objects = as_json(stream(1500, days=1, seed=42))
    pretty = json.dumps(objects[:1000], indent=2).encode()
    proc = run_cli(["ingest"], cli_env, input=pretty, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (1000, 0)
    glued = b"".join(json.dumps(o).encode() for o in objects)  # all 1500, no separator
    proc = run_cli(["ingest"], cli_env, input=glued, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (1500, 0)
    assert b"500 inserted, 1000 duplicates" in proc.stderr


def test_the_reference_samples_through_ingest(cli_env: dict[str, str], conn: Conn) -> None:
    from tests.test_json_parse import JSON_SAMPLES

    proc = run_cli(["ingest"], cli_env, input=JSON_SAMPLES.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (2, 0)
    row = conn.execute(
        "SELECT record_type, time_logged = '2013-10-21 17:49:48+00', rcpt_domain"
        " FROM pmta.events WHERE record_type = 'd'"
    ).fetchone()
    assert row == ("d", True, "postmastery.net")
    row = conn.execute(
        "SELECT dlv_tls_cipher, host(dlv_source_ip), extra->>'header_x-job'"
        " FROM pmta.events WHERE record_type = 't'"
    ).fetchone()
    assert row == ("ECDHE-RSA-AES256-GCM-SHA384", "172.20.0.10", "258654")


def test_compressed_json_files_through_import(
    cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    compress = {
        "acct-1.json.gz": gzip.compress,
        "acct-2.json.bz2": bz2.compress,
        "acct-3.json.xz": lzma.compress,
        "acct-4.json.zst": lambda d: zstandard.ZstdCompressor().compress(d),
    }
    paths = []
    for n, (name, pack) in enumerate(compress.items(), start=1):
        objects = as_json(
            stream(1000, days=1, seed=50 + n, start=f"2026-0{n}-01"), keep_empty=n % 2 == 0
        )
        body = ndjson(objects) if n != 2 else json.dumps(objects).encode()  # one is an array
        paths.append(write_old(tmp_path / name, pack(body)))
    summary = imported(cli_env, *paths)
    assert [(f["status"], f["records"], f["inserted"]) for f in summary["per_file"]] == [  # type: ignore[attr-defined, index]
        ("imported", 1000, 1000)
    ] * 4
    assert (events(conn), rejects(conn)) == (4000, 0)
    again = imported(cli_env, *paths)  # the ledger: unchanged files are skipped
    assert [f["status"] for f in again["per_file"]] == ["skipped"] * 4  # type: ignore[attr-defined, index]
    forced = run_cli(["import", "--force", str(paths[0]), "--format", "json"], cli_env)
    assert forced.returncode == 0, forced.stderr.decode()
    assert summary_of(forced)["duplicates"] == 1000
    assert (events(conn), rejects(conn)) == (4000, 0)


def test_csv_then_json_adds_no_row(cli_env: dict[str, str], conn: Conn, tmp_path: Path) -> None:
    data = stream(2000, days=2, seed=60)
    csv_file = write_old(tmp_path / "acct.csv", data)
    json_file = write_old(tmp_path / "acct.json.gz", gzip.compress(ndjson(as_json(data, False))))
    first = imported(cli_env, csv_file)
    assert (first["inserted"], events(conn)) == (2000, 2000)
    ids = conn.execute("SELECT array_agg(record_id ORDER BY record_id) FROM pmta.events").fetchone()
    second = imported(cli_env, json_file)
    assert (second["records"], second["inserted"], second["duplicates"]) == (2000, 0, 2000)
    assert events(conn) == 2000
    after = conn.execute(
        "SELECT array_agg(record_id ORDER BY record_id) FROM pmta.events"
    ).fetchone()
    assert after == ids


def test_json_then_csv_adds_no_row(cli_env: dict[str, str], conn: Conn) -> None:
    data = stream(2000, days=2, seed=61)
    shuffled = [dict(sorted(o.items(), reverse=True)) for o in as_json(data)]  # another order
    proc = run_cli(["ingest"], cli_env, input=ndjson(shuffled), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert events(conn) == 2000
    proc = run_cli(["ingest", "--source", "other-host"], cli_env, input=data, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"0 inserted, 2000 duplicates" in proc.stderr
    assert (events(conn), rejects(conn)) == (2000, 0)


def test_a_spooled_json_batch_through_replay(cli_env: dict[str, str], conn: Conn) -> None:
    objects = as_json(stream(500, days=1, seed=62), keep_empty=False)
    from tests.helpers import framed

    records = framed(json.dumps(objects, indent=1).encode() + b'\n{"rcpt": "no type"}\n')
    assert len(records) == 501
    writer = SpoolWriter(Path(cli_env["PMTA_PIPE_SPOOL_DIR"]), "crashed-host", max_bytes=1 << 30)
    received = datetime(2026, 3, 1, tzinfo=timezone.utc)
    writer.append(records[:300], received)
    writer.append(records[300:], received)
    assert writer.close() == 2  # left for recovery, as a crashed ingest leaves it
    proc = run_cli(["replay"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (500, 1)
    assert (
        count(conn, "SELECT count(DISTINCT source) FROM pmta.events WHERE source = 'crashed-host'")
        == 1
    )
    assert count(conn, "SELECT position FROM pmta.rejects") == 501
    proc = run_cli(["ingest"], cli_env, input=ndjson(objects))  # the same records again
    assert proc.returncode == 0, proc.stderr.decode()
    assert events(conn) == 500


def test_a_torn_last_json_object(cli_env: dict[str, str], conn: Conn, tmp_path: Path) -> None:
    objects = as_json(stream(200, days=1, seed=63))
    whole = json.dumps(objects, indent=2).encode()
    cut_at = whole.rindex(b'"rcpt"')  # inside the last object, after a line break
    recent = tmp_path / "acct-recent.json"
    recent.write_bytes(whole[:cut_at])
    summary = imported(cli_env, recent)
    assert (events(conn), rejects(conn)) == (199, 0)  # the open object is held back
    recent.write_bytes(whole)  # PowerMTA finished writing it
    summary = imported(cli_env, recent)
    assert summary["inserted"] == 1 and summary["duplicates"] == 0
    assert (events(conn), rejects(conn)) == (200, 0)

    old = tmp_path / "acct-old.json"
    more = as_json(stream(100, days=1, seed=64, start="2026-05-01"))
    write_old(old, ndjson(more)[:-20])  # the last object torn inside a string
    summary = imported(cli_env, old)
    assert (events(conn), rejects(conn)) == (299, 1)
    (reason,) = conn.execute("SELECT reason FROM pmta.rejects").fetchone() or ("",)
    assert reason == TORN
    write_old(old, ndjson(more))  # the whole file: the torn reject is resolved
    summary = imported(cli_env, old)
    assert summary["inserted"] == 1
    assert (events(conn), rejects(conn)) == (300, 0)


def test_rejects_retry_reads_json_rejects_as_json(cli_env: dict[str, str], conn: Conn) -> None:
    good = b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000","rcpt":"a@b.c"}'
    data = (
        b"\n".join([good, b"42", b'{"rcpt":"no type"}', b"[1, 2]", b'{"type":"d","rcpt":']) + b"\n"
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (1, 4)
    before = conn.execute("SELECT raw_line, reason FROM pmta.rejects ORDER BY position").fetchall()
    proc = run_cli(["rejects", "retry"], cli_env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (1, 4)  # none becomes an event, none is lost
    after = conn.execute("SELECT raw_line, reason FROM pmta.rejects ORDER BY position").fetchall()
    assert after == before


def test_numbers_null_and_booleans_load_as_their_text(cli_env: dict[str, str], conn: Conn) -> None:
    data = (
        b'{"type": "d", "timeLogged": 1768486991, "dlvSize": 4096, "totalSecondsQueued": 12,'
        b' "rcpt": "a@b.c", "dsnMta": null, "x-flag": true, "x-ratio": 0.25}\n'
    )
    proc = run_cli(["ingest"], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    row = conn.execute(
        "SELECT time_logged = '2026-01-15 14:23:11+00', dlv_size, total_seconds_queued, dsn_mta,"
        " extra FROM pmta.events"
    ).fetchone()
    assert row == (True, 4096, 12, None, {"x-flag": "true", "x-ratio": "0.25"})
    assert rejects(conn) == 0


def test_the_pipe_ending_inside_a_json_object(cli_env: dict[str, str], conn: Conn) -> None:
    first = b'{"type":"d","timeLogged":"2026-01-15 14:23:11+0000","rcpt":"a@b.c"}'
    last = b'{"type":"b","timeLogged":"2026-01-15 14:23:12+0000","rcpt":"d@e.f"}'
    proc = run_cli(["ingest"], cli_env, input=first + b"\n" + last[:-9])  # cut inside it
    assert proc.returncode == 0, proc.stderr.decode()
    assert (events(conn), rejects(conn)) == (1, 1)
    reason = conn.execute("SELECT reason FROM pmta.rejects").fetchone()
    assert reason == (TORN,)
    proc = run_cli(["ingest"], cli_env, input=first + b"\n" + last)  # closed: whole, no break
    assert proc.returncode == 0, proc.stderr.decode()
    assert events(conn) == 2
