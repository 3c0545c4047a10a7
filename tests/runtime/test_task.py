"""Stateful tasks driven through the engine on an in-memory cluster (no broker):
per-key parking, its commit metadata across restarts, deadlines, backpressure,
bad input and abort-and-rewind. The toy app is described in toyapp.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from processor.runtime import engine as engine_module
from processor.runtime.engine import Engine
from processor.runtime.parking import Backoff, resume_metadata
from tests.runtime.toyapp import (
    ADDS,
    CHANGELOG,
    DONE,
    NEEDS,
    TOTALS,
    Toy,
    same_partition_keys,
    turns,
)

SLOW = Backoff(min_s=60, max_s=60, deadline_s=3600)  # retries only on a state change


@pytest.fixture
def toy(tmp_path: Path) -> Toy:
    return Toy(tmp_path / "state", partitions=2)


def test_a_waiting_key_parks_only_itself_and_other_keys_on_its_partition_flow(toy: Toy) -> None:
    waiting, other = same_partition_keys(2)
    p, parked_at = toy.send(NEEDS, waiting, "need:2")
    toy.send(NEEDS, other, "need:0")
    toy.send(ADDS, other, "add:1")
    engine = toy.engine(backoff=SLOW)
    turns(engine)

    assert toy.values(DONE) == [(other, "done:0")]
    assert engine.parked == 1
    offset, metadata = toy.committed(NEEDS, p)  # type: ignore[misc]
    assert offset == parked_at  # the group's offset stays at the parked record
    resume = resume_metadata(metadata)
    assert resume is not None and resume.position == parked_at + 2
    assert list(resume.waiting) == [parked_at]

    toy.send(ADDS, waiting, "add:2")  # the event it waits for, on the other topic
    turns(engine)

    assert toy.values(DONE) == [(other, "done:0"), (waiting, "done:2")]
    assert engine.parked == 0
    assert toy.committed(NEEDS, p) == (parked_at + 2, "")


def test_later_records_of_a_parked_key_on_its_topic_queue_behind_it(toy: Toy) -> None:
    [key] = same_partition_keys(2, 1)
    toy.send(NEEDS, key, "need:3")
    toy.send(NEEDS, key, "need:1")  # ready on its own, but must not overtake
    engine = toy.engine(backoff=SLOW)
    turns(engine)
    assert toy.values(DONE) == []
    assert engine.parked == 2

    toy.send(ADDS, key, "add:3")
    turns(engine)
    assert toy.values(DONE) == [(key, "done:3"), (key, "done:1")]


def test_the_wait_survives_a_restart_and_the_deadline_counts_from_the_first_wait(
    toy: Toy,
) -> None:
    waiting, other = same_partition_keys(2)
    p, parked_at = toy.send(NEEDS, waiting, "need:5")
    toy.send(ADDS, other, "add:1")
    deadline = Backoff(min_s=60, max_s=60, deadline_s=100)
    first = toy.engine(backoff=deadline)
    turns(first)
    started = toy.cluster.clock_ms
    assert first.parked == 1
    first.close()  # as good as a crash: the commit metadata is all that is left

    toy.cluster.clock_ms = started + 60_000
    second = toy.engine(backoff=deadline)
    turns(second)
    assert second.parked == 1
    assert second.stats.replayed == 0  # other's add was on another topic
    assert 59 <= second.oldest_wait_s() <= 61  # not reset by the restart
    assert toy.dead() == []

    toy.cluster.clock_ms = started + 100_001
    second.turn()  # past the deadline: a state change of another key is not needed
    toy.send(ADDS, other, "add:1")
    turns(second)
    [dead] = toy.dead()
    headers = dict(dead.headers() or [])
    assert headers["__streams.errors.exception"] == b"NotReadyTooLong"
    assert headers["__streams.errors.offset"] == str(parked_at).encode()
    assert toy.committed(NEEDS, p) == (parked_at + 1, "")


def test_records_processed_before_a_restart_are_not_processed_again(toy: Toy) -> None:
    waiting, other = same_partition_keys(2)
    toy.send(NEEDS, waiting, "need:9")
    for _ in range(3):
        toy.send(NEEDS, other, "need:0")
    first = toy.engine(backoff=SLOW)
    turns(first)
    assert toy.values(DONE) == [(other, "done:0")] * 3
    first.close()

    second = toy.engine(backoff=SLOW)
    turns(second)
    assert second.stats.replayed == 3  # skipped by the metadata, not handled again
    assert toy.values(DONE) == [(other, "done:0")] * 3
    toy.send(ADDS, waiting, "add:9")
    turns(second)
    assert toy.values(DONE)[-1] == (waiting, "done:9")


def test_past_the_parked_limit_the_partition_pauses_and_resumes_without_losing_records(
    toy: Toy,
) -> None:
    keys = same_partition_keys(2, 6)
    for key in keys:
        toy.send(NEEDS, key, "need:1")
    engine = toy.engine(backoff=SLOW, max_parked=3)
    turns(engine)
    assert engine.parked == 3
    consumer = toy.fetcher()
    [(topic, p)] = consumer.paused
    assert topic == NEEDS

    for key in keys[:3]:
        toy.send(ADDS, key, "add:1")
    turns(engine)
    assert (NEEDS, p) not in consumer.paused
    for key in keys[3:]:
        toy.send(ADDS, key, "add:1")
    turns(engine)
    assert sorted(toy.values(DONE)) == sorted((k, "done:1") for k in keys)
    assert engine.parked == 0


def test_bad_input_goes_to_the_dlq_once_and_the_rest_flows(toy: Toy) -> None:
    toy.send(ADDS, "k", "bad")
    toy.send(ADDS, "k", "add:2")
    engine = toy.engine()
    turns(engine)
    [dead] = toy.dead()
    assert dead.value() == b"bad"
    assert dict(dead.headers() or [])["__streams.errors.exception"] == b"BadInput"
    assert toy.values(TOTALS) == [("k", "2")]


def test_one_changelog_record_per_changed_key_per_commit(toy: Toy) -> None:
    for _ in range(5):
        toy.send(ADDS, "k", "add:1")
    engine = toy.engine()
    turns(engine)
    assert [v for _, v in toy.values(TOTALS)] == ["1", "2", "3", "4", "5"]
    assert [(m.key(), m.value()) for m in toy.cluster.committed_records(CHANGELOG)] == [
        (b"k", b"5")
    ]


def test_an_aborted_transaction_leaves_nothing_and_is_redone_once(toy: Toy) -> None:
    toy.send(ADDS, "k", "add:1")
    engine = toy.engine(backoff=SLOW)
    turns(engine)
    toy.send(ADDS, "k", "add:2")
    toy.send(NEEDS, "k", "need:9")  # parked in the aborted transaction
    toy.cluster.fail_next_commit = KafkaError(
        KafkaError._STATE, "injected", txn_requires_abort=True
    )
    turns(engine, 2)  # the second turn fetches nothing: it commits, and that fails
    assert engine.stats.aborted == 1
    assert engine.parked == 0  # parking of the aborted transaction is dropped too
    store = engine.stateful_tasks()
    assert any(t.txn.store.get(b"k") == b"1" for t in store)  # staged state never written

    turns(engine)
    assert [v for _, v in toy.values(TOTALS)] == ["1", "3"]
    assert engine.parked == 1
    toy.send(ADDS, "k", "add:6")
    turns(engine)
    assert toy.values(DONE) == [("k", "done:9")]


def engine_fenced_at(
    toy: Toy,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    error: int = KafkaError._FENCED,
    **options: Any,
) -> Engine:
    """An engine past one commit ("1"), with "add:2" in a transaction the coordinator
    timed out: its commit is told `error` (fatal), or (step "abort") its commit fails
    and its abort is told `error`."""
    monkeypatch.setattr(engine_module, "TRANSACTION_TIMEOUT_S", 0.0)
    toy.send(ADDS, "k", "add:1")
    engine = toy.engine(**options)
    turns(engine)
    toy.send(ADDS, "k", "add:2")
    fatal = KafkaError(error, "fatal", fatal=True)
    if step == "commit":
        toy.cluster.fail_next_commit = fatal
    else:
        toy.cluster.fail_next_commit = KafkaError(
            KafkaError._STATE, "injected", txn_requires_abort=True
        )
        toy.cluster.fail_next_abort = fatal
    return engine


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ("abort", KafkaError._FENCED),
        ("abort", KafkaError.INVALID_TXN_STATE),
        ("commit", KafkaError._FENCED),
    ],
)
def test_a_transaction_the_coordinator_timed_out_is_redone_by_a_new_producer(
    toy: Toy, monkeypatch: pytest.MonkeyPatch, step: str, error: int
) -> None:
    # Found by the chaos run: a broker silent past the transaction timeout has the
    # coordinator abort the transaction and bump the epoch; librdkafka's commit or abort
    # is then told "fenced" (or INVALID_TXN_STATE), fatal. Still a member of the group:
    # not a zombie.
    engine = engine_fenced_at(toy, monkeypatch, step, error)
    first = engine._producer
    turns(engine, 2)
    assert engine.stats.aborted == 1
    assert engine._producer is not first
    turns(engine)
    assert [v for _, v in toy.values(TOTALS)] == ["1", "3"]  # redone once


@pytest.mark.parametrize("step", ["abort", "commit"])
def test_a_fenced_transaction_ends_an_instance_that_is_no_longer_a_member(
    toy: Toy, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # A successor with the same instance id fences the same way, but took the group
    # membership too: this instance must not take a producer back from it.
    engine = engine_fenced_at(toy, monkeypatch, step)
    monkeypatch.setattr(engine._consumer, "assignment", lambda: [])
    with pytest.raises(KafkaException):
        turns(engine, 2)
    assert toy.values(TOTALS) == [("k", "1")]  # nothing of the fenced transaction


def test_a_fenced_commit_during_a_revocation_is_not_checked_by_consuming(
    toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The membership check polls the group consumer: never from inside its own
    # rebalance callback, where the revocation commits. The revocation aborts instead.
    engine = engine_fenced_at(toy, monkeypatch, "commit", commit_interval_s=3600.0)
    engine.turn()  # "add:2" fetched and staged: its transaction stays open
    assert engine._checkpoint.is_open
    polled: list[object] = []
    monkeypatch.setattr(engine._consumer, "consume", lambda *a, **k: polled.append(a) or [])
    engine._on_revoke(engine._consumer, [])  # the fenced commit is logged, then aborted
    assert polled == []
    assert not engine._checkpoint.is_open and not engine._rebalancing
    assert toy.values(TOTALS) == [("k", "1")]  # nothing of the fenced transaction


def test_a_store_restores_in_the_loop_and_the_task_runs_after(toy: Toy) -> None:
    for i in range(50):
        toy.cluster.produce(CHANGELOG, str(i).encode(), f"k{i}".encode())  # keyed as ADDS
    toy.send(ADDS, "k7", "add:1")
    engine = toy.engine()
    assert not engine.ready.is_set()
    turns(engine, 1)
    turns(engine)
    assert engine.ready.is_set()
    assert engine.stats.restored == 50
    assert toy.values(TOTALS) == [("k7", "8")]  # 7 restored, plus 1
