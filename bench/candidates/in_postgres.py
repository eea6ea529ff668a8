"""Candidate 3: parsing inside PostgreSQL (COPY raw, type and hash in one INSERT … SELECT).

``--mode staged``: Python frames the records (as ingest must, for the spool and the
positions), drops header lines and COPYs each batch of 5,000 raw records as CSV, by
the header's column list, into an all-text temporary table; one ``INSERT INTO
pmta.events … SELECT`` per batch then computes everything parse.py computes for a
usual record: ``md5`` over the same text as parse.py's identity (type, timeLogged,
every known field, absent or empty as '', joined by 0x1f; other columns with values
after 0x1e as ``name 0x1d value``, in name order), the casts of timestamps, addresses
and integers behind parse.py's regular expressions (a value that fails becomes
NULL: parse.py would keep it in ``extra``, not done here), ``rcpt_domain``.

``--mode rendered``: the reference, today's path as far as PostgreSQL is concerned:
``RecordParser.parse`` + ``render_copy`` in Python and ``COPY pmta.events`` (text).

Both modes run in a database of their own (``--dsn``'s server, database
``pmta_bench_candidates``, created with the project's migrations and dropped at
the end), one transaction per batch. The backend's CPU time is read from
``/proc/PID/stat`` of the session's backend (same machine; ``pg_stat_statements``
is not loaded on this server and gives no CPU time anyway), with the statements'
wall time. ``--check`` loads the baseline's COPY text into a copy of the table after
the staged load and compares the two tables row for row (``EXCEPT`` both ways).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from common import RECEIVED_AT, SOURCE, Timer, emit, record_batches

DB = "pmta_bench_candidates"
_CANON = r"^\d{4}-\d\d-\d\d[ T]([01]\d|2[0-3]):[0-5]\d:[0-5]\d[+-]([01]\d|2[0-3]):?[0-5]\d$"
_PATTERNS = {
    "int": r"^(0|-?[1-9][0-9]{0,8})$",
    "bigint": r"^(0|-?[1-9][0-9]{0,17})$",
    "inet": r"^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$",
    "time": _CANON,
}
_CASTS = {"int": "integer", "bigint": "bigint", "inet": "inet", "time": "timestamptz"}


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert_select(header: Any, names: list[str]) -> str:
    """The ``INSERT … SELECT`` from the staging table, for this header."""
    from pmta_pipe.fields import EVENT_COLUMNS, KNOWN_FIELDS

    width = header.width

    def raw(i: int) -> str:
        return "''" if i >= width else f"coalesce({_ident(names[i])}, '')"

    def typed(i: int, type_: str) -> str:
        if i >= width:
            return "NULL"
        col = _ident(names[i])
        if type_ == "text":
            return f"NULLIF({col}, '')"
        return f"CASE WHEN {col} ~ {_lit(_PATTERNS[type_])} THEN {col}::{_CASTS[type_]} END"

    parts = [raw(0), raw(header.time_logged), *(raw(i) for i in header.known)]
    ident = "concat_ws(E'\\x1f', " + ", ".join(parts) + ")"
    extras = sorted(header.extras, key=lambda e: e[1])
    if extras:
        pairs = ", ".join(
            f"CASE WHEN {col} <> '' THEN {_lit(k)} || E'\\x1d' || {col} END"
            for col, k in ((_ident(names[i]), k) for i, k in extras)
        )
        ident = f"{ident} || coalesce(E'\\x1e' || NULLIF(concat_ws(E'\\x1f', {pairs}), ''), '')"
    tl = typed(header.time_logged, "time")
    fallbacks = [typed(header.known[k], "time") for k in header.fallbacks]
    rcpt = _ident(names[header.known[5]]) if header.known[5] < width else "NULL"
    values = [
        f"coalesce({tl}, {', '.join(fallbacks)}, {_lit(RECEIVED_AT.isoformat())}::timestamptz)",
        f"md5({ident})::uuid",
        f"btrim({_ident(names[0])})",
        _lit(SOURCE),
        *(typed(header.known[k], f.type) for k, f in enumerate(KNOWN_FIELDS)),
        f"NULLIF(lower(btrim(btrim(substring({rcpt} from '@([^@]*)$')), '>')), '')",
        "NULL",
    ]
    return (
        f"INSERT INTO pmta.events ({', '.join(EVENT_COLUMNS)})\nSELECT "
        + ",\n       ".join(values)
        + "\nFROM stage"
    )


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def setup(dsn: str) -> Any:
    import psycopg

    from pmta_pipe.migrate import apply_migrations

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB} TEMPLATE template0 ENCODING 'UTF8'")
    conn = psycopg.connect(dsn, dbname=DB)
    apply_migrations(conn)
    conn.autocommit = False
    days = [date(2025, 12, 30) + timedelta(days=i) for i in range(8)]
    conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (days,))
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def drop(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def run_staged(conn: Any, path: Path) -> tuple[int, float, float, float]:
    """(records, Python CPU, backend CPU, statements' wall) of the staged load."""
    from pmta_pipe.framing import is_header_record, read_alone
    from pmta_pipe.parse import Header

    pid = conn.info.backend_pid
    records = 0
    statements = 0.0
    sql = None
    with Timer() as t:
        b0 = backend_cpu(pid)
        for batch in record_batches(path):
            rows = []
            for rec in batch:
                if is_header_record(rec):
                    names = read_alone(rec)
                    assert names is not None
                    header = Header(names)
                    conn.execute("DROP TABLE IF EXISTS stage")
                    columns = ", ".join(f"{_ident(n)} text" for n in names)
                    conn.execute(f"CREATE TEMP TABLE stage ({columns}) ON COMMIT DELETE ROWS")
                    copy_sql = (
                        f"COPY stage ({', '.join(map(_ident, names))}) FROM STDIN (FORMAT csv)"
                    )
                    sql = insert_select(header, names)
                else:
                    rows.append(rec)
            assert sql is not None, "a header line first"
            s0 = time.perf_counter()
            with conn.cursor() as cur:
                with cur.copy(copy_sql) as copy:
                    copy.write(b"\n".join(rows) + b"\n")
                cur.execute(sql)
                records += cur.rowcount
            conn.commit()
            statements += time.perf_counter() - s0
        backend = backend_cpu(pid) - b0
    return records, t.cpu, backend, statements


def run_rendered(conn: Any, path: Path) -> tuple[int, float, float, float]:
    from pmta_pipe.fields import EVENT_COLUMNS
    from pmta_pipe.load import render_copy
    from pmta_pipe.parse import RecordParser

    pid = conn.info.backend_pid
    parser = RecordParser(SOURCE)
    records = 0
    statements = 0.0
    cols = ", ".join(EVENT_COLUMNS)
    with Timer() as t:
        b0 = backend_cpu(pid)
        for batch in record_batches(path):
            out = parser.parse(batch, RECEIVED_AT)
            fmt, data = render_copy(out.rows)
            s0 = time.perf_counter()
            opts = "FORMAT text, NULL ''" if fmt == "text" else "FORMAT csv"
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY pmta.events ({cols}) FROM STDIN ({opts})") as copy,
            ):
                copy.write(data)
            conn.commit()
            records += len(out.rows)
            statements += time.perf_counter() - s0
        backend = backend_cpu(pid) - b0
    return records, t.cpu, backend, statements


