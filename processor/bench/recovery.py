"""Recovery after a crash: `processor run` under a live load (complete bundle
histories fed at a modest rate, as services would), SIGKILLed and restarted at
once with the same --instance-id and --state-dir. Measured: the time from the
SIGKILL until outputs flow again, and exactly-once of every output of the phase."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

from confluent_kafka import Message, Producer

from processor.bench.config import BenchError
from processor.bench.kafka import Tail
from processor.bench.process import ProcessorRun
from processor.bench.session import Session
from processor.bench.workload import Bundle, feed_causally
from processor.topology import BUNDLE_HEADER, Topics

TICK_S = 0.1  # the feeder sends a tick's bundles together
BIN_S = 0.1  # the timeline's resolution
SETTLE_S = 1.0  # listening on after the last expected output: duplicates come late


@dataclass
class Recovery:
    rate_per_s: float  # bundles fed per second
    bundles: int
    killed_after_s: float  # fed this long before the SIGKILL
    # From the SIGKILL until:
    ready_s: float  # the restarted process's /readyz said ready
    first_output_s: float | None  # any output became visible (maybe committed before it)
    flowing_s: float  # the first output of a bundle initialized after the SIGKILL
    outputs: int  # output records seen (read_committed)
    expected_outputs: int
    duplicates: int  # outputs whose header id was seen before
    missing: int  # expected outputs never seen
    bin_s: float
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s since kill, outputs)


class Feeder:
    """Sends `bundles` at `rate` per second in a thread; notes when each tick began."""

    def __init__(
        self, session: Session, topics: Topics, bundles: list[Bundle], rate: float
    ) -> None:
        self._session, self._topics, self._bundles, self._rate = session, topics, bundles, rate
        self._producer = Producer(
            {"bootstrap.servers": session.config.bootstrap_servers, "linger.ms": 5}
        )
        self.sent_at: dict[str, float] = {}  # vip_bundle_id -> when its tick began
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            started, sent = time.monotonic(), 0
            while sent < len(self._bundles) and not self._stopping.is_set():
                due = min(len(self._bundles), int((time.monotonic() - started) * self._rate) + 1)
                tick, now = self._bundles[sent:due], time.monotonic()
                for bundle in tick:
                    self.sent_at[bundle.vip_bundle_id] = now
                events = [e for b in tick for e in b.events]
                feed_causally(self._producer, self._session.codec, self._topics, events)
                sent = due
                time.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def check(self) -> None:
        if self.errors:
            raise BenchError(f"the feeder failed: {self.errors[0]!r}") from self.errors[0]


def _wait_ready(run: ProcessorRun, session: Session, what: str) -> float:
    task = session.progress.add_task(what, total=None)
    while True:
        run.check()
        readiness = run.readiness()
        if readiness is not None and readiness["ready"]:
            session.progress.update(task, total=1, completed=1)
            return time.monotonic()
        if time.monotonic() - run.started_at > session.config.timeout_s:
            raise BenchError(f"{what}: not ready after {session.config.timeout_s:.0f}s")
        time.sleep(0.02)


def recovery(session: Session) -> Recovery:
    cfg = session.config
    topics = session.deployment("recovery")
    count = max(1, round(cfg.recovery_rate * (cfg.recovery_before_s + cfg.recovery_after_s)))
    bundles = [session.stories.bundle() for _ in range(count)]
    expected = sum(b.outputs for b in bundles)
    seen: list[tuple[float, str, bytes]] = []  # (visible at, vip_bundle_id, value)
    # Outputs are deterministic: a duplicate is the same bytes.
    distinct: set[bytes] = set()

    def on_output(msg: Message, now: float) -> None:
        raw = dict(msg.headers() or []).get(BUNDLE_HEADER)
        bundle = raw.decode() if isinstance(raw, bytes) else str(raw)
        value = msg.value() or b""
        seen.append((now, bundle, value))
        distinct.add(value)

    run = ProcessorRun(
        cfg.bootstrap_servers,
        topics,
        cfg.partitions,
        session.state_dir / "recovery",
        cfg.log_dir / "processor-recovery.log",
        instance_id="recovery",
    )
    run.start()
    tail: Tail | None = None
    feeder: Feeder | None = None
    try:
        _wait_ready(run, session, "recovery: processor starting")
        tail = Tail(cfg.bootstrap_servers, topics.outputs, on_output)
        feeder = Feeder(session, topics, bundles, cfg.recovery_rate)
        fed_at = time.monotonic()
        task = session.progress.add_task(
            f"recovery: {cfg.recovery_rate:g} bundles/s, SIGKILL in {cfg.recovery_before_s:g}s",
            total=expected,
        )
        while time.monotonic() - fed_at < cfg.recovery_before_s:
            run.check()
            feeder.check()
            session.progress.update(task, completed=len(distinct))
            time.sleep(0.05)
        killed_at = run.kill()
        run.start()  # at once: same instance id, same state dir
        ready_at = _wait_ready(run, session, "recovery: restarted processor catching up")
        deadline = time.monotonic() + cfg.timeout_s
        while not (feeder.done.is_set() and len(distinct) >= expected):
            run.check()
            feeder.check()
            if time.monotonic() > deadline:
                raise BenchError(f"recovery: {len(distinct)} of {expected} outputs")
            session.progress.update(task, completed=len(distinct))
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        session.progress.update(task, completed=expected)
    finally:
        if feeder is not None:
            feeder.stop()
        run.stop()
        if tail is not None:
            tail.stop()

    assert feeder is not None
    after_kill = {b for b, at in feeder.sent_at.items() if at > killed_at}
    flowing = [at for at, bundle, _ in seen if bundle in after_kill]
    if not flowing:
        raise BenchError("recovery: no output of a bundle initialized after the SIGKILL")
    first = [at for at, _, _ in seen if at > killed_at]
    ids = Tally(session.codec.decode(value).header.id for _, _, value in seen)
    bins = Tally(int((at - killed_at) // BIN_S) for at, _, _ in seen)
    start = int((fed_at - killed_at) // BIN_S)
    timeline = [(round(b * BIN_S, 3), bins[b]) for b in range(start, max(bins) + 1)]
    return Recovery(
        rate_per_s=cfg.recovery_rate,
        bundles=len(bundles),
        killed_after_s=round(killed_at - fed_at, 3),
        ready_s=round(ready_at - killed_at, 3),
        first_output_s=round(min(first) - killed_at, 3) if first else None,
        flowing_s=round(min(flowing) - killed_at, 3),
        outputs=len(seen),
        expected_outputs=expected,
        duplicates=sum(n - 1 for n in ids.values()),
        missing=max(0, expected - len(ids)),
        bin_s=BIN_S,
        timeline=timeline,
    )
