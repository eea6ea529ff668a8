"""``pmta-pipe serve``'s ``GET /metrics``: Prometheus text through ``prometheus-client``.

One ``CollectorRegistry`` per server (never the library's global one, so that nothing
else in the process adds to it and tests can run several). What it exports:

================================================  =====================================
``pmta_pipe_records_received_total{source}``      records journaled (answered 200)
``pmta_pipe_records_inserted_total{source}``      of them, committed as new rows
``pmta_pipe_records_duplicate_total{source}``     committed, already in the database
``pmta_pipe_records_rejected_total{source}``      committed to ``pmta.rejects``
``pmta_pipe_requests_total{code}``                requests answered, by status code
``pmta_pipe_body_bytes_total``                    request body bytes as received
``pmta_pipe_decoded_body_bytes_total``            the same bodies after gzip decoding
``pmta_pipe_spool_bytes``                         bytes of the spool's segments (every process)
``pmta_pipe_spool_batches``                       batches this server journaled, not committed
``pmta_pipe_spool_oldest_batch_age_seconds``      age of the oldest of them (0: none)
``pmta_pipe_database_up``                         1 when the last check reached the database
``pmta_pipe_commit_latency_seconds``              histogram: from a batch's 200 to its commit
================================================  =====================================

The record counters count what this server received and loaded itself: received =
inserted + duplicate + rejected once everything is committed. Records of spool
segments left by earlier runs that it recovers count in ``pmta.ingest_batches``
(route ``replay``), not here. The gauges are read when scraped, from callables the
server gives (``spool_state``, ``database_up``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pmta_pipe.load import LoadResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

#: (spool bytes, batches not committed, age of the oldest of them in seconds)
SpoolState = Callable[[], tuple[int, int, float]]


class _Gauges(Collector):
    def __init__(self, spool_state: SpoolState, database_up: Callable[[], bool | None]) -> None:
        self.spool_state = spool_state
        self.database_up = database_up

    def collect(self) -> Iterator[Metric]:
        nbytes, batches, age = self.spool_state()
        yield GaugeMetricFamily(
            "pmta_pipe_spool_bytes", "Bytes of the spool's segments (every process)", nbytes
        )
        yield GaugeMetricFamily(
            "pmta_pipe_spool_batches", "Batches this server journaled and not committed", batches
        )
        yield GaugeMetricFamily(
            "pmta_pipe_spool_oldest_batch_age_seconds",
            "Age of the oldest batch not committed (0: none)",
            age,
        )
        up = self.database_up()
        if up is not None:
            yield GaugeMetricFamily(
                "pmta_pipe_database_up", "1 when the last check reached the database", int(up)
            )


class WebhookMetrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self, spool_state: SpoolState, database_up: Callable[[], bool | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "pmta_pipe_records_received", "Records journaled (answered 200)", ["source"],
            registry=r,
        )  # fmt: skip
        self.inserted = Counter(
            "pmta_pipe_records_inserted", "Records committed as new rows", ["source"], registry=r
        )
        self.duplicate = Counter(
            "pmta_pipe_records_duplicate", "Records committed that were in the database already",
            ["source"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "pmta_pipe_records_rejected", "Records committed to pmta.rejects", ["source"],
            registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "pmta_pipe_requests", "Requests answered, by status code", ["code"], registry=r
        )
        self.body_bytes = Counter(
            "pmta_pipe_body_bytes", "Request body bytes as received", registry=r
        )
        self.decoded_bytes = Counter(
            "pmta_pipe_decoded_body_bytes", "Request body bytes after gzip decoding", registry=r
        )
        self.latency = Histogram(
            "pmta_pipe_commit_latency_seconds", "Seconds from a batch's 200 to its commit",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        r.register(_Gauges(spool_state, database_up))

    def answered(self, code: int) -> None:
        self.requests.labels(code=str(code)).inc()

    def journaled(self, source: str, records: int) -> None:
        self.received.labels(source=source).inc(records)

    def committed(self, source: str, result: LoadResult, latency: float | None) -> None:
        self.inserted.labels(source=source).inc(result.inserted)
        self.duplicate.labels(source=source).inc(result.duplicates)
        self.rejected.labels(source=source).inc(result.rejected)
        if latency is not None:
            self.latency.observe(max(0.0, latency))

    def render(self) -> bytes:
        return generate_latest(self.registry)
