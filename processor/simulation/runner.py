"""Runs the simulated services against a broker: publishes events, answers the
processor's commands, records its outputs, and checks them at the end."""

from __future__ import annotations

import heapq
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from processor.codec import Codec
from processor.domain.messages import Event
from processor.logs import client_logging
from processor.runtime.offsets import end_offsets
from processor.simulation.check import Observed, complete, summary, violations
from processor.simulation.services import Knobs, Plan, Scheduled, Services
from processor.topology import BUNDLE_HEADER, Topics


@dataclass(frozen=True)
class SimulationConfig:
    bootstrap_servers: str
    topics: Topics = field(default_factory=Topics)
    bundles: int = 200
    rate: float = 50.0  # new bundles per second
    knobs: Knobs = field(default_factory=Knobs)
    timeout_s: float = 120.0
    settle_s: float = 2.0  # keep listening after completion: duplicates show up late
    seed: int = 0
    client_config: dict[str, str] = field(default_factory=dict)
    codec: Any = None  # how events are written and outputs read; default single-object Avro


@dataclass
class Result:
    plans: dict[str, Plan]
    observed: Observed
    problems: list[str]
    events_sent: int
    ordinary_bookings: int
    elapsed_s: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def _key(event: Event) -> str | None:
    """Keys as the services would choose them: the processor must not rely on them."""
    for name in ("vip_bundle_id", "booking_id", "flight_id"):
        if hasattr(event, name):
            return getattr(event, name)
    return None


def simulate(config: SimulationConfig, console: Console | None = None) -> Result:
    console = console or Console(stderr=True)
    codec = config.codec or Codec()
    common = {
        "bootstrap.servers": config.bootstrap_servers,
        **config.client_config,
        **client_logging(),
    }
    producer = Producer({**common, "enable.idempotence": True, "linger.ms": 5})
    consumer = Consumer(
        {
            **common,
            "group.id": f"simulator-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    outputs = config.topics.outputs
    # Start at today's ends: outputs of earlier runs are not this run's.
    admin = AdminClient(common)
    metadata = admin.list_topics(timeout=30).topics
    ends = end_offsets(admin, ((t, p) for t in outputs for p in metadata[t].partitions))
    admin.poll(0)  # its librdkafka log lines; nothing else serves them
    consumer.assign([TopicPartition(t, p, end) for (t, p), end in ends.items()])

    services = Services(config.knobs, config.seed)
    observed = Observed()
    queue: list[Scheduled] = []
    sent = created = 0
    started = time.monotonic()
    next_bundle_at = started
    done_at: float | None = None
    timed_out = False
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task("bundles finalized", total=config.bundles, detail="")
        while True:
            now = time.monotonic()
            while created < config.bundles and next_bundle_at <= now:
                for item in services.new_bundle(now):
                    heapq.heappush(queue, item)
                created += 1
                next_bundle_at += 1 / config.rate
            while queue and queue[0].due <= now:
                event = heapq.heappop(queue).event
                topic = config.topics.input(event.schema_name)
                producer.produce(topic, codec.encode(event), _key(event))
                sent += 1
            producer.poll(0)
            for msg in consumer.consume(500, timeout=0.05):
                if msg.error():
                    continue
                message = codec.decode(msg.value())
                bundle = dict(msg.headers() or []).get(BUNDLE_HEADER, b"").decode()
                observed.record(message, bundle)
                for item in services.on_command(message, time.monotonic()):
                    heapq.heappush(queue, item)
            finalized = sum(1 for b in services.plans if observed.finals.get(b))
            progress.update(
                bar,
                completed=finalized,
                detail=f"{sent} events sent, {observed.records} outputs",
            )
            if created == config.bundles and not queue and complete(services.plans, observed):
                done_at = done_at or now
                if now - done_at >= config.settle_s:
                    break
            if now - started > config.timeout_s:
                timed_out = True
                break
    producer.flush(30)
    consumer.close()
    return Result(
        plans=services.plans,
        observed=observed,
        problems=violations(services.plans, observed, services.ordinary_references)
        + ([f"timed out after {config.timeout_s:.0f}s"] if timed_out else []),
        events_sent=sent,
        ordinary_bookings=services.ordinary,
        elapsed_s=time.monotonic() - started,
        timed_out=timed_out,
    )


def report(result: Result, console: Console) -> None:
    table = Table(title="VIP bundle simulation", title_justify="left")
    table.add_column("")
    table.add_column("expected", justify="right")
    table.add_column("observed", justify="right")
    for row in summary(result.plans, result.observed):
        table.add_row(*row)
    table.add_row("ordinary bookings (ignored)", str(result.ordinary_bookings), "-")
    table.add_row("events sent", "", str(result.events_sent))
    table.add_row("time", "", f"{result.elapsed_s:.1f}s")
    console.print(table)
    if result.ok:
        console.print("[bold green]PASS[/]: every bundle finalized once, refunds exactly right")
        return
    console.print(f"[bold red]FAIL[/]: {len(result.problems)} violation(s)")
    for problem in result.problems[:20]:
        console.print(f"  - {problem}")
    if len(result.problems) > 20:
        console.print(f"  ... and {len(result.problems) - 20} more")
