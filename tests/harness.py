"""A throwaway deployment of the process manager on the real test broker.

Each `Deployment` has its own application id and output topic names, so tests
never see each other's records. Every topic whose name holds that application id
is deleted when the test ends (tests/conftest.py), pass or fail.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
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
    partition: int = -1
    offset: int = -1
    header_list: tuple[tuple[str, bytes], ...] = ()  # in order, repeated names kept


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
class Process:
    """A `processor run` subprocess: its log in a file, its HTTP endpoints by the port
    it logged (it binds port 0)."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    _base: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def http(self, timeout: float = 60.0) -> str:
        """Base URL of its HTTP server, once it logged it."""
        if self._base is None:
            found: list[str] = []

            def logged() -> bool:
                assert self.alive(), f"processor exited {self.popen.returncode}:\n{self.log}"
                found.extend(re.findall(r"HTTP on (http://[\d.]+:\d+)", self.log))
                return bool(found)

            wait_for(logged, timeout, "the processor's HTTP server")
            self._base = found[0]
        return self._base

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http() + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until it owns partitions and restored them (/readyz)."""
        self.http(timeout)
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout, "the processor ready")

    def bundle(self, vip_bundle_id: str) -> dict[str, Any] | None:
        """The committed state of a bundle in this instance's store (/bundles/<id>)."""
        for _ in range(50):
            status, body = self.get(f"/bundles/{vip_bundle_id}")
            if status != 503:  # 503: a rebalance closed a store; ask again
                break
            time.sleep(0.1)
        if status == 404:
            return None
        assert status == 200, (status, body)
        return dict(json.loads(body))

    def metric(self, name: str) -> float:
        """A Prometheus sample of /metrics, e.g. vip_bundle_aborted_total."""
        match = re.search(rf"^{re.escape(name)} (\S+)$", self.get("/metrics")[1], re.MULTILINE)
        assert match, f"no metric {name}"
        return float(match[1])

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean stop) and its exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(30)


class TopicLeakWarning(UserWarning):
    """Topics a test made could not be deleted; the test's own result stands."""


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> list[str]:
    """Deletes `names` that exist; returns those that could not be deleted. Never raises:
    it runs at teardown, where an error must not hide or change the test's result."""
    names = list(names)
    if not names:
        return []
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        listed = admin.list_topics(timeout=timeout).topics
        present = sorted(set(names) & set(listed))
        if not present:
            return []
        futures = admin.delete_topics(present, operation_timeout=timeout)
    except Exception:  # a broker that is gone: nothing more can be done from here
        return names
    failed = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except Exception:
            failed.append(name)
    return failed


