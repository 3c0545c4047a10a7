"""The route stage: find each input event's VIP bundle and re-key it by vip_bundle_id.

The booking index is a global table over `events.VipBundleInitialized_v1`
(booking_id -> vip_bundle_id, and the set of known bundles). An event whose
bundle is not in the index is re-checked once per poll batch, after the index
caught up to the end offsets taken then: only then is it declared "not part of
a VIP bundle" and skipped. That is what makes a replay correct, where the six
input topics are read in no causal order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from processor.codec import Codec, CodecError
from processor.domain.messages import EVENT_TYPES, Event, VipBundleInitializedV1, bundle_id_of
from processor.runtime.global_table import Extract
from processor.runtime.handler import Forward, InputRecord, OutputRecord, Reject, Router, Skip
from processor.topology import BUNDLE_HEADER, Topics

_BOOKING = b"booking:"
_BUNDLE = b"bundle:"


class Index(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def catch_up(self) -> None: ...


def index_entries(codec: Codec) -> Extract:
    """What one VipBundleInitialized_v1 record contributes to the booking index."""

    def extract(value: bytes) -> Iterable[tuple[bytes, bytes]]:
        try:
            event = codec.decode(value, VipBundleInitializedV1)
        except CodecError:
            return ()  # the route stage dead-letters it when it reads it as input
        bundle = event.vip_bundle_id.encode()
        return ((_BOOKING + event.booking_id.encode(), bundle), (_BUNDLE + bundle, b""))

    return extract


def saga_router(codec: Codec, topics: Topics, index: Index) -> Router:
    event_types = {topics.input(cls.schema_name): cls for cls in EVENT_TYPES}

    def bundle_of(event: Event) -> str | None:
        if isinstance(event, VipBundleInitializedV1):
            return event.vip_bundle_id  # the index's own source
        named = bundle_id_of(event)
        if named is not None:
            return named if index.get(_BUNDLE + named.encode()) is not None else None
        found = index.get(_BOOKING + event.booking_id.encode())  # type: ignore[union-attr]
        return None if found is None else found.decode()

    def forward(record: InputRecord, event: Event, bundle: str) -> Forward:
        # The original bytes and headers: the manage stage decodes them itself.
        return Forward(
            [
                OutputRecord(
                    topics.repartition(event.schema_name),
                    bundle.encode(),
                    record.value,
                    [*record.headers, (BUNDLE_HEADER, bundle.encode())],
                )
            ]
        )

    def route(records: Sequence[InputRecord]) -> list[Forward | Skip | Reject]:
        outcomes: list[Forward | Skip | Reject | None] = [None] * len(records)
        missed: list[tuple[int, Event]] = []
        for i, record in enumerate(records):
            try:
                event = codec.decode(record.value or b"", event_types[record.topic])
            except CodecError as exc:
                outcomes[i] = Reject(str(exc))
                continue
            bundle = bundle_of(event)
            if bundle is None:
                missed.append((i, event))
            else:
                outcomes[i] = forward(record, event, bundle)
        if missed:
            index.catch_up()  # end offsets taken now, after these events arrived
            for i, event in missed:
                bundle = bundle_of(event)
                outcomes[i] = (
                    Skip("not part of a VIP bundle")
                    if bundle is None
                    else forward(records[i], event, bundle)
                )
        return [o for o in outcomes if o is not None]

    return route
