"""The route stage: find each input event's VIP bundle and re-key it by vip_bundle_id.

The booking index is a global table over `events.VipBundleInitialized_v1`
(booking_id -> vip_bundle_id, and the set of known bundles). An event whose
bundle is not in the index is `Unknown`: the runtime asks again once the index
caught up to end offsets taken after the event arrived, and only a second miss
declares it "not part of a VIP bundle". That is what makes a replay correct,
where the six input topics are read in no causal order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from processor.codec import CodecError, Decoder
from processor.domain.messages import EVENT_TYPES, Event, VipBundleInitializedV1, bundle_id_of
from processor.runtime.engine import RouterFactory
from processor.runtime.global_table import Extract
from processor.runtime.handler import (
    Forward,
    OutputRecord,
    Record,
    Reject,
    RouteOutcome,
    Router,
    Unknown,
)
from processor.topology import BUNDLE_HEADER, Topics

_BOOKING = b"booking:"
_BUNDLE = b"bundle:"
INDEX = "booking-index"  # the index store's folder


class Index(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


def index_entries(codec: Decoder) -> Extract:
    """What one VipBundleInitialized_v1 record contributes to the booking index."""

    def extract(value: bytes) -> Iterable[tuple[bytes, bytes]]:
        try:
            event = codec.decode(value, VipBundleInitializedV1)
        except CodecError:
            return ()  # the route stage dead-letters it when it reads it as input
        bundle = event.vip_bundle_id.encode()
        return ((_BOOKING + event.booking_id.encode(), bundle), (_BUNDLE + bundle, b""))

    return extract


def saga_router(codec: Decoder, topics: Topics, index: Index) -> Router:
    event_types = {topics.input(cls.schema_name): cls for cls in EVENT_TYPES}
    repartition = {cls: topics.repartition(cls.schema_name) for cls in EVENT_TYPES}
    bundle_header = BUNDLE_HEADER

    def bundle_of(event: Event) -> bytes | None:
        if isinstance(event, VipBundleInitializedV1):
            return event.vip_bundle_id.encode()  # the index's own source
        named = bundle_id_of(event)
        if named is not None:
            bundle = named.encode()
            return bundle if index.get(_BUNDLE + bundle) is not None else None
        return index.get(_BOOKING + event.booking_id.encode())  # type: ignore[union-attr]

    def route(record: Record) -> RouteOutcome:
        try:
            event = codec.decode(record.value() or b"", event_types[record.topic()])
        except CodecError as exc:
            return Reject(str(exc))
        bundle = bundle_of(event)
        if bundle is None:
            return Unknown("not part of a VIP bundle known to the booking index")
        # The original bytes and headers: the manage stage decodes them itself.
        headers = [*(record.headers() or []), (bundle_header, bundle)]
        return Forward([OutputRecord(repartition[type(event)], bundle, record.value(), headers)])

    return route


def saga_router_factory(codec: Decoder, topics: Topics) -> RouterFactory:
    """The router over the engine's booking index table."""
    index_topic = topics.input(VipBundleInitializedV1.schema_name)

    def build(tables: Mapping[str, Index]) -> Router:
        return saga_router(codec, topics, tables[index_topic])

    return build
