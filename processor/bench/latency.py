"""End-to-end latency with the processor live and otherwise idle: from a committed
FlightBookingFailed_v1 to its bundle's last RefundTicket visible (read_committed),
at a modest rate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Message, Producer

from processor.bench.config import BenchError
from processor.bench.kafka import Tail
from processor.bench.sampling import follow, percentile
from processor.bench.session import Session
from processor.bench.throughput import EngineThread
from processor.bench.workload import feed_causally, key_of
from processor.topology import BUNDLE_HEADER, Topics


@dataclass
class Latency:
    samples: int
    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    refunds: int
    values_ms: list[float] = field(default_factory=list)


def latency(session: Session, topics: Topics, running: EngineThread) -> Latency:
    cfg = session.config
    stats = running.engine.stats
    bundles = [session.stories.bundle("flight-failed") for _ in range(cfg.latency_samples)]
    # Everything but the failures first, so that each failure is actionable at once.
    before = [e for b in bundles for e in b.events[:-1]]
    feeder = Producer({"bootstrap.servers": cfg.bootstrap_servers, "linger.ms": 5})
    base = stats.processed + stats.skipped
    feed_causally(feeder, session.codec, topics, before)
    t0 = time.monotonic()

    def done() -> int:
        if stats.not_routed:
            raise BenchError(f"latency: {stats.not_routed} events not routed")
        return stats.processed + stats.skipped - base

    follow(
        session.progress,
        "latency: bundles awaiting their flight",
        len(before),
        lambda: (done(),),
        lambda: time.monotonic() if done() >= len(before) else None,
        running.check,
        t0,
        cfg.sample_every_s,
        cfg.timeout_s,
    )
    time.sleep(0.5)  # their transactions commit: the engine is idle

    tickets = {b.vip_bundle_id: b.tickets for b in bundles}
    seen: dict[str, int] = {}
    refunded: dict[str, float] = {}

    def on_refund(msg: Message, now: float) -> None:
        raw = dict(msg.headers() or []).get(BUNDLE_HEADER)
        bundle = raw.decode() if isinstance(raw, bytes) else raw
        if bundle in tickets:
            seen[bundle] = seen.get(bundle, 0) + 1
            if seen[bundle] == tickets[bundle]:
                refunded[bundle] = now

    tail = Tail(cfg.bootstrap_servers, [topics.output_named("command", "RefundTicket")], on_refund)
    producer = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "transactional.id": f"{topics.application_id}-latency",
            "linger.ms": 0,
        }
    )
    producer.init_transactions(60)
    committed: dict[str, float] = {}
    task = session.progress.add_task("latency: failures -> refunds", total=len(bundles))
    try:
        next_at = time.monotonic()
        for bundle in bundles:
            running.check()
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / cfg.latency_rate
            failure = bundle.events[-1]
            producer.begin_transaction()
            producer.produce(
                topics.input(failure.schema_name),
                session.codec.encode(failure),
                key_of(failure).encode(),
            )
            producer.commit_transaction(30)
            committed[bundle.vip_bundle_id] = time.monotonic()
            session.progress.update(task, completed=len(refunded))
        deadline = time.monotonic() + cfg.timeout_s
        while len(refunded) < len(bundles):
            running.check()
            if time.monotonic() > deadline:
                raise BenchError(f"latency: {len(refunded)} of {len(bundles)} refunded")
            session.progress.update(task, completed=len(refunded))
            time.sleep(0.02)
        session.progress.update(task, completed=len(refunded))
    finally:
        tail.stop()
        producer.close()
    values = sorted(max(0.0, (refunded[b] - committed[b]) * 1000) for b in committed)  # ms
    return Latency(
        samples=len(values),
        rate_per_s=cfg.latency_rate,
        p50_ms=round(percentile(values, 0.50), 1),
        p90_ms=round(percentile(values, 0.90), 1),
        p99_ms=round(percentile(values, 0.99), 1),
        max_ms=round(values[-1], 1),
        mean_ms=round(sum(values) / len(values), 1),
        refunds=sum(seen.values()),
        values_ms=[round(v, 2) for v in values],
    )
