"""The full topology (route + manage, exactly-once, one instance, in-process) on a
pre-produced backlog of complete bundle histories, sampled finely enough to see
it stand still."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Producer

from processor.app import build_engine
from processor.bench.config import BenchError
from processor.bench.kafka import Counter, Tail
from processor.bench.sampling import Sample, follow, longest_stall, wait_for
from processor.bench.session import Session
from processor.bench.workload import Bundle, produce_histories
from processor.runtime.engine import Engine
from processor.topology import Topics


@dataclass
class Throughput:
    events: int
    bundles: int
    elapsed_s: float  # from ready (assigned, restored, index caught up) to the last output visible
    startup_s: float  # from start to ready
    events_per_s: float
    bundles_per_s: float
    transactions: int  # committed while the backlog was processed
    output_records: int
    retried: int  # not-ready attempts
    parked_peak: int  # most records parked at once (of the samples)
    skipped: int  # ignored by the saga (e.g. a confirmation read after its flight)
    # The longest stretch, while a backlog remained, in which no input event was done
    # (stall), and in which neither stage moved (idle: nothing routed either).
    longest_stall_s: float
    longest_stall_at_s: float
    longest_idle_s: float
    longest_idle_at_s: float
    sample_every_s: float
    # (s since ready, input events done by manage, input events routed, parked)
    samples: list[Sample] = field(default_factory=list)


class EngineThread:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.errors: list[BaseException] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:
            self.errors.append(exc)

    def check(self) -> None:
        if self.errors:
            raise BenchError(f"the engine failed: {self.errors[0]!r}") from self.errors[0]
        if not self._thread.is_alive():
            raise BenchError("the engine stopped by itself")

    def parked(self) -> int:
        try:
            return self.engine.parked
        except RuntimeError:  # its parking lot changed under us: this sample is lost
            return -1

    def stop(self) -> None:
        self.engine.stop()
        self._thread.join(60)
        if self.errors:
            raise BenchError(f"the engine failed: {self.errors[0]!r}") from self.errors[0]


def backlog(session: Session, topics: Topics) -> tuple[list[Bundle], int]:
    """Every event of `bundles` bundles in the inputs of `topics`; (bundles, events)."""
    bundles = [session.stories.bundle() for _ in range(session.config.bundles)]
    total = sum(len(b.events) for b in bundles)
    task = session.progress.add_task("pre-producing input events", total=total)
    producer = Producer(
        {
            "bootstrap.servers": session.config.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
        }
    )
    events = produce_histories(
        producer,
        session.codec,
        topics,
        bundles,
        base_ms=int(time.time() * 1000) - 10 * len(bundles) - 1000,
        progress=lambda n: session.progress.update(task, completed=n),
    )
    return bundles, events


def topology(
    session: Session, topics: Topics, bundles: list[Bundle], events: int
) -> tuple[Throughput, EngineThread]:
    """Starts the engine and times the backlog; the engine is left running (the
    latency phase uses it): the caller stops it."""
    cfg = session.config
    counter = Counter(sum(b.outputs for b in bundles))
    tail = Tail(cfg.bootstrap_servers, topics.outputs, counter)
    engine = build_engine(
        bootstrap_servers=cfg.bootstrap_servers,
        topics=topics,
        instance_id="bench",
        state_dir=session.state_dir / "topology",
        codec=session.codec,
    )
    running = EngineThread(engine)
    stats = engine.stats

    def counters() -> tuple[int, int, int]:
        # A confirmation read after its bundle's FlightBooked_v1 is ignored (skipped):
        # the six topics are read in no causal order.
        return stats.processed + stats.skipped, stats.forwarded, running.parked()

    def finished() -> float | None:
        done = stats.forwarded >= events and stats.processed + stats.skipped >= events
        return counter.reached_at if done else None

    try:
        t0 = wait_for(session.progress, "processor: joining and catching up", engine.ready,
                      running.check, cfg.timeout_s)  # fmt: skip
        transactions = stats.transactions
        elapsed, samples = follow(
            session.progress,
            "processor: full topology",
            events,
            counters,
            finished,
            running.check,
            t0,
            cfg.sample_every_s,
            cfg.timeout_s,
        )
    except BaseException:
        running.stop()
        raise
    finally:
        tail.stop()
    if stats.dead_lettered or stats.not_routed:
        running.stop()
        raise BenchError(f"unexpected outcomes: {stats}")
    stall = longest_stall(samples, [1], events)
    idle = longest_stall(samples, [1, 2], events)
    result = Throughput(
        events=events,
        bundles=len(bundles),
        elapsed_s=round(elapsed, 3),
        startup_s=round(t0 - running.started, 3),
        events_per_s=round(events / elapsed, 1),
        bundles_per_s=round(len(bundles) / elapsed, 1),
        transactions=stats.transactions - transactions,
        output_records=counter.count,
        retried=stats.retried,
        parked_peak=max(s[3] for s in samples),
        skipped=stats.skipped,
        longest_stall_s=stall.seconds,
        longest_stall_at_s=stall.at_s,
        longest_idle_s=idle.seconds,
        longest_idle_at_s=idle.at_s,
        sample_every_s=cfg.sample_every_s,
        samples=samples,
    )
    return result, running
