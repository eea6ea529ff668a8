"""Print the records loaded per type in the embedded database (used by ``make demo``)."""

from __future__ import annotations

import subprocess
import sys

import psycopg

uri = subprocess.run(
    [sys.executable, "-m", "pmta_pipe", "db", "uri"], check=True, capture_output=True, text=True
).stdout.strip()
with psycopg.connect(uri) as conn:
    rows = conn.execute(
        "SELECT record_type, count(*) FROM pmta.events GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    rejects = conn.execute("SELECT count(*) FROM pmta.rejects").fetchone()
print(f"{'type':<6}{'records':>10}")
for rtype, n in rows:
    print(f"{rtype:<6}{n:>10}")
print(f"{'total':<6}{sum(n for _, n in rows):>10}")
print(f"{'reject':<6}{rejects[0] if rejects else 0:>10}")
