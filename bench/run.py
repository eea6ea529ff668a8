"""Benchmark: pmta-pipe against PostgreSQL's own COPY and against the tools people pick.

``python bench/run.py [--records 1000000] [--rounds 3] [--dsn URI] [--quick] [--json]``

For each size, a deterministic accounting stream (``bench/generate.py``, 23 default
columns, header line) is written once to a work folder, then each path loads it
into a fresh database on the same server, ``--rounds`` times (median reported):

* ``COPY (baseline)``: ``COPY … (FORMAT csv, HEADER)`` of the file into an
  unindexed table with pmta.events' types for the 23 columns: the floor;
* ``pmta-pipe ingest``: the console command as a subprocess, file on stdin, until
  every record is committed (typed columns, identity, unique key, rollups, rejects);
* ``pmta-pipe import``: the file gzipped, when the command is available;
* ``pgloader``: the same file into the baseline table, when pgloader is installed;
* ``naive pipe``: ``bench/peers/naive_pipe.py`` (row-by-row INSERT, commit every
  1000) on a subset, its rate extrapolated;
* with ``--compare-with DIR``: ``pmta-pipe ingest`` of another checkout (a git
  worktree of an earlier commit), to measure a change against its baseline in
  one run.

Peak RSS of each subprocess comes from ``os.wait4``. With several sizes
(``--records 1000000,3000000``) the last lines say whether pmta-pipe's RSS grew.
The server is ``--dsn`` (its databases are created and dropped here), else an
embedded PostgreSQL in a temporary folder. See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402

BASE_COLUMNS = (
    ("type", "text"), ("time_logged", "timestamptz"), ("time_queued", "timestamptz"),
    ("orig", "text"), ("rcpt", "text"), ("orcpt", "text"), ("dsn_action", "text"),
    ("dsn_status", "text"), ("dsn_diag", "text"), ("dsn_mta", "text"), ("bounce_cat", "text"),
    ("src_type", "text"), ("src_mta", "text"), ("dlv_type", "text"), ("dlv_source_ip", "inet"),
    ("dlv_destination_ip", "inet"), ("dlv_esmtp_available", "text"), ("dlv_size", "bigint"),
    ("vmta", "text"), ("job_id", "text"), ("env_id", "text"), ("queue", "text"),
    ("vmta_pool", "text"),
)  # fmt: skip
BASE_TABLE = "acct_copy"
NAIVE_LIMIT = 50_000
QUICK_NAIVE_LIMIT = 2_000


@dataclass
class Result:
    path: str
    records: int
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    note: str = ""
    skipped: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def rate(self) -> float:
        return self.records / self.median if self.seconds else 0.0


# -- the server and its databases -------------------------------------------------
@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """Yield an admin conninfo: ``dsn``, or an embedded server in a temporary folder."""
    if dsn:
        yield dsn
        return
    from pmta_pipe import embedded

    folder = Path(tempfile.mkdtemp(prefix="pmta-bench-pg-"))
    folder.chmod(0o755)
    uri = embedded.start(folder / "pg")
    try:
        yield make_conninfo(uri, dbname="postgres")
    finally:
        embedded.stop(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def database(admin: str) -> Iterator[str]:
    name = f"pmta_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_base_table(dsn: str) -> None:
    cols = ", ".join(f"{n} {t}" for n, t in BASE_COLUMNS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {BASE_TABLE} ({cols})")


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


# -- data --------------------------------------------------------------------------
def data_file(work: Path, records: int) -> Path:
    path = work / f"acct-{records}.csv"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as out:
            generate.write(out, records, days=3, seed=1)
        tmp.rename(path)
    return path


def gzip_file(path: Path) -> Path:
    gz = path.with_suffix(".csv.gz")
    if not gz.exists():
        with path.open("rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return gz


# -- one run of each path ------------------------------------------------------------
def run_child(
    args: list[str], stdin_path: Path | None, env: dict[str, str], cwd: Path | None = None
) -> tuple[float, float, str]:
    """Run a subprocess; return (seconds, peak RSS in MB, stderr)."""
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, with stdin)
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
        err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} {args[1:3]} failed ({proc.returncode}): {text[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMTA_PIPE_", "PG"))}
    env["PMTA_PIPE_LOG_LEVEL"] = "warning"
    env["PMTA_PIPE_SPOOL_DIR"] = tempfile.mkdtemp(prefix="pmta-bench-spool-")  # journal on
    return env


def time_copy(admin: str, path: Path, records: int) -> tuple[float, float]:
    with database(admin) as dsn:
        create_base_table(dsn)
        with psycopg.connect(dsn) as conn, conn.cursor() as cur, path.open("rb") as f:
            started = time.perf_counter()
            with cur.copy(f"COPY {BASE_TABLE} FROM STDIN (FORMAT csv, HEADER)") as copy:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
            conn.commit()
            seconds = time.perf_counter() - started
        assert count(dsn, BASE_TABLE) == records
    return seconds, 0.0


def pmta_pipe_cmd() -> list[str]:
    return [sys.executable, "-m", "pmta_pipe"]


def time_ingest(
    admin: str, path: Path, records: int, code: Path | None = None
) -> tuple[float, float]:
    """``pmta-pipe ingest``; of the checkout ``code`` instead of this one when given."""
    with database(admin) as dsn:
        args = [*pmta_pipe_cmd(), "ingest", "--dsn", dsn, "--source", "bench"]
        env = child_env()
        if code is not None:
            env["PYTHONPATH"] = str(code)
        seconds, rss, _ = run_child(args, path, env, cwd=code or HERE.parent)
        assert count(dsn, "pmta.events") == records
    return seconds, rss


def import_available(admin: str, work: Path) -> str:
    """'' when ``pmta-pipe import`` works, else why not."""
    probe = work / "probe.csv"
    probe.write_text(generate.HEADER + "\n")
    with database(admin) as dsn:
        args = [*pmta_pipe_cmd(), "import", "--dsn", dsn, str(probe)]
        proc = subprocess.run(args, capture_output=True, env=child_env(), check=False)
    text = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 and "not available yet" in text:
        return "not available: pmta-pipe import says 'not available yet'"
    return ""


def time_import(admin: str, path: Path, records: int) -> tuple[float, float]:
    gz = gzip_file(path)
    with database(admin) as dsn:
        args = [*pmta_pipe_cmd(), "import", "--dsn", dsn, "--source", "bench", str(gz)]
        seconds, rss, _ = run_child(args, None, child_env())
        assert count(dsn, "pmta.events") == records
    return seconds, rss


def time_pgloader(admin: str, path: Path, records: int) -> tuple[float, float]:
    with database(admin) as dsn:
        create_base_table(dsn)
        p = conninfo_to_dict(dsn)
        user = p.get("user") or "postgres"
        pw = f":{p['password']}" if p.get("password") else ""
        host, port = p.get("host", "localhost"), p.get("port", 5432)
        if str(host).startswith("/"):
            raise RuntimeError("pgloader needs a TCP server: run the benchmark with --dsn")
        target = f"postgresql://{user}{pw}@{host}:{port}/{p['dbname']}"
        cols = ", ".join(n for n, _ in BASE_COLUMNS)
        command = (
            f"LOAD CSV FROM '{path}' ({cols})\n"
            f"INTO {target} TARGET TABLE {BASE_TABLE} ({cols})\n"
            "WITH skip header = 1, fields optionally enclosed by '\"',\n"
            "     fields escaped by double-quote, fields terminated by ','\n"
            "SET work_mem to '64MB';\n"
        )
        cmd_file = path.parent / "pgloader.load"
        cmd_file.write_text(command)
        workdir = tempfile.mkdtemp(prefix="pmta-bench-pgloader-")
        args = ["pgloader", "--root-dir", workdir, "--quiet", str(cmd_file)]
        try:
            seconds, rss, _ = run_child(args, None, child_env())
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        got = count(dsn, BASE_TABLE)
        if got != records:
            raise RuntimeError(f"pgloader loaded {got} of {records} records")
    return seconds, rss


def time_naive(admin: str, path: Path, records: int, limit: int) -> tuple[float, float]:
    n = min(records, limit)
    with database(admin) as dsn:
        create_base_table(dsn)
        args = [sys.executable, str(HERE / "peers" / "naive_pipe.py"), dsn, BASE_TABLE, str(n)]
        seconds, rss, _ = run_child(args, path, child_env())
        assert count(dsn, BASE_TABLE) == n
    return seconds * records / n, rss  # extrapolated to all records


# -- the run ---------------------------------------------------------------------------
def bench_size(admin: str, work: Path, records: int, opts: argparse.Namespace) -> list[Result]:
    path = data_file(work, records)
    naive_limit = QUICK_NAIVE_LIMIT if opts.quick else NAIVE_LIMIT
    paths: list[tuple[str, Callable[[str, Path, int], tuple[float, float]], str]] = [
        ("COPY (baseline)", time_copy, ""),
        ("pmta-pipe ingest", time_ingest, ""),
    ]
    if opts.compare_with:
        code = Path(opts.compare_with).resolve()
        paths.append(
            (f"ingest, code of {code.name}", lambda a, p, r: time_ingest(a, p, r, code), "")
        )
    results: list[Result] = []
    why = import_available(admin, work)
    paths.append(("pmta-pipe import (gzip)", time_import, why))
    paths.append(("pgloader", time_pgloader, "" if shutil.which("pgloader") else "not installed"))
    note = f"{min(records, naive_limit)} records, extrapolated" if records > naive_limit else ""
    paths.append(
        (
            "naive pipe (INSERT per row)",
            lambda a, p, r: time_naive(a, p, r, naive_limit),
            "",
        )
    )
    for name, fn, skip in paths:
        res = Result(name, records, skipped=skip)
        if name.startswith("naive"):
            res.note = note
        results.append(res)
        if skip or name in opts.skip:
            res.skipped = res.skipped or "skipped (--skip)"
            print(f"  {name}: {res.skipped}", file=sys.stderr)
            continue
        for i in range(opts.rounds):
            try:
                seconds, rss = fn(admin, path, records)
            except Exception as exc:  # a peer that fails is reported, not fatal
                res.skipped = f"failed: {str(exc).splitlines()[0][:200]}"
                print(f"  {name}: {res.skipped}", file=sys.stderr)
                break
            res.seconds.append(seconds)
            res.rss_mb.append(rss)
            print(f"  {name} round {i + 1}: {seconds:.2f} s, {records / seconds:,.0f} rec/s"
                  + (f", peak RSS {rss:.0f} MB" if rss else ""), file=sys.stderr)  # fmt: skip
    return results


def markdown(results: list[Result]) -> str:
    base = {r.records: r.rate for r in results if r.path == "COPY (baseline)"}
    lines = [
        "| path | records | seconds (median) | records/s | ratio to COPY | peak RSS MB | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.path} | {r.records:,} | | | | | {r.skipped} |")
            continue
        ratio = r.rate / base[r.records] if base.get(r.records) else float("nan")
        rss = f"{max(r.rss_mb):.0f}" if any(r.rss_mb) else ""
        lines.append(
            f"| {r.path} | {r.records:,} | {r.median:.2f} | {r.rate:,.0f} | {ratio:.2f} | "
            f"{rss} | {r.note} |"
        )
    return "\n".join(lines)


def rss_growth(results: list[Result]) -> list[str]:
    out = []
    for name in ("pmta-pipe ingest", "ingest, pipelined loader"):
        sizes = sorted((r.records, max(r.rss_mb)) for r in results if r.path == name and r.rss_mb)
        if len(sizes) >= 2:
            (n0, m0), (n1, m1) = sizes[0], sizes[-1]
            verdict = "does not grow" if m1 <= m0 * 1.10 + 5 else "GROWS"
            out.append(f"{name}: peak RSS {m0:.0f} MB at {n0:,}, {m1:.0f} MB at {n1:,}: {verdict}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", default=None,
                   help="records per run, or a comma list of sizes (default 1000000)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=None, help="runs per path (median; default 3)")
    p.add_argument("--dsn", default=None, help="PostgreSQL server to use (else embedded)")
    p.add_argument("--quick", action="store_true", help="CI: 20000 records, 1 round")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--skip", default="", help="comma list of paths to skip (e.g. pgloader)")
    p.add_argument("--work-dir", default=None, help="where generated files are kept")
    p.add_argument("--compare-with", default=None, metavar="DIR",
                   help="also time the ingest of another checkout (e.g. a git worktree of "
                        "an earlier commit), side by side")  # fmt: skip
    opts = p.parse_args()
    opts.records = opts.records or ("20000" if opts.quick else "1000000")
    opts.rounds = opts.rounds or (1 if opts.quick else 3)
    opts.skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    sizes = [int(s.replace("_", "")) for s in opts.records.split(",")]
    work = Path(opts.work_dir or Path(tempfile.gettempdir()) / "pmta-bench")
    work.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    started = datetime.now(timezone.utc)
    with server(opts.dsn) as admin:
        with psycopg.connect(admin, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        for n in sizes:
            print(f"{n:,} records:", file=sys.stderr)
            results += bench_size(admin, work, n, opts)
    if opts.json:
        print(json.dumps({
            "started": started.isoformat(), "server_version": version[0] if version else None,
            "nproc": os.cpu_count(), "rounds": opts.rounds,
            "results": [dict(asdict(r), median=r.median if r.seconds else None,
                             rate=r.rate) for r in results],
            "rss_growth": rss_growth(results),
        }, indent=2))  # fmt: skip
        return
    print(f"PostgreSQL {version[0] if version else '?'}, {os.cpu_count()} CPUs, "
          f"{opts.rounds} round(s), median\n")  # fmt: skip
    print(markdown(results))
    for line in rss_growth(results):
        print(f"\n{line}")


if __name__ == "__main__":
    main()
