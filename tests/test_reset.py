"""`processor reset`: refusal while running, a full replay, offsets by time,
dry run, the DLQ kept unless asked, and offsets that outlive their topics."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from processor.admin import ensure_internal_topics, partition_counts
from processor.reset import KEEP, Target, commit, committed, forget_offsets, target_offsets
from processor.topology import Topics
from tests.conftest import TopicFactory
from tests.factories import OUTCOMES, BundleStory
from tests.harness import Deployment, RunningEngine, expected_outputs, observed

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def reset_cli(
    deployment: Deployment, state_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["--bootstrap-servers", deployment.bootstrap, "--application-id", deployment.app]
    args += ["--state-dir", str(state_dir)]
    args += [f"--topic={default}={name}" for default, name in deployment.topics.overrides.items()]
    return subprocess.run(
        [sys.executable, "-m", "processor", "reset", *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(deployment: Deployment) -> RunningEngine:
    # Instance id = application id puts its stores where `processor run --state-dir
    # <state_root>` keeps them: <state_root>/<application-id>.
    return deployment.start(instance=deployment.app)


def store_dir(deployment: Deployment) -> Path:
    return deployment.state_root / deployment.app


def internal(topics: Topics) -> list[str]:
    return [*topics.repartitions, topics.changelog]


def existing(deployment: Deployment, names: list[str]) -> set[str]:
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    return set(partition_counts(admin, names))


def input_positions(deployment: Deployment) -> dict[tuple[str, int], int]:
    return {
        (topic, p): deployment.committed(topic, p)
        for topic in deployment.topics.inputs
        for p in range(2)  # Deployment's input topics have 2 partitions
    }


def produce_at(bootstrap: str, topic: str, partition: int, *timestamps_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for ts in timestamps_ms:
        producer.produce(topic, b"x", partition=partition, timestamp=ts)
    assert producer.flush(30) == 0


def test_refuses_while_an_instance_runs_naming_the_group(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    running = start(deployment)
    try:
        result = reset_cli(deployment, tmp_path)
    finally:
        running.stop()

    assert result.returncode == 2, result.stderr
    assert f"consumer group '{deployment.app}' has 1 active member(s)" in result.stderr
    assert running.engine.config.transactional_id in result.stderr  # the member's client id
    assert existing(deployment, internal(deployment.topics)) == set(internal(deployment.topics))
    assert (store_dir(deployment) / deployment.topics.changelog).is_dir()


def test_a_reset_to_earliest_replays_every_output_identically(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    topics = deployment.topics
    expected: Counter[tuple[str, str, object]] = Counter()
    for n in range(3):
        events = BundleStory(seed=f"{deployment.app}/{n}", tickets=2).history(OUTCOMES[n])
        expected += expected_outputs(topics, events)
        deployment.publish(*events)
    running = start(deployment)
    first = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()
    assert observed(first) == expected
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert {t for t, _ in committed(admin, deployment.app)} >= set(topics.repartitions)
    (store_dir(deployment) / KEEP).write_text("a\n")  # as `processor run` keeps it

    result = reset_cli(deployment, tmp_path)

    assert result.returncode == 0, result.stderr
    assert existing(deployment, [*internal(topics), topics.dlq]) == {topics.dlq}
    assert [p.name for p in store_dir(deployment).iterdir()] == [KEEP]
    log_start = target_offsets(admin, topics.inputs, Target())
    assert input_positions(deployment) == log_start == dict.fromkeys(log_start, 0)
    assert {t for t, _ in committed(admin, deployment.app)} == set(topics.inputs)
    assert f"reset of {deployment.app} to earliest: done" in result.stdout

    # As `processor run` does at start-up.
    ensure_internal_topics(admin, topics, deployment.partitions)
    running = start(deployment)
    both = deployment.read(until=lambda got: len(got) >= 2 * sum(expected.values()))
    running.stop()
    assert running.engine.stats.restored == 0  # state rebuilt from the inputs alone
    assert observed(both) == expected + expected  # the second run's outputs equal the first's


def test_to_datetime_moves_offsets_to_the_first_record_at_or_after_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)  # its group never existed: fine
    topic = deployment.topics.input("BookingMade_v1")
    # Hours ago, well inside the broker's retention.
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    ms = int(t0.timestamp() * 1000)
    produce_at(kafka_bootstrap, topic, 0, ms, ms + HOUR_MS, ms + 2 * HOUR_MS)
    produce_at(kafka_bootstrap, topic, 1, ms)  # nothing that recent: its end offset
    naive = (t0 + timedelta(minutes=30)).replace(tzinfo=None).isoformat()  # read as UTC

    result = reset_cli(deployment, tmp_path, "--to-datetime", naive)

    assert result.returncode == 0, result.stderr
    positions = input_positions(deployment)
    assert positions.pop((topic, 0)) == 1
    assert positions.pop((topic, 1)) == 1
    assert set(positions.values()) == {0}  # empty topics: their end, 0
    assert f"to {naive}+00:00: done" in result.stdout

    # Exactly a record's timestamp, in another zone: that record is included.
    exact = (t0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=1))).isoformat()
    result = reset_cli(deployment, tmp_path, "--to-datetime", exact)
    assert result.returncode == 0, result.stderr
    assert deployment.committed(topic, 0) == 1


def test_by_duration_moves_offsets_to_now_minus_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    topic = deployment.topics.input("FlightBooked_v1")
    now = int(time.time() * 1000)
    produce_at(kafka_bootstrap, topic, 0, now - 3 * HOUR_MS, now - 2 * HOUR_MS, now - 60_000)

    result = reset_cli(deployment, tmp_path, "--by-duration", "90m")

    assert result.returncode == 0, result.stderr
    assert deployment.committed(topic, 0) == 2


def test_dry_run_changes_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    story = BundleStory(seed=f"{deployment.app}/dry", tickets=1)
    events = story.history("flight_booked")
    deployment.publish(*events)
    running = start(deployment)
    expected = expected_outputs(deployment.topics, events)
    deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    offsets = committed(admin, deployment.app)
    stores = sorted(store_dir(deployment).iterdir())

    result = reset_cli(deployment, tmp_path, "--dry-run", "--delete-dlq")

    assert result.returncode == 0, result.stderr
    assert "dry run, nothing changed" in result.stdout
    assert deployment.topics.repartition("BookingMade_v1") in result.stdout
    assert committed(admin, deployment.app) == offsets
    assert any(t in deployment.topics.inputs and o > 0 for (t, _), o in offsets.items())
    names = [*internal(deployment.topics), deployment.topics.dlq]
    assert existing(deployment, names) == set(names)
    assert sorted(store_dir(deployment).iterdir()) == stores


def test_the_dlq_is_kept_unless_delete_dlq(kafka_bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    dlq = deployment.topics.dlq
    deployment.send_raw(dlq, "k", b"a dead letter")

    kept = reset_cli(deployment, tmp_path)

    assert kept.returncode == 0, kept.stderr
    assert "keep topic" in kept.stdout and "--delete-dlq" in kept.stdout
    assert existing(deployment, [dlq, *internal(deployment.topics)]) == {dlq}
    letters = deployment.read([dlq], until=lambda got: len(got) == 1, timeout=10, settle=0.2)
    assert [r.message for r in letters] == [b"a dead letter"]

    deleted = reset_cli(deployment, tmp_path, "--delete-dlq")

    assert deleted.returncode == 0, deleted.stderr
    assert existing(deployment, [dlq]) == set()


def test_offsets_that_outlive_their_topic_are_forgotten_keeping_the_others(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    # The fallback path: a topic the coordinator keeps offsets for (here: one not deleted).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    group = f"test-forget-{uuid.uuid4().hex[:10]}"
    dropped, kept = new_topic(partitions=2), new_topic(partitions=1)
    commit(admin, group, {(dropped, 0): 3, (dropped, 1): 4, (kept, 0): 5})

    assert forget_offsets(admin, group, {dropped}, wait_s=0)  # had to re-create the group
    assert committed(admin, group) == {(kept, 0): 5}
    assert not forget_offsets(admin, group, {dropped}, wait_s=0)
