"""Task ordering, holds and retries, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.runtime.handler import InputRecord, Outcome, Retry, Skip, Stage
from processor.runtime.store import PartitionStore
from processor.runtime.task import Backoff, Task


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return Task(0, PartitionStore(tmp_path / "store"), Backoff(min_s=1, max_s=4, deadline_s=10))


def rec(topic: str, offset: int, timestamp: int, key: bytes = b"k") -> InputRecord:
    return InputRecord(topic, 0, offset, timestamp, key, f"{topic}@{offset}".encode())


def test_offset_order_within_a_topic_and_smallest_head_timestamp_between_topics(
    task: Task,
) -> None:
    seen: list[str] = []

    def handle(r: InputRecord) -> Outcome:
        seen.append(f"{r.topic}@{r.offset}")
        return Skip("")

    # a@1 has an older timestamp than a@0 but must not overtake it.
    task.run([rec("a", 0, 50), rec("a", 1, 10), rec("b", 0, 20), rec("b", 1, 60)], handle)

    assert seen == ["b@0", "a@0", "a@1", "b@1"]
    assert task.positions == {"a": 2, "b": 2}


def test_a_not_ready_record_holds_its_topic_and_the_others_flow(task: Task) -> None:
    handled: list[str] = []

    def handle(r: InputRecord) -> Outcome:
        handled.append(f"{r.topic}@{r.offset}")
        return Retry("early") if r.topic == "a" else Stage(b"s")

    records = [rec("a", 5, 1), rec("a", 6, 2), rec("b", 0, 3, key=b"another bundle")]
    held = task.run(records, handle, now=lambda: 100.0)

    assert held == ["a"]
    assert handled == ["a@5", "b@0"]
    assert task.positions == {"a": 5, "b": 1}  # a's commit position stays at the held record
    assert task.due(100.5) == []
    assert task.due(101.0) == [("a", 5)]  # first backoff: 1 s


def test_records_of_a_held_topic_are_dropped_until_the_seek_back(task: Task) -> None:
    task.run([rec("a", 5, 1)], lambda r: Retry("early"), now=lambda: 0.0)
    handled: list[int] = []

    task.run([rec("a", 6, 2)], lambda r: handled.append(r.offset) or Skip(""))
    assert handled == []  # fetched before the pause: dropped
    assert task.due(5.0) == [("a", 5)]
    task.run([rec("a", 5, 1), rec("a", 6, 2)], lambda r: handled.append(r.offset) or Skip(""))
    assert handled == [5, 6]
    assert task.waiting == {}


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(min_s=0.1, max_s=1.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_state_change_of_the_key_makes_its_held_record_due_at_once(task: Task) -> None:
    task.run([rec("a", 0, 1, key=b"bundle")], lambda r: Retry("early"), now=lambda: 0.0)
    assert task.due(0.1) == []

    task.run([rec("b", 0, 2, key=b"bundle")], lambda r: Stage(b"new"), now=lambda: 0.1)

    assert task.due(0.1) == [("a", 0)]
    assert task.get(b"bundle") == b"new"


def test_past_deadline_counts_from_the_first_attempt(task: Task) -> None:
    record = rec("a", 0, 1)
    task.run([record], lambda r: Retry("early"), now=lambda: 0.0)
    assert not task.past_deadline(record, 9.9)
    assert task.past_deadline(record, 10.0)
    assert not task.past_deadline(rec("a", 1, 1), 100.0)


def test_staged_state_is_read_back_and_written_only_on_commit(task: Task, tmp_path: Path) -> None:
    task.run([rec("a", 0, 1, key=b"k1")], lambda r: Stage(b"v1"))
    assert task.get(b"k1") == b"v1"
    assert task.store.get(b"k1") is None

    task.committed(changelog_next_offset=7)

    assert task.store.get(b"k1") == b"v1"
    assert task.store.changelog_offset == 7
    task.run([rec("a", 1, 2, key=b"k1")], lambda r: Stage(None))
    task.aborted()
    assert task.get(b"k1") == b"v1"
