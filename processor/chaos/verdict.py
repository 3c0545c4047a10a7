"""The end of a chaos run: read everything back (read_committed) and check it.

- The outputs, from the start of the run's own topics: the simulator's checks
  (every bundle finalized once with the right flag, refunds exactly the
  confirmed tickets, one show booking and one flight booking per bundle that got
  that far, no output twice by idempotency key) and nothing unexpected: no output
  of a bundle the services never started, of an ordinary booking, or of a
  fuzzed record.
- The DLQ: every fuzzed record that can never be routed is there exactly once,
  with its key, value and headers and the six `__streams.errors.*` headers
  naming its topic, partition and offset; no fuzzed record that is merely "not
  part of a VIP bundle" is there; and nothing else is.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from processor.chaos.fuzz import Fuzzed
from processor.codec import Codec, CodecError
from processor.logs import client_logging
from processor.simulation.check import Observed, violations
from processor.simulation.services import Plan
from processor.topology import BUNDLE_HEADER

DLQ_HEADERS = (
    "__streams.errors.exception",
    "__streams.errors.message",
    "__streams.errors.stacktrace",
    "__streams.errors.topic",
    "__streams.errors.partition",
    "__streams.errors.offset",
)


class ReadIncomplete(RuntimeError):
    """The final read did not reach the end of every partition in time."""


def read_all(
    bootstrap: str, topics: Iterable[str], client_config: Mapping[str, str], timeout: float = 180.0
) -> list[Message]:
    """Every committed record of `topics`, from the beginning to the end each partition
    has now (the run stopped every writer first)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            **client_config,
            **client_logging(),
            "group.id": f"chaos-verdict-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # Dead letters of near-maximum size: fetch them whole.
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        }
    )
    try:
        names = list(topics)
        metadata = consumer.list_topics(timeout=30).topics
        tps = [
            TopicPartition(t, p, OFFSET_BEGINNING) for t in names for p in metadata[t].partitions
        ]
        consumer.assign(tps)
        # EOF comes at the last stable offset: with no writer left, the end.
        waiting = {(tp.topic, tp.partition) for tp in tps}
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise ReadIncomplete(f"{len(waiting)} partitions not read to the end: {waiting}")
            for msg in consumer.consume(1000, timeout=0.5):
                error = msg.error()
                if error is None:
                    records.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    waiting.discard((msg.topic(), msg.partition()))
        return records
    finally:
        consumer.close()


@dataclass
class DeadLetters:
    found: int = 0  # fuzzed records found in the DLQ as they should be
    expected: int = 0
    missing: list[Fuzzed] = field(default_factory=list)
    twice: list[tuple[Fuzzed, int]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # present, but not as they should be
    unexpected: list[str] = field(default_factory=list)  # not fuzzed, or not for the DLQ
    exceptions: Counter[str] = field(default_factory=Counter)

    def problems(self) -> list[str]:
        out = [f"fuzzed #{f.seq} ({f.kind}, {f.topic}[{f.partition}]@{f.offset}) not in the DLQ"
               for f in self.missing]  # fmt: skip
        out += [f"fuzzed #{f.seq} ({f.kind}) in the DLQ {n} times" for f, n in self.twice]
        return out + self.wrong + self.unexpected


def check_dead_letters(fuzzed: Iterable[Fuzzed], letters: Iterable[Message]) -> DeadLetters:
    by_source = {(f.topic, f.partition, f.offset): f for f in fuzzed if f.error is None}
    result = DeadLetters(expected=sum(1 for f in by_source.values() if f.dead_letter))
    seen: Counter[tuple[str, int, int]] = Counter()
    spoilt: set[tuple[str, int, int]] = set()
    for letter in letters:
        headers = letter.headers() or []
        values = dict(headers)
        missing = [name for name in DLQ_HEADERS if name not in values]
        if missing:
            result.wrong.append(f"dead letter at DLQ offset {letter.offset()} lacks {missing}")
            continue
        exception = values["__streams.errors.exception"].decode()
        message = values["__streams.errors.message"].decode(errors="replace")
        result.exceptions[exception] += 1
        source = (
            values["__streams.errors.topic"].decode(),
            int(values["__streams.errors.partition"]),
            int(values["__streams.errors.offset"]),
        )
        origin = by_source.get(source)
        where = f"{source[0]}[{source[1]}]@{source[2]}"
        if origin is None:
            result.unexpected.append(f"dead letter of {where} ({exception}: {message[:120]})")
            continue
        if not origin.dead_letter:
            result.unexpected.append(f"fuzzed #{origin.seq} ({origin.kind}) dead-lettered: {where}")
            continue
        seen[source] += 1
        original = [(k, v) for k, v in headers if k not in DLQ_HEADERS]
        if letter.key() != origin.key or letter.value() != origin.value:
            result.wrong.append(f"fuzzed #{origin.seq} ({origin.kind}): key or value changed")
            spoilt.add(source)
        elif original != origin.headers:
            result.wrong.append(f"fuzzed #{origin.seq} ({origin.kind}): headers not kept")
            spoilt.add(source)
    for source, origin in by_source.items():
        if not origin.dead_letter:
            continue
        count = seen[source]
        if count == 0:
            result.missing.append(origin)
        elif count > 1:
            result.twice.append((origin, count))
        elif source not in spoilt:
            result.found += 1
    return result


@dataclass
class OutputCheck:
    observed: Observed
    problems: list[str]
    undecodable: int


def check_outputs(
    records: Iterable[Message],
    plans: Mapping[str, Plan],
    ordinary: Set[str],
    fuzzed_references: Set[str],
) -> OutputCheck:
    """`ordinary` and `fuzzed_references`: ids of no bundle, which must see no output."""
    codec = Codec()
    observed = Observed()
    problems: list[str] = []
    undecodable = 0
    for msg in records:
        headers = dict(msg.headers() or [])
        bundle = headers.get(BUNDLE_HEADER, b"").decode(errors="replace")
        try:
            message = codec.decode(msg.value() or b"")
        except CodecError as exc:
            undecodable += 1
            problems.append(f"undecodable output in {msg.topic()}@{msg.offset()}: {exc}")
            continue
        observed.record(message, bundle)
    problems += violations(plans, observed, ordinary | fuzzed_references)
    # The run's topics are its own: every other bundle's output is unexpected.
    named = ordinary | fuzzed_references  # reported by violations() already
    strangers = sorted(b for b in observed.bundles if b not in plans and b not in named)
    problems += [f"{observed.bundles[b]} outputs of unknown bundle {b!r}" for b in strangers]
    return OutputCheck(observed, problems, undecodable)
