"""Reading a topic into RocksDB, against a raw read of the same topic: the
changelog restore (the engine's Restorer into fresh partition stores) and the
booking index catch-up (its GlobalTables from scratch), each alone, in-process,
with the engine's reader settings and one shared memory budget.

The restore alternates with its raw read, RESTORE_ROUNDS times, and reports the
medians: a 1M-record read lasts about a second, and on a shared 2-core machine the
same raw read varied between 0.9 and 2.0M records/s from one read to the next."""

from __future__ import annotations

import shutil
import statistics
import time
import uuid
from dataclasses import dataclass, field, replace

from confluent_kafka import Consumer

from processor.bench.config import BenchError
from processor.bench.kafka import raw_read
from processor.bench.session import Session
from processor.routing import INDEX, index_entries
from processor.runtime.global_table import GlobalTable, GlobalTables
from processor.runtime.restore import Restorer
from processor.runtime.store import PartitionStore, StateMemory, direct_writes_supported


@dataclass
class CatchUp:
    topic: str
    partitions: int
    records: int
    seconds: float
    records_per_s: float
    raw_records: int
    raw_read_s: float
    raw_records_per_s: float
    ratio: float  # rate into RocksDB / raw read rate
    # The restore's rounds: each one's (raw read, into RocksDB) records/s; the figures
    # above are then the medians of each, and their ratio.
    rounds: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def of(cls, topic: str, partitions: int, records: int, seconds: float, raw: tuple[int, float]):
        raw_records, raw_s = raw
        if records != raw_records:
            raise BenchError(f"{topic}: read {records} records into RocksDB, raw {raw_records}")
        rate, raw_rate = records / seconds, raw_records / raw_s
        return cls(
            topic=topic,
            partitions=partitions,
            records=records,
            seconds=round(seconds, 3),
            records_per_s=round(rate, 1),
            raw_records=raw_records,
            raw_read_s=round(raw_s, 3),
            raw_records_per_s=round(raw_rate, 1),
            ratio=round(rate / raw_rate, 3),
        )


def _memory(session: Session) -> StateMemory:
    """The engine's default budget and write mode for this state directory."""
    return StateMemory(direct_writes=direct_writes_supported(session.state_dir))


def _reader(session: Session, name: str) -> Consumer:
    group = f"{session.app}-{name}-{uuid.uuid4().hex[:6]}"  # never committed
    return Consumer({**session.settings["reader"], "group.id": group})


RESTORE_ROUNDS = 5


def restore(session: Session, changelog: str, rounds: int = RESTORE_ROUNDS) -> CatchUp:
    """Every partition of `changelog` restored together into fresh stores, a slice per
    step, as the engine's loop drives it; `rounds` times, each after a raw read."""
    task = session.progress.add_task("changelog: raw read, then restore", total=2 * rounds)
    runs = []
    for n in range(rounds):
        raw = raw_read(
            session.config.bootstrap_servers,
            session.admin,
            changelog,
            session.settings["reader"],
            session.config.timeout_s,
        )
        session.progress.advance(task)
        runs.append(_restore_once(session, changelog, raw, n))
        session.progress.advance(task)
    rate = statistics.median(r.records_per_s for r in runs)
    raw_rate = statistics.median(r.raw_records_per_s for r in runs)
    return replace(
        runs[0],
        seconds=round(runs[0].records / rate, 3),
        records_per_s=rate,
        raw_read_s=round(runs[0].raw_records / raw_rate, 3),
        raw_records_per_s=raw_rate,
        ratio=round(rate / raw_rate, 3),
        rounds=[(r.raw_records_per_s, r.records_per_s) for r in runs],
    )


def _restore_once(session: Session, changelog: str, raw: tuple[int, float], n: int) -> CatchUp:
    cfg = session.config
    partitions = session.admin.list_topics(changelog, timeout=30).topics[changelog].partitions
    restorer = Restorer(_reader(session, "restore"), session.admin, changelog)
    memory = _memory(session)
    root = session.state_dir / f"restored-{n}"
    stores = {p: PartitionStore(root / str(p), memory) for p in partitions}
    try:
        started = time.monotonic()
        restorer.add(stores)
        while restorer.active:
            if time.monotonic() - started > cfg.timeout_s:
                raise BenchError(f"restore of {changelog}: {restorer.restored} records, stalled")
            restorer.step(timeout=0.01)
        seconds = time.monotonic() - started
    finally:
        for store in stores.values():
            store.close()
        restorer.close()
        shutil.rmtree(root, ignore_errors=True)
    return CatchUp.of(changelog, len(stores), restorer.restored, seconds, raw)


def index(session: Session, topic: str) -> CatchUp:
    """The booking index built from scratch from `topic` (the initializations), read
    a slice per step until it reached the topic's end, as the engine's loop does."""
    cfg = session.config
    task = session.progress.add_task("booking index: raw read, then catch-up", total=2)
    raw = raw_read(cfg.bootstrap_servers, session.admin, topic, session.settings["reader"],
                   cfg.timeout_s)  # fmt: skip
    session.progress.update(task, completed=1)
    table = GlobalTable(
        topic,
        session.state_dir / "index" / INDEX,
        index_entries(session.codec),
        _reader(session, "index"),
        _memory(session),
    )
    tables = GlobalTables([table], session.admin)
    try:
        started = time.monotonic()
        tables.start()
        while not tables.ready:
            if time.monotonic() - started > cfg.timeout_s:
                raise BenchError(f"booking index from {topic}: {table.records} records, stalled")
            tables.step()
        seconds = time.monotonic() - started
    finally:
        tables.close()
    session.progress.update(task, completed=2)
    return CatchUp.of(topic, len(table.positions), table.records, seconds, raw)
