"""Runs the simulated services against a broker: publishes events, answers the
processor's commands, records its outputs, and checks them at the end.

`Simulation` is the loop one step at a time, for callers that do more between
steps (the chaos run); `simulate` drives it alone with a progress bar.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
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
    ordinary_references: frozenset[str] = frozenset()  # ids of no bundle: no output for them

    @property
    def ok(self) -> bool:
        return not self.problems


def _key(event: Event) -> str | None:
    """Keys as the services would choose them: the processor must not rely on them."""
    for name in ("vip_bundle_id", "booking_id", "flight_id"):
        if hasattr(event, name):
            return getattr(event, name)
    return None


# (consumed record, its decoded message, the record's vip_bundle_id header, when seen)
OutputHook = Callable[[Message, object, str, float], None]


class Simulation:
    """The services, one step of their loop at a time."""

    def __init__(self, config: SimulationConfig, on_output: OutputHook | None = None) -> None:
        self.config = config
        self._on_output = on_output
        self._codec = config.codec or Codec()
        common = {
            "bootstrap.servers": config.bootstrap_servers,
            **config.client_config,
            **client_logging(),
        }
        self._producer = Producer({**common, "enable.idempotence": True, "linger.ms": 5})
        self._consumer = Consumer(
            {
                **common,
                "group.id": f"simulator-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        # Start at today's ends: outputs of earlier runs are not this run's.
        admin = AdminClient(common)
        metadata = admin.list_topics(timeout=30).topics
        outputs = config.topics.outputs
        ends = end_offsets(admin, ((t, p) for t in outputs for p in metadata[t].partitions))
        admin.poll(0)  # its librdkafka log lines; nothing else serves them
        self._consumer.assign([TopicPartition(t, p, end) for (t, p), end in ends.items()])
        self.services = Services(config.knobs, config.seed)
        self._keys = random.Random(config.seed ^ 0x5EED)  # null keys: not the world's draws
        self.observed = Observed()
        self._queue: list[Scheduled] = []
        self.sent = 0
        self.created = 0
        self.started = time.monotonic()
        self._next_bundle_at = self.started
        self._done_at: float | None = None
        self.timed_out = False
        self.finished = False

    @property
    def finalized(self) -> int:
        return sum(1 for b in self.services.plans if self.observed.finals.get(b))

    def step(self) -> None:
        """Start the bundles that are due, send the events that are due, answer what the
        processor published (waiting up to 50 ms for it)."""
        config, now = self.config, time.monotonic()
        while self.created < config.bundles and self._next_bundle_at <= now:
            for item in self.services.new_bundle(now):
                heapq.heappush(self._queue, item)
            self.created += 1
            self._next_bundle_at += 1 / config.rate
        while self._queue and self._queue[0].due <= now:
            event = heapq.heappop(self._queue).event
            key = None if self._keys.random() < config.knobs.null_key_rate else _key(event)
            self._producer.produce(
                config.topics.input(event.schema_name), self._codec.encode(event), key
            )
            self.sent += 1
        self._producer.poll(0)
        for msg in self._consumer.consume(500, timeout=0.05):
            if msg.error():
                continue
            message = self._codec.decode(msg.value())
            bundle = dict(msg.headers() or []).get(BUNDLE_HEADER, b"").decode()
            self.observed.record(message, bundle)
            seen = time.monotonic()
            if self._on_output is not None:
                self._on_output(msg, message, bundle, seen)
            for item in self.services.on_command(message, seen):
                heapq.heappush(self._queue, item)
        now = time.monotonic()
        if (
            self.created == config.bundles
            and not self._queue
            and complete(self.services.plans, self.observed)
        ):
            self._done_at = self._done_at or now
            if now - self._done_at >= config.settle_s:
                self.finished = True
        if now - self.started > config.timeout_s:
            self.timed_out = self.finished = True

    def close(self) -> Result:
        self._producer.flush(30)
        self._consumer.close()
        services = self.services
        return Result(
            plans=services.plans,
            observed=self.observed,
            problems=violations(services.plans, self.observed, services.ordinary_references)
            + ([f"timed out after {self.config.timeout_s:.0f}s"] if self.timed_out else []),
            events_sent=self.sent,
            ordinary_bookings=services.ordinary,
            elapsed_s=time.monotonic() - self.started,
            timed_out=self.timed_out,
            ordinary_references=frozenset(services.ordinary_references),
        )


def simulate(config: SimulationConfig, console: Console | None = None) -> Result:
    console = console or Console(stderr=True)
    simulation = Simulation(config)
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
        while not simulation.finished:
            simulation.step()
            progress.update(
                bar,
                completed=simulation.finalized,
                detail=f"{simulation.sent} events sent, {simulation.observed.records} outputs",
            )
    return simulation.close()


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
