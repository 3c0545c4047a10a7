"""A restarted instance fences its predecessor at once: the predecessor's open
transaction is aborted when the successor starts, not when the broker's transaction
timeout (10 s) would abort it, and the predecessor can never commit again.

"At once" is told apart from the timeout by the clock, the one thing that differs:
the zombie's transaction started after `sent`, so the timeout cannot abort it before
`sent` + 10 s. Its records are seen resolved well before that (a successor starts in
a second or two), which only fencing by the same transactional.id does.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from processor.domain.messages import Event
from tests.factories import BundleStory
from tests.harness import (
    Deployment,
    Process,
    Received,
    expected_outputs,
    observed,
    partition_of,
    wait_for,
)

pytestmark = pytest.mark.integration

TRANSACTION_TIMEOUT_S = 10.0  # the engine's transaction.timeout.ms


def resolved(bootstrap: str, records: list[Received]) -> bool:
    """Whether the transaction that wrote `records` has ended: the last stable offset of
    each of their partitions is past them (a commit or abort marker was written)."""
    last: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.list_offsets(
        {tp: OffsetSpec.latest() for tp in last}, isolation_level=IsolationLevel.READ_COMMITTED
    )
    return all(future.result(30).offset > last[tp] for tp, future in futures.items())


def open_transaction(
    deployment: Deployment, stories: list[BundleStory]
) -> tuple[float, list[Received]]:
    """Sends the stories' initializations; returns when and the outputs an instance
    wrote for them, uncommitted (its commit interval is far longer than the test)."""
    sent = time.monotonic()
    deployment.send(*(story.initialized() for story in stories))
    written = deployment.read(
        until=lambda got: len(got) >= len(stories), settle=0, isolation="read_uncommitted"
    )
    assert len(written) == len(stories)
    assert deployment.read(timeout=1, until=lambda _: True) == []  # none committed
    return sent, written


def fenced_within_the_timeout(deployment: Deployment, sent: float, written: list[Received]) -> None:
    wait_for(lambda: resolved(deployment.bootstrap, written), 30, "the transaction ended")
    assert time.monotonic() - sent < TRANSACTION_TIMEOUT_S, "not fenced: the timeout ended it"


def outputs_exactly_once(deployment: Deployment, histories: list[list[Event]]) -> None:
    expected: Counter[tuple[str, str, object]] = Counter()
    for history in histories:
        expected += expected_outputs(deployment.topics, history)
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()), settle=2)
    assert observed(received) == expected


def test_a_successor_fences_a_zombie_mid_transaction_at_once_and_the_zombie_never_commits(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path, partitions=2)
    stories = [BundleStory(seed=f"{deployment.app}/{n}") for n in range(8)]
    assert {partition_of(s.vip_bundle_id, 2) for s in stories} == {0, 1}
    zombie = deployment.spawn(
        tmp_path / "zombie", "same", "--commit-interval", "60s", "--no-commit-when-idle"
    )
    zombie.wait_ready()
    sent, written = open_transaction(deployment, stories)
    zombie.signal(signal.SIGSTOP)  # frozen mid-transaction: a long GC pause, a stuck VM

    # Its own state dir (the zombie holds the other's lock), the same instance id.
    successor = deployment.spawn(tmp_path / "successor", "same")
    fenced_within_the_timeout(deployment, sent, written)
    successor.wait_ready()  # once the zombie's group session expired
    outputs_exactly_once(deployment, [[s.initialized()] for s in stories])

    zombie.signal(signal.SIGCONT)
    # Its transaction was aborted under it, its producer fenced: it cannot commit.
    wait_for(
        lambda: not zombie.alive() or "fenced" in zombie.log,
        30,
        "the zombie to learn it was fenced",
    )
    # Should it rejoin the group, let it take partitions before the next events, which
    # it must not commit either. (A pause: if it never rejoins, nothing to wait for.)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not zombie.alive() or bool(partitions(zombie)), 5)
    deployment.send(*(story.booking_made() for story in stories))
    outputs_exactly_once(deployment, [[s.initialized(), s.booking_made()] for s in stories])
    # Fenced for good, it must not keep partitions it can never commit.
    assert not zombie.alive() or partitions(zombie) == []
    assert successor.stop() == 0


def partitions(process: Process) -> list[int]:
    try:
        status, body = process.get("/readyz")
    except OSError:  # exiting (fenced) while asked: it serves nothing any more
        return []
    return list(json.loads(body)["partitions"]) if status == 200 else []


def instance_id_of(process: Process) -> str:
    [found] = re.findall(r"instance (\S+) of ", process.log)
    return found


def test_the_instance_id_kept_in_the_state_dir_fences_the_predecessor_and_differs_per_dir(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path, partitions=2)
    stories = [BundleStory(seed=f"{deployment.app}/{n}") for n in range(8)]
    assert {partition_of(s.vip_bundle_id, 2) for s in stories} == {0, 1}
    state, other_state = tmp_path / "state", tmp_path / "other"
    first = deployment.spawn(
        state, None, "--commit-interval", "60s", "--no-commit-when-idle"
    )  # no --instance-id
    first.wait_ready()
    sent, written = open_transaction(deployment, stories)
    first.kill()

    restarted = deployment.spawn(state, None)
    fenced_within_the_timeout(deployment, sent, written)
    restarted.wait_ready()
    kept = (state / deployment.app / "instance-id").read_text().strip()
    assert instance_id_of(first) == instance_id_of(restarted) == kept

    # Another state dir: another id. Were it the same, one would fence the other, and
    # the fenced one would fail on its next transaction.
    other = deployment.spawn(other_state, None)
    other.wait_ready()
    assert instance_id_of(other) != kept
    assert (other_state / deployment.app / "instance-id").read_text().strip() != kept
    wait_for(
        lambda: all(len(partitions(p)) == 1 for p in (restarted, other)),
        60,
        "the two instances sharing the partitions",
    )
    deployment.send(*(story.booking_made() for story in stories))  # work for both
    outputs_exactly_once(deployment, [[s.initialized(), s.booking_made()] for s in stories])
    assert restarted.stop() == 0 and other.stop() == 0
