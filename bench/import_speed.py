"""Import speed: one pipeline against ``--jobs 2``, on a real PostgreSQL.

``python bench/import_speed.py --dsn postgresql://postgres@127.0.0.1/postgres [--records 200000]``

Writes two generated accounting files of RECORDS records each, imports both into a
scratch database with ``jobs=1`` (one pipeline: the calling thread parsing, the
loader thread loading) and into another with ``jobs=2`` (two pipelines in threads of
one process, one file each), and prints
the wall time and records per second of each. Scratch databases are dropped.

``--verify-cost``: instead, what checking a compressed file before loading it costs.
Writes one file of RECORDS records, compresses it with gzip (level 6, logrotate's),
bzip2, xz (preset 1, to keep the bench short: decoding speed barely depends on it)
and zstd (level 3, with a content checksum), times ``compression.verify`` on each
(decompressing to nowhere, checking the checksums) and one whole import of the gzip
file (which includes its check), and prints both.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generate

from pmta_pipe import compression
from pmta_pipe.config import Settings
from pmta_pipe.importer import import_files
from pmta_pipe.migrate import apply_migrations
from pmta_pipe.progress import LogProgress


def timed_import(admin_dsn: str, paths: list[str], jobs: int) -> float:
    name = f"pmta_speed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_migrations(conn)
        started = time.perf_counter()
        import_files(Settings(dsn=dsn, source="bench"), paths, progress=LogProgress(0, 0),
                     jobs=jobs)  # fmt: skip
        return time.perf_counter() - started
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def verify_cost(admin_dsn: str, records: int) -> None:
    import zstandard

    compressors = {
        "gzip": lambda d: gzip.compress(d, compresslevel=6),
        "bzip2": bz2.compress,
        "xz": lambda d: lzma.compress(d, preset=1),
        "zstd": lambda d: zstandard.ZstdCompressor(level=3, write_checksum=True).compress(d),
    }
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "acct.csv"
        with plain.open("w") as f:
            generate.write(f, records, days=3, seed=1)
        data = plain.read_bytes()
        print(f"{records:,} records, {len(data) / 1e6:.0f} MB")
        for kind, compress in compressors.items():
            path = Path(tmp) / f"acct.csv.{kind}"
            path.write_bytes(compress(data))
            with path.open("rb") as f:
                started = time.perf_counter()
                check = compression.verify(f, kind)
                seconds = time.perf_counter() - started
            assert check.state == "ok" and check.decompressed == len(data), check
            print(f"verify {kind}: {path.stat().st_size / 1e6:.0f} MB in {seconds:.2f} s")
        seconds = timed_import(admin_dsn, [str(Path(tmp) / "acct.csv.gzip")], 1)
        print(f"import gzip (check included): {seconds:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True, help="a database on the server to measure on")
    ap.add_argument("--records", type=int, default=200_000, help="records per file")
    ap.add_argument("--verify-cost", action="store_true",
                    help="measure checking compressed files before loading them")  # fmt: skip
    args = ap.parse_args()
    if args.verify_cost:
        verify_cost(args.dsn, args.records)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for seed in (1, 2):
            path = Path(tmp) / f"acct-{seed}.csv"
            with path.open("w") as f:
                generate.write(f, args.records, days=3, seed=seed)
            paths.append(str(path))
        total = 2 * args.records
        for jobs in (1, 2):
            seconds = timed_import(args.dsn, paths, jobs)
            print(f"jobs={jobs}: {total:,} records in {seconds:.1f} s, "
                  f"{total / seconds:,.0f} records/s")  # fmt: skip


if __name__ == "__main__":
    main()
