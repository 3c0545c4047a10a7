"""The whole topology from the input topics: routing through the booking index,
non-VIP events, bad input, a lagging index, replays and mis-partitioned topics."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processor.admin import TopicSpec, create_topics
from processor.topology import Topics
from tests.factories import OUTCOMES, BundleStory, avro_record, raw_avro
from tests.harness import Deployment, codec, expected_outputs, observed

pytestmark = pytest.mark.integration


def random_key(rng: random.Random) -> str | None:
    return rng.choice([None, f"k{rng.randrange(10**6)}"])


def test_every_outcome_exactly_once_from_randomly_keyed_inputs_of_other_partition_counts(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path, partitions=3, input_partitions=(1, 2, 5))
    rng = random.Random(7)
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=1 + n % 3) for n in range(9)]
    expected: Counter[tuple[str, str, object]] = Counter()
    for n, story in enumerate(stories):
        events = story.history(OUTCOMES[n % 3])
        expected += expected_outputs(deployment.topics, events)
        for event in events:
            deployment.publish(event, key=random_key(rng))

    running = deployment.start()
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()

    assert observed(received) == expected
    assert running.engine.stats.not_routed == 0
    assert deployment.read([deployment.topics.dlq], timeout=2, until=lambda _: True) == []


def test_ordinary_bookings_are_skipped_and_counted_without_output_or_dlq(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    vip = BundleStory(seed=f"{deployment.app}/vip", tickets=2)
    ordinary = BundleStory(seed=f"{deployment.app}/ordinary", tickets=2)  # never initialized
    non_vip = [
        ordinary.booking_made(),
        *ordinary.all_confirmed(),
        ordinary.booking_failed(),
        ordinary.flight_booked(),  # a flight whose reference is no VIP bundle
        ordinary.flight_failed(),
    ]
    vip_events = vip.history("flight_failed")
    for pair in itertools.zip_longest(non_vip, vip_events):
        deployment.publish(*(e for e in pair if e is not None))

    running = deployment.start()
    expected = expected_outputs(deployment.topics, vip_events)
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()

    assert observed(received) == expected
    assert running.engine.stats.not_routed == len(non_vip)
    assert running.engine.stats.forwarded == len(vip_events)
    assert deployment.read([deployment.topics.dlq], timeout=2, until=lambda _: True) == []


DLQ_HEADERS = [
    "__streams.errors.exception",
    "__streams.errors.message",
    "__streams.errors.stacktrace",
    "__streams.errors.topic",
    "__streams.errors.partition",
    "__streams.errors.offset",
]


def test_bad_input_records_go_to_the_dlq_once_each_as_they_were_and_good_ones_flow(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    topics = deployment.topics
    good = BundleStory(seed=f"{deployment.app}/good", tickets=2)
    broken = BundleStory(seed=f"{deployment.app}/broken", tickets=2)
    initialized = topics.input("VipBundleInitialized_v1")
    # (input topic, value, what the DLQ message must say): each is bad in its own way.
    bad = [
        (topics.input("BookingMade_v1"), b"\x00garbage, not avro", "not-single-object"),
        (
            initialized,
            raw_avro("VipBundleInitialized_v1", avro_record(broken.initialized(), show_id="x")),
            "invalid",  # a bad UUID
        ),
        (
            initialized,
            raw_avro(
                "VipBundleInitialized_v1", avro_record(broken.initialized(), passengers=["one"])
            ),
            "1 passengers for 2 tickets",
        ),
        (topics.input("FlightBooked_v1"), codec.encode(good.booking_made()), "unexpected-type"),
        (topics.input("TicketBookingConfirmed_v1"), None, "not-single-object"),
    ]
    history = good.history("flight_failed")
    # Same key as the good events: the bad records sit in their partitions, among them.
    deployment.publish(history[0], key=good.vip_bundle_id)
    sent = {}
    for n, (topic, value, _) in enumerate(bad):
        headers = [("case", str(n).encode()), ("trace", b"t-%d" % n), ("trace", b"again")]
        where = deployment.send_raw(topic, good.vip_bundle_id, value, headers)
        sent[(topic, *where)] = (n, value, headers)
    deployment.publish(*history[1:], key=good.vip_bundle_id)

    running = deployment.start()
    expected = expected_outputs(topics, history)
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    dead = deployment.read([topics.dlq], until=lambda got: len(got) >= len(bad), settle=2.0)
    running.stop()

    assert observed(received) == expected
    assert len(dead) == len(bad)  # one each: counted, not keyed by anything
    by_source = {
        (
            r.headers["__streams.errors.topic"].decode(),
            int(r.headers["__streams.errors.partition"]),
            int(r.headers["__streams.errors.offset"]),
        ): r
        for r in dead
    }
    assert by_source.keys() == sent.keys()  # the input record's own topic/partition/offset
    for source, record in by_source.items():
        n, value, headers = sent[source]
        assert record.key == good.vip_bundle_id
        assert record.message == value
        assert list(record.header_list[: len(headers)]) == headers  # original, in order
        assert [name for name, _ in record.header_list[len(headers) :]] == DLQ_HEADERS
        assert record.headers["__streams.errors.exception"] == b"BadInput"
        assert bad[n][2].encode() in record.headers["__streams.errors.message"]
        assert b"BadInput" in record.headers["__streams.errors.stacktrace"]


def test_a_lagging_index_catches_up_before_anything_is_skipped(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    running = deployment.start()
    tables = running.engine.global_tables
    [index] = tables.tables
    # Hold the index reader: from now on it moves only to reach a target a miss took.
    step = index.step
    index.step = lambda max_records=10_000: step(max_records) if tables.behind else 0  # type: ignore[method-assign]
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(4)]
    expected: Counter[tuple[str, str, object]] = Counter()
    for n, story in enumerate(stories):
        events = story.history(OUTCOMES[n % 3])
        expected += expected_outputs(deployment.topics, events)
        deployment.publish(*events)

    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()

    assert observed(received) == expected
    assert running.engine.stats.not_routed == 0
    assert index.records == len(stories)  # it did read the initializations, late


def test_a_replay_from_earliest_is_complete_and_identical_across_application_ids(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    first = Deployment(kafka_bootstrap, tmp_path / "first")
    stories = [BundleStory(seed=f"{first.app}/{n}", tickets=1 + n % 3) for n in range(6)]
    expected: Counter[tuple[str, str, object]] = Counter()
    late_initializations = []
    for n, story in enumerate(stories):
        events = story.history(OUTCOMES[n % 3])
        expected += expected_outputs(first.topics, events)
        # Everything but the initialization first: the worst order a replay can see.
        first.publish(*events[1:])
        late_initializations.append(events[0])
    first.publish(*late_initializations)

    runs = []
    for deployment in (first, Deployment(kafka_bootstrap, tmp_path / "second", inputs_of=first)):
        running = deployment.start()
        runs.append(deployment.read(until=lambda got: len(got) >= sum(expected.values())))
        running.stop()
        assert running.engine.stats.not_routed == 0

    assert observed(runs[0]) == expected
    strip = [Counter((r.topic.rsplit(".", 1)[0], r.key, r.message) for r in run) for run in runs]
    assert strip[0] == strip[1]  # same ids, keys and payloads under both application ids


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor", *args], capture_output=True, text=True, timeout=120
    )


def test_run_refuses_mis_partitioned_internal_topics_naming_them(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    base = Deployment(kafka_bootstrap, tmp_path)  # its input and output topics
    topics = Topics(f"{base.app}-mis", base.topics.overrides)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    create_topics(admin, [TopicSpec(topics.repartition("BookingMade_v1"), 2)])
    create_topics(admin, [TopicSpec(topics.changelog, 3, {"cleanup.policy": "compact"})])

    result = run_cli(
        "run", "--bootstrap-servers", kafka_bootstrap, "--application-id", topics.application_id,
        "--state-dir", str(tmp_path), *(f"--topic={d}={n}" for d, n in topics.overrides.items()),
    )  # fmt: skip

    assert result.returncode == 2
    assert "not co-partitioned" in result.stderr
    assert f"{topics.repartition('BookingMade_v1')} (2)" in result.stderr
    assert f"{topics.changelog} (3)" in result.stderr


def test_run_names_missing_input_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run_cli(
        "run", "--bootstrap-servers", kafka_bootstrap, "--application-id", "nothing-here",
        "--state-dir", str(tmp_path), "--topic", "events.BookingMade_v1=no.such.topic",
    )  # fmt: skip

    assert result.returncode == 2
    assert "missing input topics" in result.stderr
    assert "no.such.topic" in result.stderr
