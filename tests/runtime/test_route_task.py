"""Stateless route tasks and global tables on the in-memory cluster: a miss is
final only once the table caught up to end offsets taken after the record
arrived, and a waiting record holds the records behind it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from processor.runtime.engine import Engine, EngineConfig, TableSpec
from processor.runtime.global_table import GlobalTable
from processor.runtime.handler import Forward, OutputRecord, Record, Reject, Router, Unknown
from tests.runtime.fakekafka import FakeCluster
from tests.runtime.toyapp import FakeClock, IntSerde, handle

NAMES, IN, OUT, DLQ = "names", "in", "out", "dlq"


def extract(value: bytes) -> Iterable[tuple[bytes, bytes]]:
    name, _, where = value.partition(b"=")
    return [(name, where)]


def router(tables: Mapping[str, GlobalTable]) -> Router:
    names = tables[NAMES]

    def route(record: Record) -> Forward | Reject | Unknown:
        value = record.value() or b""
        if not value:
            return Reject("empty")
        where = names.get(value)
        if where is None:
            return Unknown(f"{value!r} is not in the table")
        return Forward([OutputRecord(OUT, where, value)])

    return route


def engine(cluster: FakeCluster, state_dir: Path) -> Engine:
    for topic, partitions in ((NAMES, 2), (IN, 3), (OUT, 1), (DLQ, 1)):
        cluster.create_topic(topic, partitions)
    config = EngineConfig(
        bootstrap_servers="fake",
        application_id="router",
        instance_id="a",
        source_topics=(),
        route_topics=(IN,),
        changelog_topic="unused",
        dlq_topic=DLQ,
        state_dir=state_dir,
        state_memory=16 << 20,
    )
    built = Engine(
        config,
        handle,
        IntSerde(),
        router=router,
        tables=[TableSpec(NAMES, "names", extract)],
        clients=cluster.clients(),
        clock=FakeClock(cluster),
    )
    built.start()
    return built


def outputs(cluster: FakeCluster) -> list[tuple[bytes | None, bytes | None]]:
    return [(m.key(), m.value()) for m in cluster.committed_records(OUT)]


def test_a_record_the_table_learns_after_it_arrived_is_routed_not_skipped(tmp_path: Path) -> None:
    cluster = FakeCluster()
    e = engine(cluster, tmp_path)
    cluster.produce(IN, b"alice", partition=0)
    cluster.produce(IN, b"bob", partition=0)  # behind alice: must wait with her
    e.turn()  # alice misses: a target is wanted
    assert outputs(cluster) == []
    assert e.stats.forwarded == 0
    cluster.produce(NAMES, b"alice=here")  # written before the target is taken
    cluster.produce(NAMES, b"bob=there")
    for _ in range(5):
        e.turn()
    assert outputs(cluster) == [(b"here", b"alice"), (b"there", b"bob")]
    assert e.stats.not_routed == 0


def test_a_record_the_table_never_learns_is_counted_and_passed_after_catching_up(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    e = engine(cluster, tmp_path)
    cluster.produce(NAMES, b"carol=home")
    cluster.produce(IN, b"mallory", partition=1)
    cluster.produce(IN, b"carol", partition=1)
    cluster.produce(IN, b"", partition=1)
    for _ in range(5):
        e.turn()
    assert e.stats.not_routed == 1
    assert outputs(cluster) == [(b"home", b"carol")]
    [dead] = cluster.committed_records(DLQ)
    assert dict(dead.headers() or [])["__streams.errors.exception"] == b"BadInput"
    assert cluster.committed_offset("router", IN, 1) == (3, "")
    assert e.ready.is_set()


def test_a_record_too_large_to_forward_or_dead_letter_whole_goes_to_the_dlq_without_its_value(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    e = engine(cluster, tmp_path)
    cluster.max_message_bytes = 4000
    big = b"b" * 3998  # with its key, over the producer's limit
    cluster.produce(NAMES, big + b"=here")
    cluster.produce(IN, big, partition=2)
    cluster.produce(IN, b"", partition=2)  # bad input, a small dead letter
    cluster.produce(NAMES, b"ok=there")
    cluster.produce(IN, b"ok", partition=2)
    for _ in range(5):
        e.turn()
    dead = cluster.committed_records(DLQ)
    assert len(dead) == 2
    headers = dict(dead[0].headers() or [])
    assert dead[0].value() is None
    assert headers["__streams.errors.value.omitted"] == str(len(big)).encode()
    assert b"too large" in headers["__streams.errors.message"]
    assert outputs(cluster) == [(b"there", b"ok")]  # and it went on
