"""When what happens in a chaos run, in fractions of the traffic window T.

    0          p1 runs (started, and ready, before the traffic)
    0.10 0.20  p2, then p3 start: 1 -> 3 instances
    0.10..0.90 every few seconds a random running instance gets SIGKILL and is
               restarted after a short pause (same instance id and state dir)
    0.35       the node coordinating the group is stopped, and started again
    0.60       the node coordinating one instance's transactions, likewise
    0.75 0.85  p3, then p2 stop gracefully (SIGTERM): 3 -> 1

Two threads: one for the instances, one for the brokers (a coordinator move
takes seconds, and the kills go on meanwhile). The run's main loop calls
`tend()` between simulation steps: it restarts instances that exited on their
own (a finding, recorded by the supervisor).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from processor.chaos.faults import CoordinatorMove, move_coordinator
from processor.chaos.recovery import TP, Kill
from processor.chaos.supervisor import Supervisor
from processor.localkafka.cluster import LocalCluster

log = logging.getLogger(__name__)

# After a SIGKILL, before the output ends are taken: anything the victim had on the
# wire has reached the broker by then, and no restarted instance has started yet.
SETTLE_AFTER_KILL_S = 0.25


@dataclass(frozen=True)
class Schedule:
    traffic_s: float
    instances: int = 3
    kill_every_s: tuple[float, float] = (3.0, 6.0)
    restart_after_s: tuple[float, float] = (0.2, 2.0)
    kills_between: tuple[float, float] = (0.10, 0.90)
    scale_up_at: tuple[float, ...] = (0.10, 0.20)  # instance 2, 3, ...
    scale_down_at: tuple[float, ...] = (0.75, 0.85)  # the last, then the one before
    group_move_at: float | None = 0.35
    transaction_move_at: float | None = 0.60
    coordinator_down_s: float = 5.0
    broker_kill: bool = False  # SIGKILL the coordinator node instead of SIGTERM

    @property
    def names(self) -> list[str]:
        return [f"p{i}" for i in range(1, self.instances + 1)]


class Conductor:
    def __init__(
        self,
        schedule: Schedule,
        supervisor: Supervisor,
        cluster: LocalCluster | None,
        application_id: str,
        output_partitions: list[TP],
        admin: AdminClient,
        seed: int,
    ) -> None:
        self.schedule = schedule
        self._supervisor = supervisor
        self._cluster = cluster
        self._app = application_id
        self._outputs = output_partitions
        self._admin = admin
        self._rng = random.Random(f"faults/{seed}")  # its own stream (see fuzz.Generator)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.desired: set[str] = set()  # should be running
        self._down: set[str] = set()  # killed, restart pending
        self.kills: list[Kill] = []
        self.restarts = 0
        self.scale_events: list[tuple[float, str, int]] = []  # (at, what, instances after)
        self.moves: list[CoordinatorMove] = []
        self.failures: list[str] = []  # faults that could not be injected
        self.started_at = 0.0
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------

    def start_first(self, ready_timeout: float) -> bool:
        """p1 up and ready before the traffic starts."""
        first = self.schedule.names[0]
        self._launch(first)
        return self._supervisor.wait_ready(first, ready_timeout)

    def begin(self) -> None:
        """The traffic starts now: run the schedule."""
        self.started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._guard(self._instances), name="chaos-instances"),
            threading.Thread(target=self._guard(self._brokers), name="chaos-brokers"),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ends the schedule; a coordinator move under way finishes (its node restarts)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def tend(self) -> None:
        """Restarts wanted instances that exited on their own (after a second)."""
        self._supervisor.reap()
        with self._lock:
            for name in sorted(self.desired - self._down):
                instance = self._supervisor.instance(name)
                if not instance.running and time.monotonic() - instance.started_at > 1.0:
                    self._supervisor.start(name)
                    self.restarts += 1

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # a fault that cannot be injected fails the run
                log.exception("chaos schedule failed")
                self.failures.append(f"{threading.current_thread().name}: {exc!r}")

        return run

    def _wait_until(self, fraction: float) -> bool:
        """Sleeps until `fraction` of the traffic window; False when stopped first."""
        at = self.started_at + fraction * self.schedule.traffic_s
        return not self._stop.wait(max(at - time.monotonic(), 0.0))

    def _sleep(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    # --- instances ----------------------------------------------------------------------

    def _launch(self, name: str) -> None:
        with self._lock:
            self.desired.add(name)
            self._supervisor.start(name)

    def _instances(self) -> None:
        s = self.schedule
        names = s.names
        actions: list[tuple[float, Callable[[], None]]] = []
        for name, at in zip(names[1:], s.scale_up_at, strict=False):
            actions.append((at, lambda name=name: self._scale_up(name)))
        for name, at in zip(reversed(names[1:]), s.scale_down_at, strict=False):
            actions.append((at, lambda name=name: self._scale_down(name)))
        actions.sort(key=lambda a: a[0])
        next_kill = s.kills_between[0] * s.traffic_s + self._rng.uniform(*s.kill_every_s)
        while not self._stop.is_set():
            elapsed = time.monotonic() - self.started_at
            if actions and actions[0][0] * s.traffic_s <= elapsed:
                actions.pop(0)[1]()
                continue
            if next_kill <= elapsed:
                if elapsed <= s.kills_between[1] * s.traffic_s:
                    self._kill_one()
                next_kill = time.monotonic() - self.started_at + self._rng.uniform(*s.kill_every_s)
                continue
            due = min([next_kill, *(a[0] * s.traffic_s for a in actions[:1])])
            if not self._sleep(min(max(due - elapsed, 0.0), 0.5)):
                return
            if not actions and elapsed > s.kills_between[1] * s.traffic_s:
                return

    def _scale_up(self, name: str) -> None:
        self._launch(name)
        self.scale_events.append((time.monotonic(), f"start {name}", len(self.desired)))
        log.info("scaled up: started %s", name)

    def _scale_down(self, name: str) -> None:
        with self._lock:
            self.desired.discard(name)
        self._supervisor.stop(name)
        self.scale_events.append((time.monotonic(), f"stop {name}", len(self.desired)))
        log.info("scaled down: stopped %s", name)

    def _kill_one(self) -> None:
        with self._lock:
            candidates = sorted(self.desired - self._down)
            candidates = [n for n in candidates if self._supervisor.instance(n).running]
            if not candidates:
                return
            victim = self._rng.choice(candidates)
            self._down.add(victim)
        partitions = self._supervisor.refresh_partitions(victim)
        at = time.monotonic()
        if not self._supervisor.kill(victim):
            with self._lock:
                self._down.discard(victim)
            return
        kill = Kill(victim, at, partitions)
        self.kills.append(kill)
        log.info("SIGKILL %s (partitions %s)", victim, list(partitions))
        # The output ends are taken beside the pause, not before the restart: with a node
        # down they can take seconds, and a restart late by that would not be the pause
        # asked for. recover() only trusts ends taken before the restart could publish.
        time.sleep(SETTLE_AFTER_KILL_S)
        snapshot = threading.Thread(target=self._take_ends, args=(kill,), daemon=True)
        snapshot.start()
        pause = self._rng.uniform(*self.schedule.restart_after_s)
        time.sleep(max(pause - (time.monotonic() - at), 0.0))
        with self._lock:
            self._down.discard(victim)
            if victim in self.desired:
                self._supervisor.start(victim)
                kill.restarted_at = time.monotonic()
                self.restarts += 1
                threading.Thread(target=self._await_ready, args=(kill,), daemon=True).start()
        log.info("restarted %s", victim)

    def _await_ready(self, kill: Kill) -> None:
        """When the restarted instance said it was ready (restored, tables caught up)."""
        if self._supervisor.wait_ready(kill.instance, timeout=120):
            kill.ready_at = time.monotonic()

    def _take_ends(self, kill: Kill) -> None:
        kill.output_ends = self._output_ends()
        kill.ends_taken_at = time.monotonic()

    def _output_ends(self, budget_s: float = 3.0) -> dict[TP, int]:
        """High watermarks: every record written before now lies below them. A partition
        whose leader just moved answers with a stale-epoch error until the metadata is
        refreshed: it is asked again, within `budget_s` for all."""
        deadline = time.monotonic() + budget_s
        wanted = {TopicPartition(t, p): OffsetSpec.latest() for t, p in self._outputs}
        ends: dict[TP, int] = {}
        while wanted and time.monotonic() < deadline:
            timeout = max(deadline - time.monotonic(), 0.5)
            futures = self._admin.list_offsets(
                wanted, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=timeout
            )
            for tp, future in futures.items():
                try:
                    ends[(tp.topic, tp.partition)] = future.result().offset
                    del wanted[tp]
                except KafkaException as exc:
                    log.debug("no end offset of %s[%d] yet: %s", tp.topic, tp.partition, exc)
            if wanted:
                with contextlib.suppress(KafkaException):
                    self._admin.list_topics(timeout=max(deadline - time.monotonic(), 0.1))
        if wanted:
            # Their outputs then tell nothing about this kill (see recovery.py).
            log.warning("no end offsets of %d output partitions after a kill", len(wanted))
        return ends

    # --- brokers ------------------------------------------------------------------------

    def _brokers(self) -> None:
        s = self.schedule
        if self._cluster is None:
            return
        moves = [
            (at, role)
            for at, role in ((s.group_move_at, "group"), (s.transaction_move_at, "transaction"))
            if at is not None
        ]
        for at, role in sorted(moves):
            if not self._wait_until(at):
                return
            of = self._app
            if role == "transaction":
                with self._lock:
                    running = sorted(self.desired - self._down) or s.names[:1]
                of = f"{self._app}-{self._rng.choice(running)}"
            self.moves.append(
                move_coordinator(self._cluster, role, of, s.coordinator_down_s, kill=s.broker_kill)
            )
