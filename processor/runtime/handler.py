"""What the runtime asks of an application, and what it gets back.

A stateful handler is a plain function of (record, the key's current state)
returning one outcome; a router is a function of one record. Raising
`BadInput` sends the record to the dead-letter queue. States are the
application's own objects: a `StateSerde` turns them into changelog bytes,
once per changed key per commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Headers = list[tuple[str, bytes]]


class Record(Protocol):
    """A consumed record: confluent_kafka.Message has exactly these methods."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def timestamp(self) -> tuple[int, int]: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...


@dataclass(frozen=True, slots=True)
class InputRecord:
    """A `Record` built by hand (tests, tools); the engine passes the consumer's own."""

    topic_: str
    partition_: int
    offset_: int
    timestamp_: int  # ms since epoch
    key_: bytes | None
    value_: bytes | None
    headers_: Headers = field(default_factory=list)

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.timestamp_)  # TIMESTAMP_CREATE_TIME

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> Headers | None:
        return self.headers_

    def error(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Stage:
    """Commit `state` for the record's key (None deletes it) and publish `records`,
    atomically with the input offset."""

    state: Any
    records: Sequence[OutputRecord] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do (a duplicate, a late event); the offset still advances."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Too early: park the record (and its key's later records on its topic) until
    the key's state changes, or its deadline passes."""

    reason: str


Outcome = Stage | Skip | Retry


class BadInput(Exception):
    """The record can never be processed: it goes to the dead-letter queue."""


class TryLater(Exception):
    """Something the handler needs is away (a schema registry...), not the record's
    fault: the engine aborts the transaction, pauses, and does the work again."""


Handler = Callable[[Record, Any], Outcome]
"""(record, current state of record.key() or None) -> outcome. Must be pure with
respect to the runtime: the same arguments give the same outcome."""


class StateSerde(Protocol):
    """How a handler's states are stored: in RocksDB and in the changelog. `label`
    sorts stored states for the states-in-store gauge (e.g. active / finalized); it
    reads bytes, as stores are counted without decoding."""

    def dumps(self, state: Any) -> bytes: ...
    def loads(self, raw: bytes) -> Any: ...
    def label(self, raw: bytes) -> str: ...


# --- stateless routing (the first sub-topology) --------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Publish `records` (e.g. re-keyed to a repartition topic) with the input offset."""

    records: Sequence[OutputRecord]


@dataclass(frozen=True, slots=True)
class Reject:
    """The record can never be routed: it goes to the dead-letter queue."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """The global tables, as they are now, do not know where the record goes. The
    runtime asks again once they caught up to end offsets taken after the record
    arrived; a second Unknown then is final (counted, not routed)."""

    reason: str


RouteOutcome = Forward | Skip | Reject | Unknown

Router = Callable[[Record], RouteOutcome]