def topics_named_after(bootstrap: str, marker: str, timeout: float = 10.0) -> list[str]:
    """Every topic on the broker whose name contains `marker`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return [t for t in admin.list_topics(timeout=timeout).topics if marker in t]


# Deployments made since the last clean-up, registered before they create any topic.
_live: list[Deployment] = []


def clean_up_deployments(bootstrap: str | None = None) -> None:
    """Stops the engines tests left running and deletes the topics of every deployment
    made since the last call (only those on `bootstrap`, if given). Warns, never raises."""
    for deployment in [d for d in _live if bootstrap in (None, d.bootstrap)]:
        _live.remove(deployment)
        leftover = deployment.close()
        if leftover:
            warnings.warn(
                f"could not delete the topics of {deployment.app}: {leftover}",
                TopicLeakWarning,
                stacklevel=2,
            )


@dataclass
class Deployment:
    bootstrap: str
    state_root: Path
    partitions: int = 3
    input_partitions: tuple[int, ...] = (2,)  # cycled over the six input topics
    inputs_of: Deployment | None = None  # share another deployment's input topics
    # How the engine reads and writes (default: single-object Avro), and how this
    # deployment's services write events (default: the engine's codec).
    codec: Any = None
    services_codec: Any = None
    topics: Topics = field(init=False)
    _running: list[RunningEngine] = field(init=False, default_factory=list)
    _processes: list[Process] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        app = f"test-{uuid.uuid4().hex[:10]}"
        # Input and output topics get a suffix: private to this test.
        owner = self.inputs_of.app if self.inputs_of else app
        private = {t: f"{t}.{owner}" for t in Topics().inputs}
        private |= {t: f"{t}.{app}" for t in Topics().outputs}
        self.topics = Topics(app, private)
        _live.append(self)  # before any topic exists: a failure below still cleans up
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
    def engine_codec(self) -> Any:
        return self.codec or codec

    @property
    def events_codec(self) -> Any:
        return self.services_codec or self.engine_codec

    @property
    def app(self) -> str:
        return self.topics.application_id

    def close(self) -> list[str]:
        """Stops engines still running (a test that failed midway) and deletes every
        topic named after this application id: internal, private inputs and outputs,
        and any a test or `processor run` derived from it. Returns what is left."""
        for process in self._processes:
            with contextlib.suppress(Exception):
                process.kill()
        for running in self._running:
            with contextlib.suppress(Exception):
                running.engine.stop()
                running.thread.join(30)
        with contextlib.suppress(Exception):
            self._producer.flush(5)
        try:
            doomed = topics_named_after(self.bootstrap, self.app)
        except Exception:
            return [f"*{self.app}*"]
        return delete_topics(self.bootstrap, doomed)

    # --- running instances ----------------------------------------------------

    def start(self, instance: str = "a", **changes: Any) -> RunningEngine:
        engine = build_engine(
            bootstrap_servers=self.bootstrap,
            topics=self.topics,
            instance_id=instance,
            state_dir=self.state_root / instance,
            consumer_config=changes.pop("consumer_config", FAST_GROUP),
            codec=self.engine_codec,
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
        self._running.append(running)
        running.thread.start()
        wait_for(engine.ready.is_set, what=f"instance {instance} assigned and restored")
        return running

    def cli_args(self, state_dir: Path, instance: str | None, *extra: str) -> list[str]:
        """Arguments of `processor run` for this deployment (instance None: the id kept
        in the state dir)."""
        args = ["run", "--bootstrap-servers", self.bootstrap, "--application-id", self.app]
        args += ["--state-dir", str(state_dir)]
        args += ["--instance-id", instance] if instance is not None else []
        args += ["--partitions", str(self.partitions), "--http", "127.0.0.1:0"]
        for default, name in self.topics.overrides.items():
            args += ["--topic", f"{default}={name}"]
        for key, value in FAST_GROUP.items():
            args += ["-X", f"{key}={value}"]
        return [*args, *extra]

    def spawn(self, state_dir: Path, instance: str | None, *extra: str) -> Process:
        """`processor run` in a subprocess; killed at the test's end if still running."""
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir.parent / f"{state_dir.name}-{len(self._processes)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "processor", *self.cli_args(state_dir, instance, *extra)]
        with log_path.open("wb") as log:
            popen = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        process = Process(popen, log_path)
        self._processes.append(process)
        return process

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
            sent.append(self.send_raw(topic, bundle, self.events_codec.encode(event)))
        return sent

    def publish(self, *events: Event, key: str | None = None) -> list[tuple[int, int]]:
        """Produces events to their input topics as the services would: with `key`
        (None: no key) and no regard for bundles."""
        return [
            self.send_raw(self.topics.input(e.schema_name), key, self.events_codec.encode(e))
            for e in events
        ]

    def send_raw(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> tuple[int, int]:
        where: list[tuple[int, int]] = []
        self._producer.produce(
            topic,
            value,
            key,
            headers=headers,
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
                headers = tuple(msg.headers() or [])
                received.append(
                    Received(
                        msg.topic(),
                        (msg.key() or b"").decode(),
                        self.engine_codec.decode(value) if is_ours else value,
                        dict(headers),
                        msg.partition(),
                        msg.offset(),
                        headers,
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


def final_state(events: Iterable[Event]) -> dict[str, Any]:
    """The pure saga's state after `events` fed in this order, as /bundles/<id> shows it."""
    state = None
    for event in events:
        decision = decide(state, event)
        assert isinstance(decision, Apply), decision
        state = decision.state
    assert state is not None
    return msgspec.json.decode(msgspec.json.encode(state))  # as /bundles/<id> serves it


def observed(received: Iterable[Received]) -> Expected:
    return Counter((r.topic, r.key, r.message) for r in received)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
