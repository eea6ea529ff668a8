"""A ``pmta-pipe serve`` in a subprocess on a free port, and a plain HTTP client for it."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pmta_pipe.spool import list_files, read_segment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


class Served:
    """A running ``pmta-pipe serve`` (``start``), its log, and requests to it."""

    def __init__(
        self, env: dict[str, str], log: Path, *args: str, tls: bool = False, host: str = "127.0.0.1"
    ) -> None:
        self.host = host  # where it listens; requests go to 127.0.0.1
        self.env = env
        self.log = log
        self.args = args
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Served:
        self.port = free_port()
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pmta_pipe", "serve",
                 "--listen", f"{self.host}:{self.port}", *self.args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while b"listening on" not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.text()}")
            assert time.monotonic() < deadline, f"serve did not listen: {self.text()}"
            time.sleep(0.05)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=ctx)  # fmt: skip
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Answer:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            r = conn.getresponse()
            return Answer(r.status, r.read().decode(), {k.lower(): v for k, v in r.getheaders()})
        finally:
            conn.close()

    def post(self, body: bytes, headers: dict[str, str] | None = None, **kw: bool) -> Answer:
        return self.request("POST", "/accounting", body, headers, **kw)

    def post_gzip(self, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        return self.post(gzip.compress(body), {"Content-Encoding": "gzip", **(headers or {})})

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path, *args: str, tls: bool = False) -> Iterator[Served]:
    s = Served(env, log, *args, tls=tls).start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(timeout=30)


def spooled_records(folder: Path) -> int:
    """Records (header lines included) in intact batches of the spool's segments."""
    total = 0
    for f in list_files(folder):
        if f.kind == "segment":
            with contextlib.suppress(FileNotFoundError):
                total += read_segment(f.path).records
    return total


def segment_files(folder: Path) -> list[str]:
    return sorted(f.name for f in list_files(folder) if f.kind == "segment")


def wait_for(condition: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


def auth_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / "auth"
    path.write_text(text)
    os.chmod(path, mode)
    return path
