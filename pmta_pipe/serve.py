"""``pmta-pipe serve``: PowerMTA's HTTP accounting webhook into PostgreSQL, journal first.

PowerMTA stages accounting batches on its own disk and posts each one to
``http-webhook-url`` until a receiver answers 2xx. This server answers ``200`` only
once every record of the body is durable in the spool, so a batch is always either
still staged at PowerMTA or journaled here::

    POST /accounting --event loop--> auth, read (bounded), 413/401/503 ...
        --decode thread--> gunzip (bounded), framing.ChunkSplitter (CSV or JSON)
        --journal thread--> webhook_journal: spool append + fsync, per source --> 200
        --feed thread--> feed.Feed: parse, pipeline.Pipeline, Loader (as ingest)

* Routes: ``POST --path`` (default ``/accounting``), ``GET /healthz`` (200 or 503, the
  verdict and problems of ``status.collect_status``, as one line of JSON),
  ``GET /metrics`` (``metrics``). Anything else is ``404`` or ``405``. Every answer but
  the two GETs is one line of text saying what happened or why not.
* Status codes of a post: ``200`` journaled (durable); ``400`` the body cannot be decoded
  (bad gzip, an unknown ``Content-Encoding``, a bad ``X-Pmta-Source``), nothing
  journaled; ``401`` no valid credential (``webhook_auth``); ``413`` the body passes
  ``--max-body`` as received or once decoded; ``503`` with ``Retry-After`` while the
  spool is full, while bodies in memory are at ``--max-inflight`` (``bodies.Budget``),
  or while the server is stopping.
* Source of the records: the credential's source name, else the ``X-Pmta-Source``
  header, else the peer's address.
* Loading is ``feed.Feed``, the same loop as ``ingest``'s: orphaned segments of dead
  processes are loaded at start and every minute, the loader retries a database that
  is away forever, and the report rollups are materialized in the background.
* SIGTERM, SIGINT, SIGHUP: stop listening, answer the requests in flight, load what
  was journaled, exit 0; once nothing is committed for ``--drain-timeout`` seconds,
  the rest stays in the spool (exit 75) for the next start or ``pmta-pipe replay``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import json
import logging
import os
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pmta_pipe import status
from pmta_pipe.bodies import BodyError, Budget, Claim, Decoded, is_gzip, read_records
from pmta_pipe.config import Settings
from pmta_pipe.errors import ConfigError, PmtaPipeError
from pmta_pipe.feed import Feed, PendingQueue
from pmta_pipe.load import LoadResult
from pmta_pipe.metrics import CONTENT_TYPE, WebhookMetrics
from pmta_pipe.spool import SpoolWriter
from pmta_pipe.webhook_auth import Credentials, load_credentials
from pmta_pipe.webhook_journal import WebhookJournal

log = logging.getLogger(__name__)

MAX_MEMORY_BATCHES = 2  # batches to be parsed held in memory; beyond, on disk only
MAX_MEMORY_BYTES = 8 << 20
RETRY_FULL = 30  # Retry-After (seconds): the spool is full
RETRY_BUSY = 1  # ... bodies in memory at --max-inflight
RETRY_STOPPING = 5  # ... the server is stopping
HEALTH_MAX_AGE = 2.0  # /healthz and /metrics reuse a status check this recent
SHUTDOWN_SECONDS = 60.0  # longest the requests in flight may take once stopping
MAX_SOURCE_CHARS = 200
READ_CHUNK = 1 << 16


@dataclass
class ServeResult:
    """What one ``serve`` run loaded: received = inserted + duplicates + rejected (+ left)."""

    totals: LoadResult
    seconds: float
    requests: int = 0
    recovered_segments: int = 0
    left_batches: int = 0
    left_records: int = 0
    error: PmtaPipeError | None = None  # why records were left (exit 75)


def tune_malloc() -> None:
    """Keep glibc's malloc from holding freed request bodies: for a process that serves.

    glibc gives each thread that allocates an arena of its own and keeps what is freed
    there for reuse; serve's threads (decoding, journaling, parsing, loading) each touch
    bodies of megabytes, so without this peak RSS grew by about a body per thread. Two
    arenas, and a fixed mmap threshold of 1 MiB (larger buffers come from ``mmap`` and
    go back to the system when freed), keep RSS near what is in use. A variable
    ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` set by the operator wins; nothing
    happens where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return
    m_arena_max, m_mmap_threshold = -8, -3  # malloc.h
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(m_arena_max, 2)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(m_mmap_threshold, 1 << 20)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together", "give both, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {cert} with key {key}: {exc}",
            "give a PEM certificate chain and its private key",
        ) from None
    return ctx


def check_settings(settings: Settings) -> tuple[Credentials | None, ssl.SSLContext | None]:
    """Validate what ``serve`` needs before anything starts: credentials, TLS, the address."""
    host, _port = settings.listen
    credentials = load_credentials(settings.auth_file) if settings.auth_file else None
    if credentials is None and not settings.no_auth and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without credentials",
            "give --auth-file FILE, or --no-auth behind a proxy that authenticates",
        )
    return credentials, tls_context(settings)


def _text(status_code: int, line: str, **headers: str) -> web.Response:
    return web.Response(status=status_code, text=line.rstrip("\n") + "\n", headers=headers)


@dataclass
class _Health:
    """The last ``status.collect_status``, reused for ``HEALTH_MAX_AGE`` seconds."""

    settings: Settings
    last: dict[str, Any] | None = None
    at: float = -1e9
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> dict[str, Any]:
        async with self.lock:
            if self.last is None or time.monotonic() - self.at > HEALTH_MAX_AGE:
                loop = asyncio.get_running_loop()
                self.last = await loop.run_in_executor(None, status.collect_status, self.settings)
                self.at = time.monotonic()
            return self.last

    def database_up(self) -> bool | None:
        return None if self.last is None else bool(self.last["database"]["reachable"])


class WebhookServer:
    """The aiohttp application, its worker threads and the loading side."""

    def __init__(
        self, settings: Settings, credentials: Credentials | None, tls: ssl.SSLContext | None
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.tls = tls
        self.stopping = False
        self.requests = 0
        self.in_flight = 0  # posts being read, decoded or journaled
        self.budget = Budget(settings.max_inflight)
        host, port = settings.listen
        self.control = SpoolWriter(
            settings.spool_path, f"serve {host}:{port}", max_bytes=settings.spool_max_bytes
        )
        self.pending = PendingQueue(MAX_MEMORY_BATCHES, MAX_MEMORY_BYTES)
        self.journal = WebhookJournal(
            self.control.folder, settings.spool_max_bytes, self.pending, self._committed
        )
        self.feed = Feed(
            settings, self.pending, settings.source_name, self.control, "from the webhook"
        )
        self.health = _Health(settings)
        self.metrics = WebhookMetrics(self._spool_state, self.health.database_up)
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="pmta-pipe-decode")
        self._journal = ThreadPoolExecutor(1, thread_name_prefix="pmta-pipe-journal")
        self.feed_failure: BaseException | None = None
        self.port: int | None = None

    # -- bookkeeping ----------------------------------------------------------
    def _committed(self, source: str, result: LoadResult, since: float | None) -> None:
        self.metrics.committed(source, result, since)

    def _spool_state(self) -> tuple[int, int, float]:
        batches, age = self.journal.unloaded()
        return self.control.folder_bytes(), batches, age

    # -- the application -----------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._answers])
        app.router.add_post(self.settings.webhook_path, self.accounting)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.scrape)
        return app

    @web.middleware
    async def _answers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """One line of text for the router's 404 and 405; every answer counted by code."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = _text(405, f"method {request.method} not allowed on {request.path}"
                             f" (allowed: {allowed})", Allow=allowed)  # fmt: skip
        except web.HTTPNotFound:
            response = _text(404, f"no such path {request.path} (PowerMTA posts to"
                             f" {self.settings.webhook_path})")  # fmt: skip
        except web.HTTPException as exc:
            response = _text(exc.status, exc.reason)
        except Exception as exc:  # a bug: one line to the client, the traceback to the log
            log.exception("%s %s: unexpected error", request.method, request.path)
            response = _text(500, f"internal error: {type(exc).__name__} (see the server's log)")
        self.requests += 1
        self.metrics.answered(response.status)
        if (
            response.status >= 400
            and response.status != 503
            and request.path == self.settings.webhook_path
        ):
            log.info("%s %s from %s: %d %s", request.method, request.path, request.remote,
                     response.status, (getattr(response, "text", "") or "").strip())  # fmt: skip
        return response

    async def accounting(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return self._refuse(503, "the server is stopping: retry later", RETRY_STOPPING)
        source: str | None = None
        if self.credentials is not None:
            verdict = self.credentials.check(request.headers.get("Authorization"))
            if not verdict.ok:
                response = _text(
                    401, verdict.why, **{"WWW-Authenticate": 'Bearer realm="pmta-pipe"'}
                )
                response.force_close()
                return response
            source = verdict.source
        if source is None:
            given = request.headers.get("X-Pmta-Source")
            if given is not None:
                given = given.strip()
                if not given or len(given) > MAX_SOURCE_CHARS or not given.isprintable():
                    return self._refuse(
                        400, "invalid X-Pmta-Source (1 to 200 printable characters)"
                    )
                source = given
        if source is None:
            source = request.remote or "unknown"
        max_body = self.settings.max_body
        if request.content_length is not None and request.content_length > max_body:
            return self._refuse(413, f"body of {request.content_length} bytes is larger than"
                                f" --max-body ({max_body} bytes)")  # fmt: skip
        claim = Claim(self.budget)
        self.in_flight += 1
        try:
            return await self._post(request, source, claim)
        except BodyError as exc:
            retry = RETRY_BUSY if exc.status == 503 else None
            return self._refuse(exc.status, exc.why, retry)
        finally:
            claim.release()
            self.in_flight -= 1

    def _refuse(self, code: int, why: str, retry_after: int | None = None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        response = _text(code, why, **headers)
        if code in (413, 503):
            response.force_close()  # the rest of the body is not read
        return response

    async def _post(self, request: web.Request, source: str, claim: Claim) -> web.StreamResponse:
        max_body = self.settings.max_body
        pieces: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > max_body:
                    raise BodyError(413, f"body is larger than --max-body ({max_body} bytes)")
                claim.take(len(chunk))
                pieces.append(chunk)
        except (ConnectionError, HttpProcessingError) as exc:  # gone, or bad chunks
            raise BodyError(400, f"request body cut off or malformed: {exc}") from None
        received_at = datetime.now(timezone.utc)
        data = b"".join(pieces)
        del pieces
        self.metrics.body_bytes.inc(len(data))
        gz = is_gzip(
            request.headers.get("Content-Encoding", ""),
            request.headers.get("Transfer-Encoding", ""),
            data[:2],
        )
        loop = asyncio.get_running_loop()
        decoded: Decoded = await loop.run_in_executor(
            self._decode, read_records, data, gz, self.settings.max_body,
            self.settings.batch_rows, claim.take,
        )  # fmt: skip
        del data
        self.metrics.decoded_bytes.inc(decoded.decoded_bytes)
        if not decoded.batches:
            return _text(200, "ok: 0 records")
        outcome = await loop.run_in_executor(
            self._journal, self.journal.journal, source, decoded.batches, received_at,
            decoded.torn,
        )  # fmt: skip
        del decoded
        if not outcome.ok:
            full = "full" in outcome.why
            return self._refuse(503, outcome.why, RETRY_FULL if full else RETRY_BUSY)
        self.metrics.journaled(source, outcome.records)
        log.debug("journaled %d records (%d batches) from %s", outcome.records,
                  outcome.batches, source)  # fmt: skip
        return _text(200, f"ok: {outcome.records} records journaled")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        st = await self.health.get()
        body = json.dumps({"healthy": st["healthy"], "problems": st["problems"]})
        return web.Response(
            status=200 if st["healthy"] else 503, text=body + "\n", content_type="application/json"
        )

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        await self.health.get()  # pmta_pipe_database_up
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # -- the run -------------------------------------------------------------
    def _run_feed(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.feed.run()
        except BaseException as exc:  # handed to the main thread, which reports it
            self.feed_failure = exc
        finally:
            if not self.stopping:  # the loading side ended on its own: stop serving
                loop.call_soon_threadsafe(stop.set)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum, stop)
        runner = web.AppRunner(
            self.app(), access_log=None, auto_decompress=False, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await runner.setup()
        host, port = self.settings.listen
        site = web.TCPSite(runner, host, port, ssl_context=self.tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                "is another pmta-pipe serve running there? choose another --listen",
            ) from None
        self.port = runner.addresses[0][1] if runner.addresses else port
        scheme = "https" if self.tls else "http"
        log.info("listening on %s://%s:%d%s (auth: %s)", scheme, host, self.port,
                 self.settings.webhook_path,
                 "auth file" if self.credentials else "none")  # fmt: skip
        feeder = threading.Thread(
            target=self._run_feed, args=(stop, loop), name="pmta-pipe-feed", daemon=True
        )
        feeder.start()
        try:
            await stop.wait()
        finally:
            self.stopping = True
            await site.stop()  # stop listening
            # answer the posts in flight: their bodies are still read (aiohttp's own
            # shutdown stops reading them), then close every connection
            deadline = time.monotonic() + SHUTDOWN_SECONDS
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await runner.cleanup()
            self._decode.shutdown(wait=True)
            self._journal.shutdown(wait=True)  # every body taken is journaled and queued
            self.pending.close()
            self.feed.drain()
            await loop.run_in_executor(None, feeder.join)

    def _on_signal(self, signum: int, stop: asyncio.Event) -> None:
        if not stop.is_set():
            log.info("%s: stop accepting, answer what is in flight, load what was journaled",
                     signal.Signals(signum).name)  # fmt: skip
        self.stopping = True
        stop.set()


def run_serve(settings: Settings) -> ServeResult:
    """Serve the webhook until a signal; journal and load every record posted."""
    started = time.monotonic()
    credentials, tls = check_settings(settings)
    server = WebhookServer(settings, credentials, tls)
    try:
        asyncio.run(server.main())
    finally:
        server.feed.stop()
        left_batches, left_records = server.journal.close()
        server.control.close()
    if server.feed_failure is not None:
        raise server.feed_failure
    feed = server.feed
    result = ServeResult(
        feed.totals, time.monotonic() - started, server.requests, feed.recovery.segments,
        left_batches, left_records,
    )  # fmt: skip
    result.error = feed.ending(
        left_batches, left_records, server.control.folder,
        "the next 'pmta-pipe serve' or 'ingest', or by 'pmta-pipe replay'",
    )  # fmt: skip
    return result
