"""The manage stage against a real broker: exactly-once outputs, holds, restore,
crash, scale-out and the dead-letter queue. Events are fed straight into the
repartition topics, keyed by vip_bundle_id, as the route stage would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from processor.domain.messages import RefundTicket, VipBundleFinalizedV1
from processor.runtime.task import Backoff
from tests.factories import BundleStory
from tests.harness import (
    Deployment,
    Received,
    expected_outputs,
    observed,
    partition_of,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path: Path) -> Deployment:
    return Deployment(kafka_bootstrap, tmp_path / "state", partitions=3)


def finals_of(received: list[Received], story: BundleStory) -> list[VipBundleFinalizedV1]:
    return [
        r.message
        for r in received
        if isinstance(r.message, VipBundleFinalizedV1)
        and r.message.vip_bundle_id == story.vip_bundle_id
    ]


def test_each_saga_outcome_yields_its_outputs_exactly_once(deployment: Deployment) -> None:
    success, booking_failed, flight_failed = (
        BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(3)
    )
    histories = [
        [success.initialized(), success.booking_made(), success.flight_booked()],
        [booking_failed.initialized(), booking_failed.booking_failed()],
        [
            flight_failed.initialized(),
            flight_failed.booking_made(),
            *flight_failed.all_confirmed(),
            flight_failed.flight_failed(),
        ],
    ]
    expected: Counter[tuple[str, str, object]] = Counter()
    for history in histories:
        deployment.send(*history)
        expected += expected_outputs(deployment.topics, history)

    running = deployment.start()
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()

    assert observed(received) == expected
    assert all(r.headers["vip_bundle_id"] for r in received)
    refunds = [r for r in received if isinstance(r.message, RefundTicket)]
    assert {r.key for r in refunds} == set(flight_failed.ticket_ids)
    assert {r.headers["vip_bundle_id"].decode() for r in refunds} == {flight_failed.vip_bundle_id}


def test_flight_failure_waits_for_the_last_confirmation_holding_only_its_partition(
    deployment: Deployment,
) -> None:
    waiting = BundleStory(seed=f"{deployment.app}/waiting", tickets=3)
    failed_topic = deployment.topics.repartition("FlightBookingFailed_v1")
    held_partition = partition_of(waiting.vip_bundle_id, deployment.partitions)
    other = next(
        s
        for n in range(100)
        if partition_of((s := BundleStory(seed=f"{deployment.app}/o{n}")).vip_bundle_id, 3)
        != held_partition
    )
    deployment.send(waiting.initialized(), waiting.booking_made(), *waiting.all_confirmed()[:2])
    [(partition, held_offset)] = deployment.send(waiting.flight_failed())
    assert partition == held_partition
    running = deployment.start(backoff=Backoff(min_s=0.05, max_s=0.2))

    # Meanwhile another bundle, on another partition, goes through, on that same topic too.
    deployment.send(other.initialized(), other.booking_made(), *other.all_confirmed())
    deployment.send(other.flight_failed())
    before = deployment.read(until=lambda got: len(finals_of(got, other)) == 1)
    assert finals_of(before, waiting) == []
    assert not any(
        isinstance(r.message, RefundTicket) and r.key in waiting.ticket_ids for r in before
    )
    wait_for(
        lambda: deployment.committed(failed_topic, held_partition) == held_offset,
        what="the held record's offset committed as the group's position",
    )
    time.sleep(1.0)  # several retries and commits later, still held there
    assert deployment.committed(failed_topic, held_partition) == held_offset

    deployment.send(waiting.confirmed(2))
    after = deployment.read(until=lambda got: len(finals_of(got, waiting)) == 1)
    running.stop()

    refunds = [r.key for r in after if isinstance(r.message, RefundTicket)]
    assert sorted(k for k in refunds if k in waiting.ticket_ids) == sorted(waiting.ticket_ids)
    assert [f.success for f in finals_of(after, waiting)] == [False]
    assert deployment.committed(failed_topic, held_partition) == held_offset + 1


def test_restore_from_the_changelog_on_an_empty_state_dir_and_only_the_tail_otherwise(
    deployment: Deployment,
) -> None:
    first = BundleStory(seed=f"{deployment.app}/first", tickets=1)
    second = BundleStory(seed=f"{deployment.app}/second", tickets=1)

    deployment.send(first.initialized(), first.booking_made())
    a = deployment.start("a")
    deployment.read(until=lambda got: len(got) == 2)
    a.stop()
    changelog = deployment.topics.changelog
    written_by_a = len(deployment.read([changelog], until=lambda got: len(got) >= 1))
    assert written_by_a >= 1  # one record per changed key per commit

    b = deployment.start("b")  # empty state dir: the whole changelog
    assert b.engine.stats.restored == written_by_a
    deployment.send(second.initialized(), second.booking_made(), second.flight_booked())
    deployment.read(until=lambda got: len(finals_of(got, second)) == 1)
    b.stop()
    written_by_b = len(deployment.read([changelog], until=lambda got: len(got) > written_by_a))
    written_by_b -= written_by_a

    a = deployment.start("a")  # kept state dir: only what b wrote since
    assert a.engine.stats.restored == written_by_b
    deployment.send(first.flight_booked())
    received = deployment.read(until=lambda got: len(finals_of(got, first)) == 1)
    a.stop()

    assert [f.success for f in finals_of(received, first)] == [True]
    assert Counter(type(r.message).__name__ for r in received) == {
        "BookShowTickets": 2,
        "BookFlight": 2,
        "VipBundleFinalizedV1": 2,
    }


def test_a_corrupt_store_is_rebuilt_from_the_changelog(deployment: Deployment) -> None:
    story = BundleStory(seed=f"{deployment.app}/corrupt", tickets=1)
    deployment.send(story.initialized(), story.booking_made())
    a = deployment.start("a")
    deployment.read(until=lambda got: len(got) == 2)
    a.stop()
    for current in (deployment.state_root / "a").rglob("CURRENT"):
        current.write_text("garbage\n")

    a = deployment.start("a")
    assert a.engine.stats.restored == 1  # the bundle's one changelog record, read again
    deployment.send(story.flight_booked())
    received = deployment.read(until=lambda got: len(finals_of(got, story)) == 1)
    a.stop()
    assert [f.success for f in finals_of(received, story)] == [True]


def test_a_killed_instance_leaves_nothing_of_its_open_transaction_and_a_restart_completes(
    deployment: Deployment, tmp_path: Path
) -> None:
    stories = [BundleStory(seed=f"{deployment.app}/crash{n}", tickets=2) for n in range(2)]
    expected: Counter[tuple[str, str, object]] = Counter()
    for story in stories:
        history = [story.initialized(), story.booking_made(), *story.all_confirmed()]
        history.append(story.flight_failed())
        deployment.send(*history)
        expected += expected_outputs(deployment.topics, history)
    state = tmp_path / "crash-state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A commit interval far longer than the test: the transaction stays open.
    args = deployment.cli_args(state, "crashy", "--commit-interval", "60s", "--no-commit-when-idle")
    victim = subprocess.Popen([sys.executable, "-m", "processor", *args], env=env)
    try:
        uncommitted = deployment.read(
            until=lambda got: len(got) >= sum(expected.values()), isolation="read_uncommitted"
        )
        assert observed(uncommitted) == expected  # written, inside the open transaction
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)

    assert deployment.read(timeout=3, until=lambda _: True) == []

    restart = subprocess.Popen(
        [sys.executable, "-m", "processor", *deployment.cli_args(state, "crashy")], env=env
    )
    try:
        received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    finally:
        restart.send_signal(signal.SIGTERM)
        assert restart.wait(60) == 0
    assert observed(received) == expected


def test_two_instances_split_the_partitions_and_one_finishes_the_others_bundles(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path / "state", partitions=4)
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(8)]
    assert len({partition_of(s.vip_bundle_id, 4) for s in stories}) > 1
    a = deployment.start("a")
    b = deployment.start("b")
    wait_for(
        lambda: a.partitions and b.partitions and not a.partitions & b.partitions,
        what="the partitions split between the two instances",
    )
    assert a.partitions | b.partitions == {0, 1, 2, 3}

    for story in stories:
        deployment.send(story.initialized(), story.booking_made(), story.confirmed(0))
    deployment.read(until=lambda got: len(got) == 2 * len(stories))
    b.stop()  # leaves the group: a takes over and restores b's partitions
    wait_for(
        lambda: a.partitions == {0, 1, 2, 3} and a.engine.ready.is_set(),
        what="a owning every partition, restored",
    )
    assert a.engine.stats.restored > 0

    expected: Counter[tuple[str, str, object]] = Counter()
    for story in stories:
        deployment.send(story.flight_failed(), story.confirmed(1))
        expected += expected_outputs(deployment.topics, story.history("flight_failed"))
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    a.stop()
    assert observed(received) == expected


def test_bad_bytes_and_records_past_the_deadline_go_to_the_dlq_and_processing_goes_on(
    deployment: Deployment,
) -> None:
    orphan = BundleStory(seed=f"{deployment.app}/orphan")  # never initialized
    healthy = BundleStory(seed=f"{deployment.app}/healthy", tickets=1)
    garbage_topic = deployment.topics.repartition("BookingMade_v1")
    garbage_at = deployment.send_raw(garbage_topic, healthy.vip_bundle_id, b"\x00not avro")
    [orphan_at] = deployment.send(orphan.flight_booked())
    deployment.send(healthy.initialized(), healthy.booking_made(), healthy.flight_booked())

    running = deployment.start(backoff=Backoff(min_s=0.05, max_s=0.2, deadline_s=1.0))
    dead = deployment.read([deployment.topics.dlq], until=lambda got: len(got) == 2)
    received = deployment.read(until=lambda got: len(finals_of(got, healthy)) == 1)
    running.stop()

    assert [f.success for f in finals_of(received, healthy)] == [True]
    by_exception = {r.headers["__streams.errors.exception"].decode(): r for r in dead}
    assert set(by_exception) == {"BadInput", "NotReadyTooLong"}
    bad, late = by_exception["BadInput"], by_exception["NotReadyTooLong"]
    assert bad.message == b"\x00not avro" and bad.key == healthy.vip_bundle_id
    assert b"not-single-object" in bad.headers["__streams.errors.message"]
    assert late.key == orphan.vip_bundle_id
    assert b"not initialized" in late.headers["__streams.errors.message"]
    for record, (topic, (partition, offset)) in (
        (bad, (garbage_topic, garbage_at)),
        (late, (deployment.topics.repartition("FlightBooked_v1"), orphan_at)),
    ):
        assert record.headers["__streams.errors.topic"] == topic.encode()
        assert record.headers["__streams.errors.partition"] == str(partition).encode()
        assert record.headers["__streams.errors.offset"] == str(offset).encode()
    assert b"Traceback" in bad.headers["__streams.errors.stacktrace"]
    assert b"BadInput" in bad.headers["__streams.errors.stacktrace"]
    assert b"NotReadyTooLong" in late.headers["__streams.errors.stacktrace"]
