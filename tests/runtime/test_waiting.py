"""Per-bundle waiting against the real broker: a bundle waiting for a confirmation
parks itself, not its partition; the wait survives a SIGKILL with its clock; the
parked bound pauses and resumes the partition. Events go straight into the
repartition topics, keyed by vip_bundle_id, as the route stage would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from processor.domain.messages import RefundTicket, VipBundleFinalizedV1
from processor.runtime.parking import Backoff
from tests.factories import BundleStory
from tests.harness import Deployment, Received, expected_outputs, observed, partition_of, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path: Path) -> Deployment:
    return Deployment(kafka_bootstrap, tmp_path / "state", partitions=3)


def on_one_partition(deployment: Deployment, count: int, tickets: int = 2) -> list[BundleStory]:
    stories = (BundleStory(seed=f"{deployment.app}/{n}", tickets=tickets) for n in range(500))
    first = next(stories)
    target = partition_of(first.vip_bundle_id, deployment.partitions)
    same = [s for s in stories if partition_of(s.vip_bundle_id, deployment.partitions) == target]
    return [first, *same[: count - 1]]


def finals(received: list[Received], story: BundleStory) -> list[bool]:
    return [
        r.message.success
        for r in received
        if isinstance(r.message, VipBundleFinalizedV1)
        and r.message.vip_bundle_id == story.vip_bundle_id
    ]


def refunds(received: list[Received], story: BundleStory) -> list[str]:
    return sorted(
        r.key for r in received if isinstance(r.message, RefundTicket) and r.key in story.ticket_ids
    )


def test_a_waiting_bundle_does_not_delay_another_bundle_on_its_partition(
    deployment: Deployment,
) -> None:
    waiting, other = on_one_partition(deployment, 2)
    failed = deployment.topics.repartition("FlightBookingFailed_v1")
    deployment.send(waiting.initialized(), waiting.booking_made(), waiting.confirmed(0))
    [(partition, parked_at)] = deployment.send(waiting.flight_failed())
    deployment.send(other.initialized(), other.booking_made(), *other.all_confirmed())
    [(same, _)] = deployment.send(other.flight_failed())  # behind the waiting one
    assert same == partition
    running = deployment.start()

    before = deployment.read(until=lambda got: finals(got, other) == [False], timeout=10)
    assert refunds(before, other) == sorted(other.ticket_ids)
    assert finals(before, waiting) == [] and refunds(before, waiting) == []
    assert running.engine.parked == 1
    wait_for(
        lambda: deployment.committed(failed, partition) == parked_at,
        what="the group's offset held at the parked record",
    )

    deployment.send(waiting.confirmed(1))
    after = deployment.read(until=lambda got: finals(got, waiting) == [False])
    running.stop()
    assert refunds(after, waiting) == sorted(waiting.ticket_ids)
    assert deployment.committed(failed, partition) > parked_at


def test_past_the_parked_bound_the_partition_pauses_then_resumes_losing_nothing(
    deployment: Deployment,
) -> None:
    *blocked, late = on_one_partition(deployment, 4)
    expected: Counter[tuple[str, str, object]] = Counter()
    for story in blocked:  # each waits for its second confirmation
        deployment.send(story.initialized(), story.booking_made(), story.confirmed(0))
        deployment.send(story.flight_failed())
        expected += expected_outputs(deployment.topics, story.history("flight_failed"))
    deployment.send(late.initialized(), late.booking_made(), *late.all_confirmed())
    deployment.send(late.flight_failed())  # ready, but behind the parked ones
    expected += expected_outputs(deployment.topics, late.history("flight_failed"))
    running = deployment.start(max_parked=2, backoff=Backoff(min_s=0.05, max_s=0.2))

    wait_for(lambda: running.engine.parked == 2, what="two parked records")
    wait_for(lambda: running.engine.paused_partitions == 1, what="the partition paused")
    time.sleep(1.0)
    held = deployment.read(timeout=2, until=lambda _: True)
    assert finals(held, late) == []  # not read past the bound

    for story in blocked:
        deployment.send(story.confirmed(1))
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    wait_for(lambda: running.engine.paused_partitions == 0, what="the partition resumed")
    running.stop()
    assert observed(received) == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith("vip_bundle_")
    }


def test_after_a_sigkill_the_bundle_still_waits_on_its_first_clock_and_completes_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    waiting, other = on_one_partition(deployment, 2)
    deployment.send(waiting.initialized(), waiting.booking_made(), waiting.confirmed(0))
    deployment.send(waiting.flight_failed())
    deployment.send(other.initialized(), other.booking_made(), *other.all_confirmed())
    deployment.send(other.flight_failed())  # behind the parked one, on its partition
    port = _free_port()
    state = tmp_path / "kill-state"
    args = [sys.executable, "-m", "processor"]
    args += deployment.cli_args(state, "victim", "--http", f"127.0.0.1:{port}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(args, env=env)
    try:
        wait_for(lambda: _metrics(port).get("vip_bundle_parked_records") == 1, what="parked")
        deployment.read(until=lambda got: finals(got, other) == [False])  # committed
        time.sleep(3.0)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    second = subprocess.Popen(args, env=env)
    try:
        wait_for(lambda: _metrics(port).get("vip_bundle_parked_records") == 1, what="parked again")
        metrics = _metrics(port)
        assert metrics["vip_bundle_oldest_parked_seconds"] >= 3.0  # not reset
        assert metrics["vip_bundle_replayed_total"] == 1  # other's failure: skipped, not redone
        deployment.send(waiting.confirmed(1))
        expected = expected_outputs(deployment.topics, waiting.history("flight_failed"))
        expected += expected_outputs(deployment.topics, other.history("flight_failed"))
        received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert observed(received) == expected
