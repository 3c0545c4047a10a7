"""A throwaway deployment of the process manager on the real test broker.

Each `Deployment` has its own application id and output topic names, so tests
never see each other's records.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processor.admin import TopicSpec, create_topics, ensure_internal_topics
from processor.app import build_engine
from processor.chaos.partitions import murmur2, partition_of  # noqa: F401 (tests import them here)
from processor.codec import Codec
from processor.domain.messages import Event, bundle_id_of
from processor.domain.saga import Apply, decide
from processor.runtime.engine import Engine
from processor.topology import Topics

codec = Codec()
# Short enough that a killed member leaves the group quickly; the broker's minimum.
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


@dataclass(frozen=True)
class Received:
    topic: str
    key: str
    message: Any
    headers: dict[str, bytes]


@dataclass
class RunningEngine:
    engine: Engine
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def partitions(self) -> set[int]:
        return self.engine.assigned_partitions

    def stop(self) -> None:
        self.engine.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "engine did not stop"
        if self.errors:
            raise self.errors[0]


@dataclass
class Deployment:
    bootstrap: str
    state_root: Path
    partitions: int = 3
    input_partitions: tuple[int, ...] = (2,)  # cycled over the six input topics
    inputs_of: Deployment | None = None  # share another deployment's input topics
    topics: Topics = field(init=False)

    def __post_init__(self) -> None:
        app = f"test-{uuid.uuid4().hex[:10]}"
        # Input and output topics get a suffix: private to this test.
        owner = self.inputs_of.app if self.inputs_of else app
        private = {t: f"{t}.{owner}" for t in Topics().inputs}
        private |= {t: f"{t}.{app}" for t in Topics().outputs}
        self.topics = Topics(app, private)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        ensure_internal_topics(admin, self.topics, self.partitions)
        sizes = itertools.cycle(self.input_partitions)
        create_topics(admin, [TopicSpec(t, next(sizes)) for t in self.topics.inputs])
        create_topics(admin, [TopicSpec(t, 2) for t in self.topics.outputs])
        self._producer = Producer(
            {"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random"}
        )
        self._bundle_of_booking: dict[str, str] = {}  # what the route stage's index knows

    @property
    def app(self) -> str:
        return self.topics.application_id

    # --- running instances ----------------------------------------------------

    def start(self, instance: str = "a", **changes: Any) -> RunningEngine:
        engine = build_engine(
            bootstrap_servers=self.bootstrap,
            topics=self.topics,
            instance_id=instance,
            state_dir=self.state_root / instance,
            consumer_config=FAST_GROUP,
            codec=codec,
            **changes,
        )
        running = RunningEngine(engine, threading.Thread(target=lambda: None))

        def run() -> None:
            try:
                engine.run()
            except BaseException as exc:
                running.errors.append(exc)
                raise

        running.thread = threading.Thread(target=run, name=f"engine-{instance}", daemon=True)
        running.thread.start()
        wait_for(engine.ready.is_set, what=f"instance {instance} assigned and restored")
        return running

    def cli_args(self, state_dir: Path, instance: str, *extra: str) -> list[str]:
        """Arguments of `processor run` for this deployment."""
        args = ["run", "--bootstrap-servers", self.bootstrap, "--application-id", self.app]
        args += ["--state-dir", str(state_dir), "--instance-id", instance]
        args += ["--partitions", str(self.partitions), "--http", "127.0.0.1:0"]
        for default, name in self.topics.overrides.items():
            args += ["--topic", f"{default}={name}"]
        for key, value in FAST_GROUP.items():
            args += ["-X", f"{key}={value}"]
        return [*args, *extra]

    # --- input ------------------------------------------------------------------

    def send(self, *events: Event, key: str | None = None) -> list[tuple[int, int]]:
        """Produces events to their repartition topics keyed by their bundle, as the
        route stage would; returns (partition, offset) of each."""
        sent = []
        for event in events:
            named = bundle_id_of(event)
            if named is not None:
                self._bundle_of_booking.setdefault(getattr(event, "booking_id", ""), named)
            bundle = key or named or self._bundle_of_booking[event.booking_id]
            topic = self.topics.repartition(event.schema_name)
            sent.append(self.send_raw(topic, bundle, codec.encode(event)))
        return sent

    def publish(self, *events: Event, key: str | None = None) -> list[tuple[int, int]]:
        """Produces events to their input topics as the services would: with `key`
        (None: no key) and no regard for bundles."""
        return [
            self.send_raw(self.topics.input(e.schema_name), key, codec.encode(e)) for e in events
        ]

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes | None) -> tuple[int, int]:
        where: list[tuple[int, int]] = []
        self._producer.produce(
            topic,
            value,
            key,
            on_delivery=lambda err, msg: where.append((msg.partition(), msg.offset())),
        )
        self._producer.flush(30)
        assert len(where) == 1
        return where[0]

    # --- output -------------------------------------------------------------------

    def read(
        self,
        topics: Iterable[str] | None = None,
        until: Callable[[list[Received]], bool] = lambda _: False,
        timeout: float = 30.0,
        settle: float = 1.0,
        isolation: str = "read_committed",
    ) -> list[Received]:
        """Everything in `topics` (default: the outputs) from the start, read until
        `until` holds and `settle` more seconds bring nothing new, or `timeout`."""
        topics = list(topics or self.topics.outputs)
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "isolation.level": isolation,
                "enable.auto.commit": False,
            }
        )
        metadata = consumer.list_topics(timeout=30).topics
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        )
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    if until(received):
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since >= settle:
                            break
                    continue
                quiet_since = None
                value = msg.value()
                is_ours = msg.topic() in self.topics.outputs
                received.append(
                    Received(
                        msg.topic(),
                        (msg.key() or b"").decode(),
                        codec.decode(value) if is_ours else value,
                        dict(msg.headers() or []),
                    )
                )
        finally:
            consumer.close()
        return received

    def committed(self, topic: str, partition: int) -> int:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.app})
        try:
            [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=30)
            return tp.offset
        finally:
            consumer.close()


Expected = Counter[tuple[str, str, object]]  # (topic, key, message) -> how many


def expected_outputs(topics: Topics, events: Iterable[Event]) -> Expected:
    """What the pure saga publishes for `events` fed in this order."""
    state = None
    expected: Expected = Counter()
    for event in events:
        decision = decide(state, event)
        assert isinstance(decision, Apply), decision
        state = decision.state
        for out in decision.outputs:
            expected[(topics.output(out), out.key, out.message)] += 1
    return expected


def observed(received: Iterable[Received]) -> Expected:
    return Counter((r.topic, r.key, r.message) for r in received)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
