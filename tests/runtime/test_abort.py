"""Transactions that do not commit: aborted, or given up past --commit-timeout. What
they staged (state, parked records) must go with them, and the work is redone once.

The faults are made on the broker, not by timing: an output topic that refuses
records (the commit fails: abort and rewind) or that is missing (the commit neither
succeeds nor fails: a replacement producer fences it). Neither lets the failed
transaction commit late, which a stopped or frozen broker would (once it is back,
the old producer's commit races the replacement's fencing).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from processor.admin import TopicSpec, create_topics
from processor.domain.messages import Event
from tests.factories import OUTCOMES, BundleStory
from tests.harness import (
    Deployment,
    Process,
    Received,
    delete_topics,
    expected_outputs,
    final_state,
    observed,
    topics_named_after,
    wait_for,
)

pytestmark = pytest.mark.integration

REFUND = ("command", "RefundTicket")
FINALIZED = ("event", "VipBundleFinalized_v1")


def set_topic_config(bootstrap: str, topic: str, key: str, value: str | None) -> None:
    """Sets a topic config, or with None goes back to the broker's default."""
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry(key, value or "", incremental_operation=op)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def wait_until_refused(bootstrap: str, topic: str, size: int) -> None:
    """Until the broker refuses a `size`-byte record on `topic` (config changes apply
    asynchronously). Probed inside transactions that are aborted: readers see nothing."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"probe-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    errors: list[object] = []

    def refused() -> bool:
        producer.begin_transaction()
        producer.produce(topic, b"x" * size, on_delivery=lambda err, _: errors.append(err))
        producer.flush(30)
        producer.abort_transaction(30)
        return errors[-1] is not None

    wait_for(refused, 30, f"{topic} refusing {size}-byte records")


def copies_of(received: list[Received], story: BundleStory) -> int:
    return sum(r.key == story.vip_bundle_id for r in received)


def attempts(deployment: Deployment, story: BundleStory, at_least: int) -> int:
    """How many times the story's VipBundleFinalized_v1 was written, aborted or not."""
    got = deployment.read(
        [deployment.topics.output_named(*FINALIZED)],
        until=lambda got: copies_of(got, story) >= at_least,
        settle=0,
        isolation="read_uncommitted",
    )
    return copies_of(got, story)


def check_outputs_and_states(
    deployment: Deployment, process: Process, histories: dict[BundleStory, list[Event]]
) -> None:
    """Every output exactly once, and each bundle's committed state as the saga says."""
    expected: Counter[tuple[str, str, object]] = Counter()
    for history in histories.values():
        expected += expected_outputs(deployment.topics, history)
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    assert observed(received) == expected
    for story, history in histories.items():
        assert process.bundle(story.vip_bundle_id) == final_state(history)


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Deployment]:
    # One partition: every record below goes through one task, in one stream of
    # transactions, in the order sent.
    yield Deployment(kafka_bootstrap, tmp_path, partitions=1)


