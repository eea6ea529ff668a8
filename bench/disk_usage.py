"""Disk used per million accounting records, measured on a real PostgreSQL.

``python bench/disk_usage.py --dsn postgresql://postgres@127.0.0.1/postgres [--records 200000]``

Creates a scratch database on that server, applies the migrations, imports
RECORDS generated records (``generate.py``: PowerMTA v5 default columns, realistic
type mix) through ``pmta-pipe import``'s code path, runs VACUUM ANALYZE, and prints
``pg_total_relation_size`` (table, indexes, TOAST) of the raw events (all daily
partitions), of every ``pmta.rollup_*`` table, and of the whole database, per
million records, beside the size of the generated CSV file (plain and gzip).
The scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generate

from pmta_pipe.config import Settings
from pmta_pipe.importer import import_files
from pmta_pipe.progress import LogProgress

SIZES = """
    SELECT
      coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE i.inhparent IS NOT NULL), 0),
      coalesce(sum(pg_total_relation_size(c.oid))
               FILTER (WHERE c.relname LIKE 'rollup\\_%' AND c.relkind IN ('r', 'p')), 0),
      pg_database_size(current_database())
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'pmta'
    LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'pmta.events'::regclass
"""


def measure(admin_dsn: str, records: int, days: int) -> dict[str, float]:
    name = f"pmta_disk_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "acct.csv"
            with path.open("w") as f:
                generate.write(f, records, days=days, seed=1)
            csv_bytes = path.stat().st_size
            gz_bytes = len(gzip.compress(path.read_bytes(), 6))
            settings = Settings(dsn=dsn, source="bench-host")
            import_files(settings, [str(path)], progress=LogProgress(0, 0), jobs=1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            row = conn.execute(SIZES).fetchone()
            assert row is not None
            loaded = conn.execute("SELECT count(*) FROM pmta.events").fetchone()
            assert loaded is not None and loaded[0] == records
        events, rollups, database = (int(v) for v in row)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    per_m = 1_000_000 / records
    return {
        "events_mb_per_m": events * per_m / 2**20,
        "rollups_mb_per_m": rollups * per_m / 2**20,
        "database_mb_total": database / 2**20,
        "csv_mb_per_m": csv_bytes * per_m / 2**20,
        "csv_gz_mb_per_m": gz_bytes * per_m / 2**20,
        "events_bytes_per_record": events / records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True, help="a database on the server to measure on")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args()
    result = measure(args.dsn, args.records, args.days)
    print(f"records loaded:            {args.records:,} over {args.days} days")
    print(f"raw events (pmta.events):  {result['events_mb_per_m']:.0f} MiB per million records"
          f" ({result['events_bytes_per_record']:.0f} bytes per record)")  # fmt: skip
    print(f"rollups (pmta.rollup_*):   {result['rollups_mb_per_m']:.1f} MiB per million records")
    print(f"whole database:            {result['database_mb_total']:.0f} MiB in all")
    print(f"accounting CSV:            {result['csv_mb_per_m']:.0f} MiB per million records"
          f" ({result['csv_gz_mb_per_m']:.0f} MiB gzipped)")  # fmt: skip


if __name__ == "__main__":
    main()
