"""The commit deadline, with a stand-in producer whose calls hang or fail on demand
(the real transactional path is covered against the broker elsewhere)."""

from __future__ import annotations

import threading

import pytest

from processor.runtime.checkpoint import Checkpoint, CommitStuck


class StandInProducer:
    def __init__(self, hang: threading.Event | None = None, fail: Exception | None = None):
        self.hang, self.fail, self.committed = hang, fail, False

    def begin_transaction(self) -> None:
        pass

    def flush(self, timeout: float = -1) -> int:
        if self.hang is not None:
            self.hang.wait()
        return 0

    def send_offsets_to_transaction(self, offsets: object, metadata: object) -> None:
        if self.fail is not None:
            raise self.fail

    def commit_transaction(self) -> None:
        self.committed = True


class OneOffset:
    def prepare(self, checkpoint: Checkpoint) -> None:
        pass

    def offsets(self) -> list[object]:
        return ["offset"]

    def flush(self, changelog_offsets: dict[int, int]) -> None:
        pass


def test_a_commit_that_returns_in_time_is_a_commit() -> None:
    producer = StandInProducer()
    checkpoint = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    checkpoint.begin()

    checkpoint.commit_within([OneOffset()], object(), timeout_s=5)  # type: ignore[list-item]
    assert producer.committed and not checkpoint.is_open
    assert checkpoint.changelog_offsets == {}


def test_a_hanging_commit_is_given_up_after_the_deadline() -> None:
    release = threading.Event()
    checkpoint = Checkpoint(StandInProducer(hang=release), "changelog")  # type: ignore[arg-type]
    try:
        with pytest.raises(CommitStuck, match="did not return within"):
            checkpoint.commit_within([], object(), timeout_s=0.2)
    finally:
        release.set()


def test_a_failing_commit_raises_its_own_error() -> None:
    checkpoint = Checkpoint(StandInProducer(fail=ValueError("boom")), "changelog")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boom"):
        checkpoint.commit_within([OneOffset()], object(), timeout_s=5)  # type: ignore[list-item]
