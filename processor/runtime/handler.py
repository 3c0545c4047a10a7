"""What the runtime asks of an application, and what it gets back.

A handler is a plain function of (record, stored state bytes) returning one
outcome. Raising `BadInput` sends the record to the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since epoch
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Stage:
    """Commit `state` for the record's key (None deletes it) and publish `records`,
    atomically with the input offset."""

    state: bytes | None
    records: Sequence[OutputRecord] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do (a duplicate, a late event); the offset still advances."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Too early: hold the source partition at this record and try again later."""

    reason: str


Outcome = Stage | Skip | Retry


class BadInput(Exception):
    """The record can never be processed: it goes to the dead-letter queue."""


Handler = Callable[[InputRecord, bytes | None], Outcome]
"""(record, current state of record.key or None) -> outcome. Must be pure with
respect to the runtime: the same arguments give the same outcome."""


# --- stateless routing (the first sub-topology) --------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Publish `records` (e.g. re-keyed to a repartition topic) with the input offset."""

    records: Sequence[OutputRecord]


@dataclass(frozen=True, slots=True)
class Reject:
    """The record can never be routed: it goes to the dead-letter queue."""

    reason: str


RouteOutcome = Forward | Skip | Reject

Router = Callable[[Sequence[InputRecord]], list[RouteOutcome]]
"""A whole poll batch at once -> one outcome per record, in order. Batches let a
router do one expensive check (e.g. catching up a global table) per poll."""
