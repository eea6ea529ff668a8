"""Benchmark: pmta-pipe against PostgreSQL's own COPY and against the tools people pick.

``python bench/run.py [--records 1000000] [--rounds 3] [--dsn URI] [--quick] [--json]``

For each size, a deterministic accounting stream (``bench/generate.py``, 23 default
columns, header line) is written once to a work folder, then each path loads it
into a fresh database on the same server. Rounds are interleaved (round 1 of every
path, then round 2 of every path, ...), so that a slow minute of a shared machine
falls on all paths alike; the median of ``--rounds`` is reported, with the range.

* ``COPY (baseline)``: ``COPY … (FORMAT csv, HEADER)`` of the file into an
  unindexed table with pmta.events' types for the 23 columns: the floor;
* ``keyed COPY into pmta.events``: the rows as the loader renders them
  (``load.render_copy`` of ``parse.RecordParser``'s rows, batch by batch,
  rendered before the clock starts) COPYed into an empty ``pmta.events`` (its
  partitions made first with ``pmta.ensure_partitions``, primary key in place) in
  one transaction: the ceiling for this schema, with no parsing, no rollups, no
  journal and one commit;
* ``pmta-pipe ingest``: the console command as a subprocess, file on stdin, until
  every record is committed (typed columns, identity, unique key, rollups, rejects);
* ``ingest of loaded records (replay)``: the same command on a database that
  holds every record already (loaded by the keyed COPY and vacuumed before the
  clock starts): a replay, where every row is a duplicate;
* ``pmta-pipe import (gzip)``: the file gzipped, when the command is available;
* ``import --jobs 1`` and ``--jobs 2``: the same records split in ``SPLIT_FILES``
  gzipped files, one pipeline, then two (threads of one process);
* ``pmta-pipe rollup (materialize all)``: the materializer's cost, which ``ingest`` and
  ``import`` leave to later steps (the views count it live meanwhile): every record
  loaded by the keyed COPY before the clock, none materialized, then ``pmta-pipe
  rollup`` until caught up;
* ``pgloader``: the same file into the baseline table, when pgloader is installed;
* ``naive pipe``: ``bench/peers/naive_pipe.py`` (row-by-row INSERT, commit every
  1000) on a subset, its time extrapolated;
* with ``--compare-with DIR``: ``pmta-pipe ingest`` of another checkout (a git
  worktree of an earlier commit), to measure a change against its baseline in
  one run.

Every path runs as a subprocess (the COPY rows through ``bench/copy_file.py``). For
each run: the wall time (for the COPY rows, of the COPY and commit alone); the peak
RSS of the process and its children, sampled every ``SAMPLE_SECONDS`` from
``/proc``: the larger of the tree's summed RSS (several processes at once:
``--jobs 2``) and its largest process's ``VmHWM``; the CPU time of the process and
its children (``os.wait4``); and the CPU time of the PostgreSQL backends serving the
run's database (``/proc``, sampled, so a backend's last fraction of a second may be
missed), and of those, the backends seen in ``pg_stat_activity`` running the rollup
materializer (``MATERIALIZER_QUERIES``): its share is shown in a column of its own.
After the clock, every pmta-pipe run checks its row count and that the reports
(``pmta.rollup_daily``: materialized hours plus the live tail) count every record once.
``ru_maxrss`` (of ``wait4`` or of ``getrusage(RUSAGE_CHILDREN)``) is not
used: a child started by ``fork`` or ``vfork`` starts it at the parent's peak, here
the benchmark's own, and ``RUSAGE_CHILDREN`` keeps the largest of all children so far.
With several sizes
(``--records 1000000,3000000``) the last lines say whether peak RSS grew. The server
is ``--dsn`` (its databases are created and dropped here; the admin database is
only connected to), else an embedded PostgreSQL in a temporary folder. See
``docs/performance.md``.
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
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
BASELINE = "COPY (baseline)"
NAIVE_LIMIT = 50_000
QUICK_NAIVE_LIMIT = 2_000
SPLIT_FILES = 4  # the import --jobs rows: the records in this many gzipped files
BATCH_ROWS = 5_000  # the loader's default batch, for rendering the keyed COPY
SAMPLE_SECONDS = 0.2
#: what a materializer's backend runs (pmta_pipe/materialize.py): its CPU is shown apart
MATERIALIZER_QUERIES = ("rollup_materialize", "rollup_raise_threshold")
RECEIVED_AT = datetime(2026, 1, 4, tzinfo=timezone.utc)  # for the rendered rows


@dataclass
class Run:
    """One timed run of one path."""

    seconds: float
    rss_mb: float = 0.0  # peak RSS of the process and its children
    cpu_s: float = 0.0  # CPU time of the process and its children
    backend_cpu_s: float = 0.0  # CPU time of the PostgreSQL backends of its database
    materializer_cpu_s: float = 0.0  # of those, the backends that materialized rollups

    def scaled(self, factor: float) -> Run:
        """Times extrapolated by ``factor`` (peak RSS is not)."""
        return Run(
            self.seconds * factor,
            self.rss_mb,
            self.cpu_s * factor,
            self.backend_cpu_s * factor,
            self.materializer_cpu_s * factor,
        )


@dataclass
class Result:
    path: str
    records: int
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    backend_cpu_s: list[float] = field(default_factory=list)
    materializer_cpu_s: list[float] = field(default_factory=list)
    note: str = ""
    skipped: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def rate(self) -> float:
        return self.records / self.median if self.seconds else 0.0

    def add(self, run: Run) -> None:
        self.seconds.append(run.seconds)
        self.rss_mb.append(run.rss_mb)
        self.cpu_s.append(run.cpu_s)
        self.backend_cpu_s.append(run.backend_cpu_s)
        self.materializer_cpu_s.append(run.materializer_cpu_s)


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


def split_files(path: Path, records: int, parts: int = SPLIT_FILES) -> list[Path]:
    """The records of ``path`` in ``parts`` gzipped files, each with the header line."""
    out = [path.with_name(f"{path.stem}-part{i + 1}of{parts}.csv.gz") for i in range(parts)]
    if all(p.exists() for p in out):
        return out
    per = -(-records // parts)
    with path.open("rb") as src:
        header = src.readline()  # generated records hold no line break inside a field
        for part in out:
            tmp = part.with_suffix(".tmp")
            with gzip.open(tmp, "wb", compresslevel=1) as dst:
                dst.write(header)
                dst.writelines(islice(src, per))
            tmp.rename(part)
    return out


@dataclass
class Rendered:
    """The rows of a file as the loader renders them: COPY segments and the UTC days."""

    segments: list[tuple[str, Path]]  # (format, file) in order; a format change starts one
    days: list[str]
    rows: int


def render_file(path: Path) -> Rendered:
    """Parse ``path`` in the loader's batches and render each with ``load.render_copy``."""
    from pmta_pipe.load import render_copy
    from pmta_pipe.parse import RecordParser
    from pmta_pipe.reader import iter_batches

    parser = RecordParser("bench")
    segments: list[tuple[str, Path]] = []
    days: set[object] = set()
    rows = 0
    out = None
    try:
        with path.open("rb") as src:
            for raw in iter_batches(src, BATCH_ROWS, RECEIVED_AT):
                parsed = parser.parse(raw.records, raw.received_at, torn_last=raw.torn_last)
                if parsed.rejects:
                    raise RuntimeError(f"{len(parsed.rejects)} rejects rendering {path.name}")
                fmt, data = render_copy(parsed.rows)
                if not segments or segments[-1][0] != fmt:
                    if out is not None:
                        out.close()
                    seg = path.with_name(f"{path.stem}.events-{len(segments)}.{fmt}")
                    segments.append((fmt, seg))
                    out = seg.open("w", encoding="utf-8", newline="")
                assert out is not None
                out.write(data)
                days.update(parsed.days)
                rows += len(parsed.rows)
    finally:
        if out is not None:
            out.close()
    return Rendered(segments, sorted(str(d) for d in days), rows)


