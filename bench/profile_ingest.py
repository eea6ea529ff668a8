"""Where ``pmta-pipe ingest``'s time goes: py-spy samples of its Python process, by part.

``python bench/profile_ingest.py --dsn ADMIN_URI [--records 200000] [--rate 100]``

Writes the benchmark's generated stream (``bench/generate.py``, as ``bench/run.py``)
and ingests it twice into fresh databases of the server, under ``py-spy record``
(which must be installed: ``pip install py-spy``):

* ``--gil``: only samples that hold the interpreter lock. All Python work of the
  three threads adds up on that one lock, so these say what the Python side's CPU
  goes to (the part of the process that bounds it when it is the bottleneck);
* ``--idle``: every thread, every sample, waiting or not: what each thread spends
  its wall time on (the loader thread waiting on PostgreSQL, the parsing thread
  waiting for the queue, ...).

Each sample is put in the part of its innermost frame that names one (see
``PARTS``): reading and journaling, parsing, counting the rollups, rendering the
COPY data, the database (psycopg: sending data, waiting for the server, commit),
waiting for the other thread (queue), start-up (imports, migrations) and other.
Prints one table per mode; ``--keep DIR`` keeps py-spy's raw files.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

# (part, test on "function (file:line)"), innermost frame first; the first part that
# any frame of a sample matches, from the leaf up, takes the sample.
PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("start-up (imports, migrations)", re.compile(r"^_find_and_load |pmta_pipe/migrate\.py")),
    ("rendering COPY data", re.compile(r"^render_copy \(.*load\.py")),
    ("rollup counting", re.compile(r"\(.*pmta_pipe/rollups\.py")),
    ("database (psycopg)", re.compile(r"\(.*psycopg/")),
    ("parsing", re.compile(r"\(.*pmta_pipe/(parse|values|fields)\.py")),
    ("reading and journal", re.compile(r"\(.*pmta_pipe/(reader|framing|spool)\.py")),
    ("waiting for the other thread", re.compile(r"^(\w+\.)?(get|put|wait) \((queue|threading)")),
    ("loader, other", re.compile(r"\(.*pmta_pipe/(load|pipeline)\.py")),
]
THREADS = {"MainThread": "main thread", "pmta-pipe-loader": "loader thread",
           "pmta-pipe-reader": "reader thread"}  # fmt: skip
_LINE = re.compile(r"^thread \((?P<tid>\d+)\)(: (?P<name>[^;]*))?;(?P<stack>.*) (?P<count>\d+)$")


def classify(frames: list[str]) -> str:
    for part, test in PARTS:
        if any(test.search(f) for f in reversed(frames)):
            return part
    return "other"


def read_raw(path: Path) -> dict[tuple[str, str], int]:
    """(thread role, part) -> samples, from py-spy's ``--format raw`` output."""
    samples = [m for line in path.read_text().splitlines() if (m := _LINE.match(line))]
    names = {m["tid"]: m["name"] for m in samples if m["name"]}  # py-spy names some samples
    counts: dict[tuple[str, str], int] = collections.Counter()
    for m in samples:
        thread = THREADS.get(names.get(m["tid"], ""), "other thread")
        counts[thread, classify(m["stack"].split(";"))] += int(m["count"])
    return counts


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed in the same virtualenv
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(admin: str, data: Path, mode: str, rate: int, raw: Path) -> None:
    with run.database(admin) as dsn:
        args = [py_spy() or "py-spy", "record", "--nonblocking", "--threads", f"--{mode}", "--rate",
                str(rate), "--format", "raw", "--output", str(raw), "--",
                *run.pmta_pipe_cmd(), "ingest", "--dsn", dsn, "--source", "bench"]  # fmt: skip
        with data.open("rb") as stdin:
            subprocess.run(args, stdin=stdin, env=run.child_env(), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def table(counts: dict[tuple[str, str], int], rate: int, by_thread: bool) -> str:
    total = sum(counts.values())
    lines = ["| thread | part | seconds | share |", "|---|---|---:|---:|"]
    keys = sorted(counts, key=lambda k: (k[0], -counts[k])) if by_thread else None
    if not by_thread:
        merged: dict[str, int] = collections.Counter()
        for (_, part), n in counts.items():
            merged[part] += n
        lines = ["| part | seconds | share |", "|---|---:|---:|"]
        for part, n in sorted(merged.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {part} | {n / rate:.1f} | {100 * n / total:.0f} % |")
        lines.append(f"| all | {total / rate:.1f} | 100 % |")
        return "\n".join(lines)
    per_thread: dict[str, int] = collections.Counter()
    for (thread, _), n in counts.items():
        per_thread[thread] += n
    for thread, part in keys or []:
        n = counts[thread, part]
        share = 100 * n / per_thread[thread]
        lines.append(f"| {thread} | {part} | {n / rate:.1f} | {share:.0f} % of the thread |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", required=True, help="PostgreSQL server (admin conninfo)")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--work-dir", default=None, help="where the generated file is kept")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep py-spy's raw output here")
    opts = p.parse_args()
    if not py_spy():
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    work = Path(opts.work_dir or Path(tempfile.gettempdir()) / "pmta-bench")
    work.mkdir(parents=True, exist_ok=True)
    data = run.data_file(work, opts.records)
    keep = Path(opts.keep or tempfile.mkdtemp(prefix="pmta-profile-"))
    keep.mkdir(parents=True, exist_ok=True)
    for mode, title in (("gil", "holding the interpreter lock"), ("idle", "every thread")):
        raw = keep / f"ingest-{opts.records}-{mode}.txt"
        profile(opts.dsn, data, mode, opts.rate, raw)
        counts = read_raw(raw)
        print(f"\n## {opts.records:,} records, samples {title} (py-spy --{mode})\n")
        print(table(counts, opts.rate, by_thread=mode == "idle"))
        if mode == "gil":
            print()
            print(table(counts, opts.rate, by_thread=True))
    if not opts.keep:
        shutil.rmtree(keep, ignore_errors=True)


if __name__ == "__main__":
    main()
