"""Peak memory and start-up time of `processor run` with N bundles in state: the
process restores N states from its changelog and indexes N initializations, and
is measured once /readyz says it is ready, with the default --state-memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

from processor.bench.config import BenchError
from processor.bench.prefill import write_state
from processor.bench.process import ProcessorRun, memory_kib
from processor.bench.session import Session
from processor.runtime.engine import EngineConfig
from processor.runtime.store import MiB
from processor.topology import Topics

SETTLE_S = 1.0  # what it allocates right after turning ready counts too


@dataclass
class Rss:
    bundles: int
    peak_rss_mib: float  # VmHWM of the processor process
    rss_mib: float  # VmRSS once ready
    ready_s: float  # from spawn until /readyz said ready
    restored: int  # changelog records restored (its metrics)
    index_records: int | None  # booking index records read at start-up (its log)
    index_caught_up_s: float | None  # ... and how long that took, alongside the restore
    state_memory_mib: float  # the default --state-memory it ran with


def prefill(session: Session, bundles: int) -> Topics:
    """A deployment with `bundles` bundles in state, as the engine would have left it."""
    topics = session.deployment(f"rss{bundles}")
    if bundles:
        task = session.progress.add_task(f"RSS: writing {bundles:,} bundles", total=bundles)
        write_state(
            session.config.bootstrap_servers,
            session.admin,
            session.codec,
            session.stories,
            topics,
            bundles,
            session.config.seed,
            progress=lambda n: session.progress.update(task, completed=n),
        )
    return topics


def measure_rss(session: Session, topics: Topics, bundles: int) -> Rss:
    cfg = session.config
    run = ProcessorRun(
        cfg.bootstrap_servers,
        topics,
        cfg.partitions,
        session.state_dir / f"rss{bundles}",
        cfg.log_dir / f"processor-rss{bundles}.log",
    )
    what = f"RSS: processor with {bundles:,} bundles, restoring"
    task = session.progress.add_task(what, total=bundles or 1)
    run.start()
    try:
        while True:
            run.check()
            readiness = run.readiness()
            if readiness is not None and readiness["ready"]:
                break
            restored = int(run.metrics().get("vip_bundle_restored", 0))
            lag = readiness["global_tables"]["lag"] if readiness else "?"
            description = f"{what} (index lag {lag})"
            session.progress.update(task, completed=restored, description=description)
            if time.monotonic() - run.started_at > cfg.timeout_s:
                raise BenchError(f"processor not ready after {cfg.timeout_s:.0f}s: {readiness}")
            time.sleep(0.1)
        ready_s = time.monotonic() - run.started_at
        session.progress.update(task, completed=bundles or 1)
        time.sleep(SETTLE_S)
        memory = memory_kib(run.pid)
        restored = int(run.metrics().get("vip_bundle_restored", 0))
    finally:
        run.stop()
    caught_up = run.index_caught_up()
    return Rss(
        bundles=bundles,
        peak_rss_mib=round(memory["VmHWM"] / 1024, 1),
        rss_mib=round(memory["VmRSS"] / 1024, 1),
        ready_s=round(ready_s, 3),
        restored=restored,
        index_records=caught_up[1] if caught_up else None,
        index_caught_up_s=caught_up[0] if caught_up else None,
        state_memory_mib=EngineConfig.state_memory / MiB,
    )
