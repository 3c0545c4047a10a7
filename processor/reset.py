"""`processor reset`: replay from a point in the inputs, as kafka-streams-application-reset.

Resets the group's input offsets, deletes the internal topics (and the group's
offsets on them) and the local stores, so the next run rebuilds all state from
the inputs. Every step is idempotent: after a failure, run it again.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from processor.admin import partition_counts, require_topics
from processor.runtime.offsets import list_offsets
from processor.topology import Topics

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> offset
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEEP = "instance-id"  # the instance's identity, not state: its transactional.id outlives a reset


class ResetRefused(RuntimeError):
    """Resetting now would corrupt a running deployment; the message says why."""


def iso_datetime(text: str) -> datetime:
    """argparse type: ISO 8601 (2026-11-23T10:00:00Z); without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 datetime; use e.g. 2026-11-23T10:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Target:
    """Where the input offsets go: the log start, or the first record at or after `at`."""

    at: datetime | None = None

    @classmethod
    def of(cls, to_datetime: datetime | None, by_duration_s: float | None) -> Target:
        if by_duration_s is not None:
            return cls(datetime.now(UTC) - timedelta(seconds=by_duration_s))
        return cls(to_datetime)

    def __str__(self) -> str:
        if self.at is None:
            return "earliest"
        # Kafka timestamps are milliseconds; whole seconds read better when that is all there is.
        precision = "seconds" if self.at.microsecond == 0 else "milliseconds"
        return self.at.astimezone(UTC).isoformat(timespec=precision)


@dataclass(frozen=True)
class Row:
    action: str
    subject: str
    detail: str = ""


# --- the group ---------------------------------------------------------------------


def active_members(admin: AdminClient, group: str) -> list[str]:
    """Client id and host of each member; a group that never existed has none."""
    description = admin.describe_consumer_groups([group], request_timeout=30)[group].result()
    return [f"{m.client_id} ({m.host.lstrip('/')})" for m in description.members]


def committed(admin: AdminClient, group: str) -> Offsets:
    request = [ConsumerGroupTopicPartitions(group)]  # no partitions: all of them
    result = admin.list_consumer_group_offsets(request, request_timeout=30)[group].result()
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or []}


def commit(admin: AdminClient, group: str, offsets: Offsets) -> None:
    """Sets the group's committed offsets; the broker refuses while the group has members."""
    if not offsets:
        return
    partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    deadline = time.monotonic() + 30
    while True:
        result = admin.alter_consumer_group_offsets(request, request_timeout=30)[group].result()
        errors = [tp.error for tp in result.topic_partitions or [] if tp.error is not None]
        if not errors:
            return
        # A topic created a moment ago may not be known to the group coordinator yet.
        transient = all(
            e.retriable() or e.code() == KafkaError.UNKNOWN_TOPIC_OR_PART for e in errors
        )
        if time.monotonic() > deadline or not transient:
            raise KafkaException(errors[0])
        time.sleep(0.2)


def forget_offsets(admin: AdminClient, group: str, topics: set[str], wait_s: float = 10.0) -> bool:
    """Removes the group's committed offsets on `topics`, so that re-created topics
    start from 0. The coordinator drops the offsets of a deleted topic by itself,
    a moment after the deletion; the Python client has no DeleteConsumerGroupOffsets,
    so if they linger, delete the (empty) group and commit back every other offset.
    Returns whether it had to."""
    deadline = time.monotonic() + wait_s
    while True:
        offsets = committed(admin, group)
        stale = sorted({t for t, _ in offsets if t in topics})
        if not stale:
            return False
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    log.info("offsets on %s outlived the topics: re-creating group %s", stale, group)
    admin.delete_consumer_groups([group], request_timeout=30)[group].result()
    commit(admin, group, {tp: o for tp, o in offsets.items() if tp[0] not in topics})
    return True


# --- input offsets -----------------------------------------------------------------------


