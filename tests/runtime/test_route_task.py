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


def test_misses_fetched_before_a_target_are_decided_by_it_without_a_round_each(
    tmp_path: Path,
) -> None:
    # Ordinary bookings (of no bundle) are most of a ticketing system's input: a round
    # per miss held the route stage to a few dozen records a second under load.
    cluster = FakeCluster()
    e = engine(cluster, tmp_path)
    for _ in range(3):
        e.turn()  # started and caught up
    rounds = e.global_tables.targets
    for n in range(40):
        cluster.produce(IN, b"nobody-%d" % n, partition=n % 3)
    cluster.produce(NAMES, b"dave=here")
    cluster.produce(IN, b"dave", partition=1)
    for _ in range(10):
        e.turn()
    assert e.stats.not_routed == 40
    assert outputs(cluster) == [(b"here", b"dave")]
    assert e.global_tables.targets - rounds <= 2  # not 40
    cluster.produce(IN, b"eve", partition=0)  # fetched after every target so far
    for _ in range(5):
        e.turn()
    assert e.stats.not_routed == 41
    assert e.global_tables.targets - rounds <= 3  # it needed one of its own


def test_a_miss_fetched_after_a_target_was_taken_waits_for_a_target_of_its_own(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    e = engine(cluster, tmp_path)
    for _ in range(3):
        e.turn()
    cluster.produce(IN, b"frank", partition=0)
    e.turn()  # frank misses: a ticket
    cluster.produce(NAMES, b"frank=here")
    for _ in range(3):
        e.turn()  # its target taken and reached: frank is routed, the ticket unused
    cluster.produce(IN, b"grace", partition=0)  # fetched after that target was taken
    e.turn()  # grace misses
    cluster.produce(NAMES, b"grace=there")  # before a target taken after grace
    for _ in range(5):
        e.turn()
    assert outputs(cluster) == [(b"here", b"frank"), (b"there", b"grace")]
    assert e.stats.not_routed == 0


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
