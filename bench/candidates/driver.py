"""Runs every candidate for a compiled hot path on the same file and prints a table.

``python bench/candidates/driver.py [--records 300000] [--rounds 3] [--dsn URI]``

The generated file (``bench/generate.py``) is written once into ``--work-dir``.
Each round runs every candidate once, as a subprocess, one after the other (rounds
interleave the candidates, so that a busy moment of the machine hits all of them);
the table shows medians over the rounds: µs of CPU per record of the measured work
(Python side), of the PostgreSQL backend where a candidate loads, import time, and
peak RSS of the subprocess (``ru_maxrss`` from ``os.wait4``). Then each candidate
runs once with ``--check`` and its output is compared with the baseline's: record
ids and COPY text (SHA-256 over the whole file), or the loaded rows for the staged
PostgreSQL load. See ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import HERE, ensure_file

CANDIDATES: list[tuple[str, list[str]]] = [
    ("baseline", ["baseline.py"]),
    ("baseline, gc threshold 50000", ["baseline.py", "--gc-threshold", "50000"]),
    ("pyarrow", ["arrow.py"]),
    ("polars", ["polars_frame.py"]),
    ("compiled parser (pmta_pipe/_fastpath.c)", ["compiled.py"]),
    ("compiled parser, gc threshold 50000", ["compiled.py", "--gc-threshold", "50000"]),
    ("PostgreSQL: rendered COPY (today)", ["in_postgres.py", "--mode", "rendered"]),
    ("PostgreSQL: staged, typed+hashed in SQL", ["in_postgres.py", "--mode", "staged"]),
]


def run_measured(script: list[str], path: Path, extra: list[str]) -> dict[str, Any]:
    """Run one candidate; its JSON line, with its peak RSS (``os.wait4``).

    Every candidate but ``compiled.py`` runs with ``PMTA_PIPE_PARSER=python``: where
    they use ``RecordParser`` (the baseline, the fallbacks, the header), it is the
    pure-Python parser they were measured with."""
    cmd = [sys.executable, str(HERE / script[0]), str(path), *script[1:], *extra]
    env = dict(os.environ, PMTA_PIPE_PARSER="auto" if script[0] == "compiled.py" else "python")
    with tempfile.TemporaryFile("w+") as out:
        actions = [(os.POSIX_SPAWN_DUP2, out.fileno(), 1)]
        pid = os.posix_spawn(cmd[0], cmd, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{script} failed ({status})")
        out.seek(0)
        result: dict[str, Any] = json.loads(out.read().strip().splitlines()[-1])
    result["rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pmta-cand")
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--skip", default="", help="comma-separated script names to leave out")
    p.add_argument("--no-check", action="store_true")
    a = p.parse_args()
    path = ensure_file(a.records, a.work_dir)
    skip = set(filter(None, a.skip.split(",")))
    chosen = [c for c in CANDIDATES if c[1][0] not in skip]

    def extra(script: list[str]) -> list[str]:
        if script[0] == "in_postgres.py":
            return ["--dsn", a.dsn]
        return []

    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in chosen}
    for r in range(a.rounds):
        for name, script in chosen:
            res = run_measured(script, path, extra(script))
            results[name].append(res)
            print(f"round {r + 1} {name}: {json.dumps(res)}", file=sys.stderr)

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [x[key] for x in rows if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    print(f"\n{a.records:,} records, medians of {a.rounds} rounds\n")
    print("| candidate | Python µs/rec (CPU) | backend µs/rec (CPU) | import s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        n = rows[0]["records"]
        cpu = med(rows, "cpu_s")
        backend = med(rows, "backend_cpu_s")
        b = f"{backend / n * 1e6:.1f}" if backend is not None else ""
        imp = med(rows, "import_s") or 0.0
        print(f"| {name} | {cpu / n * 1e6:.1f} | {b} | {imp:.2f} | {med(rows, 'rss_mb'):.0f} |")
    if a.no_check:
        return
    print("\nequality with the baseline (whole file):\n")
    checks: dict[str, dict[str, Any]] = {}
    for name, script in chosen:
        out = a.work_dir / f"check-{script[0]}-{'-'.join(script[1:])}.json"
        run_measured(script, path, [*extra(script), "--check", str(out)])
        text = out.read_text()
        checks[name] = json.loads(text) if text.startswith('{"') else {"rows": text}
    base = checks[chosen[0][0]]
    for name, c in checks.items():
        if "rows" in c:
            print(f"- {name}: {c['rows']}")
        elif "ids_sha256" in c:
            ids = c["ids_sha256"] == base["ids_sha256"]
            copy = c["copy_sha256"] == base["copy_sha256"]
            print(f"- {name}: {c['ids']} ids, ids identical: {ids}, COPY text identical: {copy}")
        else:
            print(f"- {name}: (no check output)")


if __name__ == "__main__":
    main()
