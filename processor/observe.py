"""Prometheus metrics, health, readiness and one bundle's state, over HTTP.

GET /metrics   Prometheus text format (counters read from the engine at scrape time)
GET /healthz   200 while the processing loop turns, 503 when it is stuck
GET /readyz    200 once every task runs (restored) and the global tables caught up, 503
               before and during every later rebalance; the body says what is restoring
GET /bundles/<vip_bundle_id>   the bundle's committed state as JSON, if this instance owns it
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from processor.codec import Codec
from processor.domain.messages import VipBundle
from processor.runtime.engine import Engine
from processor.runtime.stats import Stats

log = logging.getLogger(__name__)

STUCK_AFTER_S = 60.0
_HELP = {
    "processed": "records whose outcome changed state and was committed",
    "skipped": "records ignored by the saga (duplicates, after finalization)",
    "replayed": "records re-read after a restart that the last commit had processed (skipped)",
    "forwarded": "input events routed to a repartition topic",
    "not_routed": "input events of no VIP bundle, skipped by the route stage",
    "retried": "not-ready attempts (each parks its bundle on its topic until retried)",
    "dead_lettered": "records sent to the dead-letter queue",
    "restored": "changelog records restored into local stores",
    "transactions": "committed transactions",
    "aborted": "aborted transactions",
}


class EngineCollector:
    """Reads the engine's counters when scraped: nothing on the processing path."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self._engine.stats
        for f in fields(Stats):
            counter = CounterMetricFamily(f"vip_bundle_{f.name}", _HELP.get(f.name, f.name))
            counter.add_metric([], getattr(stats, f.name))
            yield counter
        yield GaugeMetricFamily(
            "vip_bundle_assigned_partitions",
            "tasks (partitions) this instance owns",
            value=len(self._engine.assigned_partitions),
        )
        yield GaugeMetricFamily(
            "vip_bundle_parked_records",
            "not-ready records parked (their bundle waits; other bundles flow)",
            value=self._engine.parked,
        )
        yield GaugeMetricFamily(
            "vip_bundle_oldest_parked_seconds",
            "how long the oldest parked record has waited (survives restarts)",
            value=self._engine.oldest_wait_s(),
        )
        yield GaugeMetricFamily(
            "vip_bundle_paused_partitions",
            "partitions paused by backpressure (too many parked records, a table catching up)",
            value=self._engine.paused_partitions,
        )
        readiness = self._engine.readiness()
        restoring = readiness["restoring"]
        assert isinstance(restoring, dict)
        yield GaugeMetricFamily(
            "vip_bundle_restoring_partitions",
            "stores still restoring from their changelog",
            value=len(restoring),
        )
        yield GaugeMetricFamily(
            "vip_bundle_restore_remaining_records",
            "changelog records still to restore",
            value=sum(r["remaining"] for r in restoring.values()),
        )
        yield from self._histograms()
        lag = GaugeMetricFamily(
            "vip_bundle_consumer_lag",
            "records a partition holds beyond what this instance fetched (cached high "
            "watermark; includes transaction markers)",
            labels=["topic", "partition"],
        )
        for (topic, partition), records in sorted(self._engine.lag().items()):
            lag.add_metric([topic, str(partition)], records)
        yield lag
        remaining = GaugeMetricFamily(
            "vip_bundle_restore_remaining_records_by_partition",
            "changelog records a restoring store still has to read",
            labels=["partition"],
        )
        for partition, progress in restoring.items():
            remaining.add_metric([partition], progress["remaining"])
        yield remaining
        states = GaugeMetricFamily(
            "vip_bundle_bundles",
            "bundles in this instance's stores, by state (counted once a store runs, then "
            "kept up to date by every commit)",
            labels=["state"],
        )
        labels = self._engine.state_labels()
        for state in ("active", "finalized"):
            states.add_metric([state], labels.get(state, 0))
        yield states
        yield GaugeMetricFamily(
            "vip_bundle_seconds_since_loop",
            "seconds since the processing loop last turned",
            value=time.monotonic() - self._engine.last_loop_at,
        )

    def _histograms(self) -> Iterator[Metric]:
        commit = HistogramMetricFamily(
            "vip_bundle_commit_duration_seconds",
            "from the start of a transaction's commit (changelog, flush, offsets, commit) "
            "until its state is in RocksDB",
        )
        buckets, total = self._engine.commit_seconds.snapshot()
        commit.add_metric([], buckets, total)
        yield commit
        records = HistogramMetricFamily(
            "vip_bundle_record_processing_seconds",
            "time to process one record, per stage: route (decode, index lookup, forward) "
            "and manage (decode, decide, stage state and outputs)",
            labels=["stage"],
        )
        for stage, histogram in self._engine.record_seconds.items():
            buckets, total = histogram.snapshot()
            records.add_metric([stage], buckets, total)
        yield records


def _jsonable(state: VipBundle) -> dict[str, object]:
    return msgspec.to_builtins(state)  # datetimes as ISO 8601, tuples as lists


def serve(engine: Engine, codec: Codec, host: str, port: int) -> ThreadingHTTPServer:
    """Starts the server in a daemon thread; `server.server_address` has the port."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                stuck = time.monotonic() - engine.last_loop_at > STUCK_AFTER_S
                self._json(503 if stuck else 200, {"alive": not stuck})
            elif path == "/readyz":
                readiness = engine.readiness()
                self._json(200 if readiness["ready"] else 503, readiness)
            elif path.startswith("/bundles/"):
                self._bundle(path.removeprefix("/bundles/"))
            else:
                self._json(404, {"error": f"no such endpoint: {path}"})

        def _bundle(self, bundle_id: str) -> None:
            try:
                raw = engine.lookup(bundle_id.encode())
            except Exception:  # a store closed by a rebalance: ask again
                self._json(503, {"error": "rebalancing, retry"})
                return
            if raw is None:
                self._json(404, {"error": f"bundle {bundle_id} is not in this instance's state"})
                return
            self._json(200, _jsonable(codec.decode(raw, VipBundle)))

        def _json(self, status: int, body: object) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info(
        "HTTP on http://%s:%d (/metrics /healthz /readyz /bundles/<id>)", *server.server_address[:2]
    )
    return server
