"""COPY files into a table in one transaction, and say how long it took.

``python bench/copy_file.py DSN STATEMENT FILE [STATEMENT FILE ...]``

Each ``STATEMENT`` (a ``COPY … FROM STDIN …``) is fed its ``FILE`` in 1 MiB writes,
all in one transaction, then COMMIT; the session's time zone is UTC, as the
loader's. Prints ``{"seconds": …}``: connecting and the interpreter's start-up are
not counted. ``bench/run.py`` runs it as a subprocess, so that its floors are
measured like the loaders (peak RSS and CPU from ``wait4``).
"""

from __future__ import annotations

import json
import sys
import time

import psycopg


def main() -> None:
    dsn, pairs = sys.argv[1], sys.argv[2:]
    if not pairs or len(pairs) % 2:
        raise SystemExit(__doc__)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()
        started = time.perf_counter()
        for statement, path in zip(pairs[::2], pairs[1::2], strict=True):
            with open(path, "rb") as f, cur.copy(statement) as copy:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
