"""An instance killed after it committed state, with a transaction open: the restart
resumes from its own RocksDB store and finishes everything exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processor.admin import TopicSpec, create_topics
from tests.factories import BundleStory
from tests.harness import (
    Deployment,
    delete_topics,
    expected_outputs,
    final_state,
    observed,
    topics_named_after,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_an_instance_killed_after_commits_resumes_from_its_store_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`first` commits every bundle's first three events (state in its RocksDB), then is
    SIGKILLed while a transaction with more work is open: it cannot commit, because it
    holds a refund for a topic that is missing. A restart with the same state dir and
    instance id fences that transaction, restores nothing (its store is up to date with
    everything committed), reprocesses, and finishes.

    Were state written to RocksDB before its transaction committed, the restart would
    find the killed transaction's changes in its store and ignore the re-read events as
    duplicates: their outputs lost, /bundles ahead of the changelog. Were input offsets
    committed apart from the outputs, those events would be skipped.
    """
    deployment = Deployment(kafka_bootstrap, tmp_path, partitions=2)
    failed, booked, failed_later, booked_later = stories = [
        BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(4)
    ]
    state = tmp_path / "state"
    first = deployment.spawn(state, "crashy")
    first.wait_ready()
    for story in stories:
        deployment.send(story.initialized(), story.booking_made(), story.confirmed(0))
    deployment.read(until=lambda got: len(got) == 2 * len(stories))
    for story in stories:  # committed, and in its store
        begun = [story.initialized(), story.booking_made(), story.confirmed(0)]
        assert first.bundle(story.vip_bundle_id) == final_state(begun)

    refund_topic = deployment.topics.output_named("command", "RefundTicket")
    assert delete_topics(kafka_bootstrap, [refund_topic]) == []
    wait_for(lambda: not topics_named_after(kafka_bootstrap, refund_topic), 30)
    deployment.send(*(story.confirmed(1) for story in stories))
    deployment.send(failed.flight_failed(), booked.flight_booked())
    finalized = deployment.topics.output_named("event", "VipBundleFinalized_v1")
    in_flight = deployment.read(
        [finalized],
        until=lambda got: any(r.key == failed.vip_bundle_id for r in got),
        settle=0,
        isolation="read_uncommitted",
    )
    assert any(r.key == failed.vip_bundle_id for r in in_flight)  # written, not committed
    first.kill()
    create_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicSpec(refund_topic, 2)])
    assert len(deployment.read(timeout=3, until=lambda _: True)) == 2 * len(stories)

    second = deployment.spawn(state, "crashy")
    second.wait_ready()
    assert second.metric("vip_bundle_restored_total") == 0  # nothing committed past its store
    deployment.send(failed_later.flight_failed(), booked_later.flight_booked())

    histories = {
        story: story.history(outcome)
        for story, outcome in zip(stories, ["flight_failed", "flight_booked"] * 2, strict=True)
    }
    expected: Counter[tuple[str, str, object]] = Counter()
    for history in histories.values():
        expected += expected_outputs(deployment.topics, history)
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    assert observed(received) == expected
    for story, history in histories.items():
        assert second.bundle(story.vip_bundle_id) == final_state(history)
    assert second.stop() == 0