def compare_with_baseline(conn: Any, path: Path) -> dict[str, int]:
    """Rows of the staged load against the baseline's COPY text loaded into ``base``."""
    from pmta_pipe.fields import EVENT_COLUMNS
    from pmta_pipe.load import render_copy
    from pmta_pipe.parse import RecordParser

    conn.execute("CREATE TABLE base (LIKE pmta.events)")
    parser = RecordParser(SOURCE)
    cols = ", ".join(EVENT_COLUMNS)
    with conn.cursor() as cur:
        for batch in record_batches(path):
            fmt, data = render_copy(parser.parse(batch, RECEIVED_AT).rows)
            opts = "FORMAT text, NULL ''" if fmt == "text" else "FORMAT csv"
            with cur.copy(f"COPY base ({cols}) FROM STDIN ({opts})") as copy:
                copy.write(data)
    q = f"SELECT count(*) FROM (SELECT {cols} FROM {{a}} EXCEPT ALL SELECT {cols} FROM {{b}}) x"
    only_staged = conn.execute(q.format(a="pmta.events", b="base")).fetchone()[0]
    only_base = conn.execute(q.format(a="base", b="pmta.events")).fetchone()[0]
    ids = "SELECT count(*) FROM (SELECT record_id FROM {a} EXCEPT SELECT record_id FROM {b}) x"
    ids_only_staged = conn.execute(ids.format(a="pmta.events", b="base")).fetchone()[0]
    conn.commit()
    return {"rows_only_staged": only_staged, "rows_only_baseline": only_base,
            "ids_only_staged": ids_only_staged}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--mode", choices=("staged", "rendered"), default="staged")
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--check", type=Path)
    p.add_argument("--print-sql", action="store_true")
    a = p.parse_args()
    t0 = time.perf_counter()
    import psycopg  # noqa: F401  (the project's own dependency: its import time for the record)

    import_s = time.perf_counter() - t0
    conn = setup(a.dsn)
    try:
        run = run_staged if a.mode == "staged" else run_rendered
        records, cpu, backend, statements = run(conn, a.file)
        more: dict[str, Any] = {}
        if a.check and a.mode == "staged":
            more = compare_with_baseline(conn, a.file)
            a.check.write_text(f"rows compared with the baseline's: {more}")
        elif a.check:
            a.check.write_text("the reference itself: the baseline's rows")
        if a.print_sql:
            from pmta_pipe.framing import read_alone
            from pmta_pipe.parse import Header

            names = read_alone(a.file.open("rb").readline().rstrip(b"\n")) or []
            print(insert_select(Header(names), names))
        conn.close()
    finally:
        drop(a.dsn)
    emit(f"PostgreSQL {a.mode}", records=records, cpu_s=cpu, import_s=import_s,
         backend_cpu_s=backend, statement_s=statements, **more)  # fmt: skip


if __name__ == "__main__":
    main()