def test_an_aborted_transaction_leaves_no_staged_state_or_parked_record_behind(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The refund topic refuses records: every transaction holding `refunded`'s refunds
    fails to commit, and the engine aborts it and reprocesses from the committed offsets.

    That transaction also staged `refunded`'s finalized state and parked `waiting`'s
    flight failure (a confirmation missing) behind it on the same partition. If the abort
    kept the staged state, the redo would ignore `refunded`'s event as a duplicate: its
    outputs would never appear (or the engine would fail on staged state without changelog
    records). If it kept what it parked, the parked record would stand for a position the
    rewind went back before (an engine holding the partition at the parked offset seeks
    there later, past `refunded`'s event): lost too. Either way the second attempt below
    never comes, and nothing of `refunded` is ever committed. An engine that dies on the
    refused record instead of aborting fails here too.
    """
    bootstrap = deployment.bootstrap
    refunded, waiting, late = (
        BundleStory(seed=f"{deployment.app}/{name}", tickets=2)
        for name in ("refunded", "waiting", "late")
    )
    process = deployment.spawn(
        tmp_path / "state",
        "a",
        *("--retry-backoff-min", "50ms", "--retry-backoff-max", "200ms"),
        # After a refused batch, librdkafka's next one to that partition fails for a
        # sequence gap only when it times out (the transaction timeout, 10 s): sooner.
        *("-X", "message.timeout.ms=2000"),
    )
    process.wait_ready()
    deployment.send(refunded.initialized(), refunded.booking_made(), *refunded.all_confirmed())
    deployment.send(waiting.initialized(), waiting.booking_made(), waiting.confirmed(0))
    committed = deployment.read(until=lambda got: len(got) == 4)  # both booked, in RocksDB

    refund_topic = deployment.topics.output_named(*REFUND)
    set_topic_config(bootstrap, refund_topic, "max.message.bytes", "150")  # a refund: ~300
    wait_until_refused(bootstrap, refund_topic, 300)
    deployment.send(refunded.flight_failed(), waiting.flight_failed(), late.initialized())

    assert attempts(deployment, refunded, at_least=2) >= 2  # aborted, then redone
    assert observed(deployment.read(timeout=3, until=lambda _: True)) == observed(committed)

    set_topic_config(bootstrap, refund_topic, "max.message.bytes", None)
    deployment.send(waiting.confirmed(1))  # the parked failure can go now
    check_outputs_and_states(
        deployment,
        process,
        {
            refunded: refunded.history("flight_failed"),
            waiting: waiting.history("flight_failed"),
            late: [late.initialized()],
        },
    )
    assert process.stop() == 0


def test_a_commit_stuck_past_the_commit_timeout_is_given_up_to_a_replacement_producer(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The refund topic is missing: the producer holds the refunds waiting for it (up to
    topic.metadata.propagation.max.ms, 30 s), so the commit neither succeeds nor fails.
    Past --commit-timeout the engine must give it up: a new producer with the same
    transactional.id fences the stuck one and aborts its transaction, and the engine
    drops what it staged and reprocesses.

    Without the replacement the transaction stays open (nothing of `refunded` ever
    commits, and no second attempt); without the clean-up the redo ignores `refunded`'s
    event as a duplicate (no second attempt either, outputs lost). The stuck producer
    cannot commit late: its refunds never reach the broker before it is fenced.
    """
    bootstrap = deployment.bootstrap
    refunded, late = (
        BundleStory(seed=f"{deployment.app}/{name}", tickets=2) for name in ("refunded", "late")
    )
    process = deployment.spawn(tmp_path / "state", "a", "--commit-timeout", "2s")
    process.wait_ready()
    deployment.send(refunded.initialized(), refunded.booking_made(), *refunded.all_confirmed())
    deployment.read(until=lambda got: len(got) == 2)

    refund_topic = deployment.topics.output_named(*REFUND)
    assert delete_topics(bootstrap, [refund_topic]) == []
    wait_for(lambda: refund_topic not in topics_named_after(bootstrap, refund_topic), 30)
    deployment.send(refunded.flight_failed(), late.initialized())

    # A second attempt is the replacement's: it starts a new stuck commit. The topic
    # comes back at its start, so that commit goes through well within the timeout.
    assert attempts(deployment, refunded, at_least=2) >= 2
    create_topics(AdminClient({"bootstrap.servers": bootstrap}), [TopicSpec(refund_topic, 2)])

    check_outputs_and_states(
        deployment,
        process,
        {refunded: refunded.history("flight_failed"), late: [late.initialized()]},
    )
    assert process.stop() == 0


def test_a_commit_given_up_that_completes_anyway_loses_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A commit slower than --commit-timeout may still complete after the engine gave up
    on it: the replacement producer then fences nothing, and the committed offsets already
    include the transaction. Its staged state was committed to the changelog too and must
    reach the store, or the bundle's next events find a stale state.

    A 1 ms timeout makes every commit such a commit (a commit takes a few ms; replacing
    the producer, far longer). Outputs must be exactly once and states right all the same.
    """
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(3)]
    histories = {story: story.history(OUTCOMES[n]) for n, story in enumerate(stories)}
    process = deployment.spawn(tmp_path / "state", "a", "--commit-timeout", "1ms")
    process.wait_ready()
    # One event of each bundle at a time, so that each bundle's events span several
    # transactions (a pause, not an assertion: merged steps only weaken the test).
    for step in range(max(len(h) for h in histories.values())):
        deployment.send(*(h[step] for h in histories.values() if step < len(h)))
        time.sleep(0.5)

    check_outputs_and_states(deployment, process, histories)
    assert process.stop() == 0