def copy_statement(table: str, fmt: str, columns: str) -> str:
    opts = "FORMAT text, NULL ''" if fmt == "text" else "FORMAT csv"
    return f"COPY {table} ({columns}) FROM STDIN ({opts})"


# -- measuring a subprocess ----------------------------------------------------------
def _proc_stats() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (parent pid, command name, CPU ticks, RSS pages), from /proc/*/stat."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]),
                             int(fields[21]))  # fmt: skip
    return stats


def _high_water(pid: int) -> int:
    """The peak RSS of ``pid`` since its exec (``VmHWM``), in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class _Sampler(threading.Thread):
    """Samples the RSS of a process tree and the CPU of the backends of one database."""

    def __init__(self, pid: int, dbname: str | None, admin: str | None = None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.dbname = f" {dbname} ".encode() if dbname else None
        self._db = dbname
        self._admin = admin  # to ask pg_stat_activity which backend materializes rollups
        self._activity: psycopg.Connection[tuple[object, ...]] | None = None
        self.materializers: set[int] = set()  # backend pids seen running the materializer
        self.peak_rss = 0  # bytes
        self.hwm: dict[int, int] = {}  # pid -> VmHWM, bytes
        self.backend_ticks: dict[int, int] = {}
        self._ours: dict[int, bool] = {}  # postgres pid -> serves our database
        self._done = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            with suppress(Exception):  # a sample is never worth failing a run for
                self._sample()

    def finish(self) -> None:
        self._done.set()
        self.join()
        with suppress(Exception):  # the backends outlive their client for a moment
            self._sample()
        if self._activity is not None:
            self._activity.close()

    def _note_materializers(self) -> None:
        """Remember the backends of our database that run the rollup materializer."""
        if self._admin is None or self._db is None:
            return
        if self._activity is None:
            self._activity = psycopg.connect(self._admin, autocommit=True)
        rows = self._activity.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE datname = %s", (self._db,)
        ).fetchall()
        for pid, query in rows:
            if any(q in str(query) for q in MATERIALIZER_QUERIES):
                self.materializers.add(int(str(pid)))

    def _serves_us(self, pid: int) -> bool:
        if pid not in self._ours:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                return False
            self._ours[pid] = self.dbname is not None and self.dbname in title + b" "
        return self._ours[pid]

    def _sample(self) -> None:
        stats = _proc_stats()
        tree, grown = {self.pid}, True
        while grown:  # the process, its children, theirs...
            more = {pid for pid, s in stats.items() if s[0] in tree} - tree
            tree |= more
            grown = bool(more)
        rss = sum(stats[p][3] for p in tree if p in stats) * self._page
        self.peak_rss = max(self.peak_rss, rss)
        for pid in tree:
            self.hwm[pid] = max(self.hwm.get(pid, 0), _high_water(pid))
        if self.dbname is not None:
            for pid, (_, comm, ticks, _) in stats.items():
                if comm.startswith("postgres") and self._serves_us(pid):
                    self.backend_ticks[pid] = ticks
            with suppress(Exception):
                self._note_materializers()

    @property
    def peak_mb(self) -> float:
        """The larger of the tree's summed RSS and its largest process's high-water mark."""
        return max(self.peak_rss, max(self.hwm.values(), default=0)) / 2**20

    @property
    def backend_cpu_s(self) -> float:
        return sum(self.backend_ticks.values()) / os.sysconf("SC_CLK_TCK")

    @property
    def materializer_cpu_s(self) -> float:
        ticks = sum(t for pid, t in self.backend_ticks.items() if pid in self.materializers)
        return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    run: Run
    stdout: str
    stderr: str


def run_child(
    args: list[str],
    stdin_path: Path | None,
    env: dict[str, str],
    cwd: Path | None = None,
    dsn: str | None = None,
) -> Child:
    """Run a subprocess; measure it (and the backends of ``dsn``'s database) as ``Run``."""
    dbname = conninfo_to_dict(dsn).get("dbname") if dsn else None
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    out = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, with stdin)
    err = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdin=stdin, stdout=out, stderr=err, env=env, cwd=cwd)
        # pg_stat_activity is read from another database, so that its backend is not ours
        activity = make_conninfo(dsn, dbname="postgres") if dsn else None
        sampler = _Sampler(proc.pid, str(dbname) if dbname else None, activity)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        sampler.finish()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
        out.close()
        err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} {args[1:3]} failed ({proc.returncode}): {stderr[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    run = Run(seconds, sampler.peak_mb, cpu, sampler.backend_cpu_s, sampler.materializer_cpu_s)
    return Child(run, stdout, stderr)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMTA_PIPE_", "PG"))}
    env["PMTA_PIPE_LOG_LEVEL"] = "warning"
    env["PMTA_PIPE_SPOOL_DIR"] = tempfile.mkdtemp(prefix="pmta-bench-spool-")  # journal on
    # A file on stdin ends long before the records are loaded. Ingest's drain timeout
    # now counts only time without a commit, but checkouts from 11221da to before
    # 98f6793 (--compare-with) counted it from end of input and would exit 75 with the
    # rest in the spool: the benchmark waits for every record whichever it runs.
    env["PMTA_PIPE_DRAIN_TIMEOUT"] = "86400"
    return env


def pmta_pipe_cmd() -> list[str]:
    return [sys.executable, "-m", "pmta_pipe"]


# -- one run of each path ------------------------------------------------------------
def copy_files(dsn: str, pairs: list[tuple[str, Path]]) -> Run:
    """``bench/copy_file.py``: the time is its own (of COPY and commit), the rest ours."""
    args = [sys.executable, str(HERE / "copy_file.py"), dsn]
    for statement, path in pairs:
        args += [statement, str(path)]
    child = run_child(args, None, child_env(), dsn=dsn)
    child.run.seconds = float(json.loads(child.stdout)["seconds"])
    return child.run


def time_copy(admin: str, path: Path, records: int) -> Run:
    with database(admin) as dsn:
        create_base_table(dsn)
        statement = f"COPY {BASE_TABLE} FROM STDIN (FORMAT csv, HEADER)"
        run = copy_files(dsn, [(statement, path)])
        assert count(dsn, BASE_TABLE) == records
    return run


def prepare_events(dsn: str, rendered: Rendered) -> None:
    """The pmta schema and the partitions of ``rendered``'s days, as the loader makes them."""
    from pmta_pipe.migrate import apply_migrations

    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("SELECT pmta.ensure_partitions(%s::date[])", (rendered.days,))


def events_pairs(rendered: Rendered) -> list[tuple[str, Path]]:
    from pmta_pipe.fields import EVENT_COLUMNS

    columns = ", ".join(EVENT_COLUMNS)
    return [(copy_statement("pmta.events", fmt, columns), seg) for fmt, seg in rendered.segments]


def time_keyed_copy(admin: str, rendered: Rendered, records: int) -> Run:
    with database(admin) as dsn:
        prepare_events(dsn, rendered)
        run = copy_files(dsn, events_pairs(rendered))
        assert count(dsn, "pmta.events") == records
    return run


def check_reports(dsn: str, records: int) -> None:
    """The reports count every record once (after the clock): ``pmta.rollup_daily``, the
    materialized hours plus the live tail, sums to ``records``. Skipped for a checkout
    that keeps the rollups per batch (no ``pmta.rollup_state``; its replay row is loaded
    by COPY, without rollups)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('pmta.rollup_state')").fetchone()
        if row is None or row[0] is None:
            return
        total = conn.execute("SELECT coalesce(sum(n), 0) FROM pmta.rollup_daily").fetchone()
    assert total is not None and total[0] == records, (total, records)


def load_by_copy(dsn: str, rendered: Rendered) -> None:
    """Every record of ``rendered`` in ``pmta.events`` by the keyed COPY, at rest."""
    prepare_events(dsn, rendered)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        conn.execute("SET TIME ZONE 'UTC'")
        with conn.transaction():
            for statement, seg in events_pairs(rendered):
                with seg.open("rb") as f, cur.copy(statement) as copy:
                    while chunk := f.read(1 << 20):
                        copy.write(chunk)
        conn.execute("VACUUM (ANALYZE) pmta.events")  # a table at rest, as autovacuum leaves it
        with suppress(psycopg.Error):  # needs a superuser or pg_checkpoint
            conn.execute("CHECKPOINT")


def time_rollup(admin: str, rendered: Rendered, records: int) -> Run:
    """``pmta-pipe rollup`` of every record (loaded before the clock, none materialized):
    what materializing costs, which ``ingest`` and ``import`` leave to later steps."""
    with database(admin) as dsn:
        load_by_copy(dsn, rendered)
        args = [*pmta_pipe_cmd(), "rollup", "--dsn", dsn, "--rollup-grace", "0"]
        run = run_child(args, None, child_env(), dsn=dsn).run
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(n), 0) FROM pmta.rollup_daily_materialized),"
                " (SELECT count(*) FROM pmta.events WHERE time_logged >= watermark)"
                " FROM pmta.rollup_state"
            ).fetchone()
        assert row is not None and row[0] + row[1] == records, row  # all but the last hour
        check_reports(dsn, records)
    return run


def time_ingest(admin: str, path: Path, records: int, code: Path | None = None) -> Run:
    """``pmta-pipe ingest``; of the checkout ``code`` instead of this one when given."""
    with database(admin) as dsn:
        run = ingest(dsn, path, code)
        assert count(dsn, "pmta.events") == records
        check_reports(dsn, records)
    return run


def ingest(dsn: str, path: Path, code: Path | None = None) -> Run:
    args = [*pmta_pipe_cmd(), "ingest", "--dsn", dsn, "--source", "bench"]
    env = child_env()
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return run_child(args, path, env, cwd=code or HERE.parent, dsn=dsn).run


def time_replay(
    admin: str, path: Path, rendered: Rendered, records: int, code: Path | None = None
) -> Run:
    """``pmta-pipe ingest`` of records every one of which is loaded already (of the
    checkout ``code`` when given)."""
    with database(admin) as dsn:
        load_by_copy(dsn, rendered)
        run = ingest(dsn, path, code)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*), sum(inserted), sum(duplicates) FROM pmta.ingest_batches"
            ).fetchone()
        assert count(dsn, "pmta.events") == records
        assert row is not None and row[1] == 0 and row[2] == records, row
        check_reports(dsn, records)
    return run


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


def time_import(admin: str, files: list[Path], records: int, jobs: int | None = None) -> Run:
    with database(admin) as dsn:
        args = [*pmta_pipe_cmd(), "import", "--dsn", dsn, "--source", "bench"]
        if jobs is not None:
            args += ["--jobs", str(jobs)]
        run = run_child([*args, *map(str, files)], None, child_env(), dsn=dsn).run
        assert count(dsn, "pmta.events") == records
        check_reports(dsn, records)
    return run


def time_pgloader(admin: str, path: Path, records: int) -> Run:
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
            run = run_child(args, None, child_env(), dsn=dsn).run
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        got = count(dsn, BASE_TABLE)
        if got != records:
            raise RuntimeError(f"pgloader loaded {got} of {records} records")
    return run


def time_naive(admin: str, path: Path, records: int, limit: int) -> Run:
    n = min(records, limit)
    with database(admin) as dsn:
        create_base_table(dsn)
        args = [sys.executable, str(HERE / "peers" / "naive_pipe.py"), dsn, BASE_TABLE, str(n)]
        run = run_child(args, path, child_env(), dsn=dsn).run
        assert count(dsn, BASE_TABLE) == n
    return run.scaled(records / n)  # extrapolated to all records


# -- the run ---------------------------------------------------------------------------
Timer = Callable[[], Run]


def bench_size(admin: str, work: Path, records: int, opts: argparse.Namespace) -> list[Result]:
    path = data_file(work, records)
    print(f"  rendering {records:,} records as the loader does", file=sys.stderr)
    rendered = render_file(path)
    assert rendered.rows == records, rendered.rows
    naive_limit = QUICK_NAIVE_LIMIT if opts.quick else NAIVE_LIMIT
    why = import_available(admin, work)
    gz = [] if why else [gzip_file(path)]
    parts = [] if why else split_files(path, records)
    paths: list[tuple[str, Timer, str]] = [
        (BASELINE, lambda: time_copy(admin, path, records), ""),
        ("keyed COPY into pmta.events", lambda: time_keyed_copy(admin, rendered, records), ""),
        ("pmta-pipe ingest", lambda: time_ingest(admin, path, records), ""),
    ]
    if opts.compare_with:
        code = Path(opts.compare_with).resolve()
        paths.append(
            (f"ingest, code of {code.name}", lambda: time_ingest(admin, path, records, code), "")
        )
    paths += [
        (
            "ingest of loaded records (replay)",
            lambda: time_replay(admin, path, rendered, records),
            "",
        ),
    ]
    if opts.compare_with:
        code = Path(opts.compare_with).resolve()
        paths.append(
            (
                f"replay, code of {code.name}",
                lambda: time_replay(admin, path, rendered, records, code),
                "",
            )
        )
    paths += [
        ("pmta-pipe import (gzip)", lambda: time_import(admin, gz, records), why),
        (
            f"import --jobs 1 ({SPLIT_FILES} gzip files)",
            lambda: time_import(admin, parts, records, jobs=1),
            why,
        ),
        (
            f"import --jobs 2 ({SPLIT_FILES} gzip files)",
            lambda: time_import(admin, parts, records, jobs=2),
            why,
        ),
        ("pmta-pipe rollup (materialize all)", lambda: time_rollup(admin, rendered, records), ""),
        (
            "pgloader",
            lambda: time_pgloader(admin, path, records),
            "" if shutil.which("pgloader") else "not installed",
        ),
        (
            "naive pipe (INSERT per row)",
            lambda: time_naive(admin, path, records, naive_limit),
            "",
        ),
    ]
    results = [Result(name, records, skipped=skip) for name, _, skip in paths]
    for (name, _, _), res in zip(paths, results, strict=True):
        if name.startswith("naive") and records > naive_limit:
            res.note = f"{naive_limit:,} records, extrapolated"
        if not res.skipped and name in opts.skip:
            res.skipped = "skipped (--skip)"
        if res.skipped:
            print(f"  {name}: {res.skipped}", file=sys.stderr)
    for i in range(opts.rounds):  # interleaved: round i of every path, then round i + 1
        for (name, timer, _), res in zip(paths, results, strict=True):
            if res.skipped:
                continue
            try:
                run = timer()
            except Exception as exc:  # a peer that fails is reported, not fatal
                last = [line for line in str(exc).splitlines() if line.strip()] or ["?"]
                res.skipped = f"failed: {last[-1][:300]}"
                print(f"  {name}: {res.skipped}", file=sys.stderr)
                continue
            res.add(run)
            print(f"  round {i + 1}, {name}: {run.seconds:.2f} s, "
                  f"{records / run.seconds:,.0f} rec/s, peak RSS {run.rss_mb:.0f} MB, "
                  f"CPU {run.cpu_s:.1f} s, backend CPU {run.backend_cpu_s:.1f} s "
                  f"(materializer {run.materializer_cpu_s:.1f} s)",
                  file=sys.stderr)  # fmt: skip
    for _, seg in rendered.segments:
        seg.unlink(missing_ok=True)
    return results


def markdown(results: list[Result]) -> str:
    base = {r.records: r.median for r in results if r.path == BASELINE and r.seconds}
    lines = [
        "| path | records | seconds, median (range) | records/s | share of COPY "
        "| peak RSS MB | CPU s | backend CPU s | of it materializer s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.path} | {r.records:,} | | | | | | | | {r.skipped} |")
            continue
        share = base[r.records] / r.median if r.records in base else float("nan")
        spread = f" ({min(r.seconds):.2f}-{max(r.seconds):.2f})" if len(r.seconds) > 1 else ""
        lines.append(
            f"| {r.path} | {r.records:,} | {r.median:.2f}{spread} | {r.rate:,.0f} | "
            f"{share:.2f} | {max(r.rss_mb):.0f} | {statistics.median(r.cpu_s):.1f} | "
            f"{statistics.median(r.backend_cpu_s):.1f} | "
            f"{statistics.median(r.materializer_cpu_s):.1f} | {r.note} |"
        )
    return "\n".join(lines)


def rss_growth(results: list[Result]) -> list[str]:
    out = []
    for name in dict.fromkeys(r.path for r in results if r.path != BASELINE):
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
