"""Benchmark: ``pmta-pipe serve`` fed as PowerMTA's webhook feeds it, beside ``ingest``.

``python bench/serve.py [--records 100000] [--clients 4] [--body-mb 5] [--rounds 1]
[--dsn URI] [--json]``

The generated stream (``bench/generate.py``, the file ``bench/run.py`` writes) is cut
at record boundaries into batch files of about ``--body-mb`` MB, each starting with
the header line as PowerMTA's staged batch files do (``max-size 5M``, the default),
and each gzipped (``http-webhook-transfer-encoding gzip``) before the clock starts.
Then ``--clients`` threads post them to a ``pmta-pipe serve`` subprocess (keep-alive
connections, ``Content-Encoding: gzip``, a bearer token), each taking the next batch
as soon as its previous one is answered; a ``503`` is posted again after its
``Retry-After``, as PowerMTA would. The clock runs from the first post until every
record is committed (``pmta.events`` counted every 0.1 s). Reported: records/s, the
response time of the posts (p50, p99: the time to journal a batch, which PowerMTA
waits for), the peak RSS of the server (sampled, as ``bench/run.py`` does, with its
helpers), its CPU, the backends' CPU. ``pmta-pipe ingest`` of the same records, in a
database of its own on the same server, is measured in the same run with
``bench/run.py``'s ``time_ingest``; rounds are interleaved. See ``docs/performance.md``,
"Webhook".
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as bench  # noqa: E402  (bench/run.py: server, databases, data, sampling)

from pmta_pipe.framing import ChunkSplitter  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


@dataclass
class ServeRun:
    seconds: float
    records: int
    posts: int
    retries: int
    p50_ms: float
    p99_ms: float
    rss_mb: float
    cpu_s: float
    backend_cpu_s: float
    wire_mb: float


@dataclass
class Row:
    path: str
    runs: list[dict[str, float]] = field(default_factory=list)


def batch_files(path: Path, body_mb: float) -> list[bytes]:
    """The stream cut into gzipped batch files of about ``body_mb`` MB, header line first."""
    data = path.read_bytes()
    records: list[bytes] = []
    s = ChunkSplitter()
    s.feed(data, records)
    s.finish(records)
    header, rows = records[0], records[1:]
    limit = int(body_mb * 1_000_000)
    bodies: list[bytes] = []
    part: list[bytes] = [header]
    size = len(header) + 1
    for r in rows:
        if size + len(r) + 1 > limit and len(part) > 1:
            bodies.append(gzip.compress(b"\n".join(part) + b"\n"))
            part, size = [header], len(header) + 1
        part.append(r)
        size += len(r) + 1
    if len(part) > 1:
        bodies.append(gzip.compress(b"\n".join(part) + b"\n"))
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post_all(port: int, bodies: list[bytes], clients: int) -> tuple[list[float], int]:
    """Post every body with ``clients`` threads; the response times (s) and the retries."""
    todo: queue.Queue[bytes] = queue.Queue()
    for b in bodies:
        todo.put(b)
    times: list[float] = []
    retries = [0]
    lock = threading.Lock()
    errors: list[str] = []
    headers = {"Content-Encoding": "gzip", "Authorization": f"Bearer {TOKEN}",
               "Content-Type": "text/csv", "X-Pmta-Source": "bench"}  # fmt: skip

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                break
            while True:
                t = time.perf_counter()
                try:
                    conn.request("POST", "/accounting", body=body, headers=headers)
                    r = conn.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    with lock:
                        retries[0] += 1
                    time.sleep(1)
                    continue
                took = time.perf_counter() - t
                if r.status == 200:
                    with lock:
                        times.append(took)
                    break
                if r.status == 503:
                    with lock:
                        retries[0] += 1
                    time.sleep(float(r.getheader("Retry-After") or 1))
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    continue
                errors.append(f"{r.status}")
                return
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"posts failed: {errors[:5]}")
    return times, retries[0]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def time_serve(admin: str, bodies: list[bytes], records: int, clients: int) -> ServeRun:
    work = Path(tempfile.mkdtemp(prefix="pmta-bench-serve-"))
    auth = work / "auth"
    auth.write_text(f"{TOKEN}\n")
    auth.chmod(0o600)
    with bench.database(admin) as dsn:
        port = free_port()
        env = bench.child_env()
        env["PMTA_PIPE_LOG_LEVEL"] = "info"
        log = (work / "serve.log").open("wb")
        args = [*bench.pmta_pipe_cmd(), "serve", "--dsn", dsn, "--listen", f"127.0.0.1:{port}",
                "--auth-file", str(auth)]  # fmt: skip
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=HERE.parent)  # fmt: skip
        dbname = str(conninfo_to_dict(dsn).get("dbname"))
        sampler = bench._Sampler(proc.pid, dbname, make_conninfo(dsn, dbname="postgres"))
        sampler.start()
        try:
            deadline = time.monotonic() + 60
            while b"listening on" not in (work / "serve.log").read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "serve.log").read_text()[-2000:])
                time.sleep(0.05)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT 1")  # the schema is made on the server's first connection
                started = time.perf_counter()
                times, retries = post_all(port, bodies, clients)
                while True:
                    row = conn.execute("SELECT count(*) FROM pmta.events").fetchone()
                    if row is not None and int(row[0]) >= records:
                        break
                    time.sleep(0.1)
                seconds = time.perf_counter() - started
            proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(proc.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.finish()
            log.close()
        if code != 0:
            raise RuntimeError(f"serve exited {code}: {(work / 'serve.log').read_text()[-2000:]}")
        assert bench.count(dsn, "pmta.events") == records
        bench.check_reports(dsn, records)
    return ServeRun(
        seconds, records, len(bodies), retries, percentile(times, 50) * 1000,
        percentile(times, 99) * 1000, sampler.peak_mb, usage.ru_utime + usage.ru_stime,
        sampler.backend_cpu_s, sum(map(len, bodies)) / 1e6,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--body-mb", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dsn", help="admin conninfo of the server (default: embedded)")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    work = Path(tempfile.gettempdir()) / "pmta-bench"
    work.mkdir(exist_ok=True)
    path = bench.data_file(work, opts.records)
    bodies = batch_files(path, opts.body_mb)
    serve_rows, ingest_rows = Row("pmta-pipe serve"), Row("pmta-pipe ingest")
    with bench.server(opts.dsn) as admin:
        for _ in range(opts.rounds):
            s = time_serve(admin, bodies, opts.records, opts.clients)
            serve_rows.runs.append(asdict(s))
            i = bench.time_ingest(admin, path, opts.records)
            ingest_rows.runs.append(asdict(i))
    if opts.json:
        print(json.dumps({"records": opts.records, "clients": opts.clients,
                          "bodies": len(bodies), "serve": serve_rows.runs,
                          "ingest": ingest_rows.runs}, indent=2))  # fmt: skip
        return
    med = statistics.median
    sv, ig = serve_rows.runs, ingest_rows.runs
    s_sec, i_sec = med(r["seconds"] for r in sv), med(r["seconds"] for r in ig)
    print(f"{opts.records} records, {len(bodies)} gzip bodies of about {opts.body_mb:g} MB"
          f" ({med(r['wire_mb'] for r in sv):.1f} MB on the wire), {opts.clients} clients,"
          f" {opts.rounds} rounds (median)\n")  # fmt: skip
    print("| path | seconds | records/s | post p50 | post p99 | peak RSS | CPU | backends CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| pmta-pipe serve | {s_sec:.1f} | {opts.records / s_sec:,.0f} |"
          f" {med(r['p50_ms'] for r in sv):.0f} ms | {med(r['p99_ms'] for r in sv):.0f} ms |"
          f" {max(r['rss_mb'] for r in sv):.0f} MB | {med(r['cpu_s'] for r in sv):.1f} s |"
          f" {med(r['backend_cpu_s'] for r in sv):.1f} s |")  # fmt: skip
    print(f"| pmta-pipe ingest | {i_sec:.1f} | {opts.records / i_sec:,.0f} | – | – |"
          f" {max(r['rss_mb'] for r in ig):.0f} MB | {med(r['cpu_s'] for r in ig):.1f} s |"
          f" {med(r['backend_cpu_s'] for r in ig):.1f} s |")  # fmt: skip
    print(f"\nretried posts (503 or a dropped connection): {sum(r['retries'] for r in sv)}")


if __name__ == "__main__":
    main()
