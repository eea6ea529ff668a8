"""The pipe script people write by hand: csv reader, one INSERT per row, commit every 1000.

``python bench/peers/naive_pipe.py DSN TABLE [LIMIT] < acct.csv``

Reads the accounting CSV on stdin (header line first), inserts each row's 23
default fields into ``TABLE`` (the benchmark's baseline table) with psycopg, in
transactions of 1000 rows. Stops after ``LIMIT`` records when given (the benchmark
runs it on a subset and extrapolates: it is far too slow for millions of records).
"""

from __future__ import annotations

import csv
import io
import sys

import psycopg


def main() -> None:
    dsn, table = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
    reader = csv.reader(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline=""))
    header = next(reader)
    marks = ", ".join(["%s"] * len(header))
    sql = f"INSERT INTO {table} VALUES ({marks})"
    n = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for row in reader:
            cur.execute(sql, [v or None for v in row])
            n += 1
            if n % 1000 == 0:
                conn.commit()
            if limit is not None and n >= limit:
                break
        conn.commit()
    print(n)


if __name__ == "__main__":
    main()