def target_offsets(admin: AdminClient, topics: Iterable[str], target: Target) -> Offsets:
    """The offset of `target` in every partition of `topics`: the log start, or the
    first record at or after the time (the end offset when there is none)."""
    metadata = admin.list_topics(timeout=30).topics
    partitions = [(t, p) for t in topics for p in sorted(metadata[t].partitions)]
    if target.at is None:
        spec = OffsetSpec.earliest()
    else:
        # Whole milliseconds, rounded up: exact (no float), and never before `at`.
        spec = OffsetSpec.for_timestamp(-((EPOCH - target.at) // timedelta(milliseconds=1)))
    # Read committed, like the group: a record of a still-open transaction is not
    # skipped by a reset that lands at the end.
    offsets = list_offsets(admin, dict.fromkeys(partitions, spec))
    # ListOffsets answers -1 when no record is that recent: such a partition starts at its end.
    past_end = [tp for tp, o in offsets.items() if o < 0]
    return offsets | list_offsets(admin, dict.fromkeys(past_end, OffsetSpec.latest()))


# --- topics and local state ---------------------------------------------------------


def delete_topics(admin: AdminClient, names: Sequence[str], timeout_s: float = 30.0) -> None:
    """Deletes the topics and waits until metadata no longer shows them (a re-created
    topic must not meet the old one's partitions)."""
    if not names:
        return
    for future in admin.delete_topics(list(names), operation_timeout=timeout_s).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    deadline = time.monotonic() + timeout_s
    while remaining := sorted(partition_counts(admin, names)):
        if time.monotonic() > deadline:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"topics still listed: {', '.join(remaining)}")
            )
        time.sleep(0.1)


def local_state(state_dir: Path) -> list[Path]:
    """The stores of one instance: everything in its state dir but its id."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.iterdir() if p.name != KEEP)


def delete_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --- the command -----------------------------------------------------------------------


def reset(
    admin: AdminClient,
    topics: Topics,
    state_dir: Path,
    target: Target,
    *,
    delete_dlq: bool = False,
    dry_run: bool = False,
) -> list[Row]:
    """Runs (or with `dry_run` only plans) the reset; returns what it did, for a summary.
    `state_dir` is this instance's (already including the application id)."""
    group = topics.application_id
    if group in {"", ".", ".."} or "/" in group:  # it names a directory we empty
        raise ResetRefused(f"application id {group!r} cannot name a state directory")
    members = active_members(admin, group)
    if members:
        raise ResetRefused(
            f"consumer group {group!r} has {len(members)} active member(s): "
            f"{', '.join(members)}; stop every instance of the application, then reset"
        )
    require_topics(admin, topics.inputs, "input")

    before = committed(admin, group)
    offsets = target_offsets(admin, topics.inputs, target)
    internal = [*topics.repartitions, topics.changelog, *([topics.dlq] if delete_dlq else [])]
    existing = partition_counts(admin, [*internal, topics.dlq])
    doomed = [name for name in internal if name in existing]
    stale = sorted({t for t, _ in before if t in internal})
    stores = local_state(state_dir)

    rows = [Row("reset offsets", topic, _moves(before, offsets, topic)) for topic in topics.inputs]
    rows += [Row("delete topic", n, "" if n in existing else "absent") for n in internal]
    if not delete_dlq:
        detail = "dead letters kept; --delete-dlq deletes them"
        rows.append(Row("keep topic", topics.dlq, detail if topics.dlq in existing else "absent"))
    cleared = [Row("delete state", str(p)) for p in stores]
    cleared = cleared or [Row("delete state", str(state_dir), "none")]
    if dry_run:
        return [*rows, *(Row("forget offsets", t, _listed(before, t)) for t in stale), *cleared]

    # Inputs first, as Kafka Streams' tool does; a reset cut short is finished by re-running it.
    commit(admin, group, offsets)
    log.info("reset %d input partitions of group %s to %s", len(offsets), group, target)
    delete_topics(admin, doomed)
    log.info("deleted topics %s", doomed)
    recreated = bool(stale) and forget_offsets(admin, group, set(internal))
    note = " (group re-created)" if recreated else ""
    rows += [Row("forget offsets", t, _listed(before, t) + note) for t in stale]
    delete_paths(stores)
    return [*rows, *cleared]


def _moves(before: Offsets, after: Offsets, topic: str) -> str:
    parts = sorted(p for t, p in after if t == topic)
    return ", ".join(f"p{p} {before.get((topic, p), 'none')}->{after[topic, p]}" for p in parts)


def _listed(offsets: Offsets, topic: str) -> str:
    return ", ".join(f"p{p} {o}" for (t, p), o in sorted(offsets.items()) if t == topic)


def render(rows: Sequence[Row], title: str) -> str:
    """A plain table: stays readable in logs and pipes, where terminal tables wrap."""
    table = [("ACTION", "WHAT", "DETAIL"), *((r.action, r.subject, r.detail) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {s:<{widths[1]}}  {d}".rstrip() for a, s, d in table]
    return "\n".join([title, *lines])
