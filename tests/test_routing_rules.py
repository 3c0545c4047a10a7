"""The router's decisions with an in-memory booking index (no broker)."""

from __future__ import annotations

from processor.codec import Codec
from processor.routing import index_entries, saga_router
from processor.runtime.handler import Forward, InputRecord, Reject, Skip
from processor.topology import Topics
from tests.factories import BundleStory

codec = Codec()
topics = Topics("app")
story = BundleStory(tickets=1)
stranger = BundleStory(seed="stranger", tickets=1)


class LaggingIndex:
    """Knows nothing until caught up; then knows what `source` holds."""

    def __init__(self, *source: bytes) -> None:
        self.source = source
        self.entries: dict[bytes, bytes] = {}
        self.catch_ups = 0

    def get(self, key: bytes) -> bytes | None:
        return self.entries.get(key)

    def catch_up(self) -> None:
        self.catch_ups += 1
        for value in self.source:
            self.entries.update(index_entries(codec)(value))


def record(event: object, offset: int = 0) -> InputRecord:
    topic = topics.input(type(event).schema_name)  # type: ignore[attr-defined]
    return InputRecord(topic, 0, offset, 1234, None, codec.encode(event), [("trace", b"x")])


def test_booking_events_are_rekeyed_by_bundle_after_one_catch_up_per_batch() -> None:
    index = LaggingIndex(codec.encode(story.initialized()))
    route = saga_router(codec, topics, index)
    batch = [
        record(story.booking_made()),
        record(story.confirmed(0)),
        record(story.flight_failed()),
    ]

    outcomes = route(batch)

    assert index.catch_ups == 1
    assert all(isinstance(o, Forward) for o in outcomes)
    for source, outcome in zip(batch, outcomes, strict=True):
        [out] = outcome.records  # type: ignore[union-attr]
        assert out.key == story.vip_bundle_id.encode()
        assert out.value == source.value  # the original bytes
        assert out.headers == [("trace", b"x"), ("vip_bundle_id", story.vip_bundle_id.encode())]
        assert out.topic.startswith("app-") and out.topic.endswith("-repartition")


def test_initializations_route_without_the_index() -> None:
    index = LaggingIndex()
    [outcome] = saga_router(codec, topics, index)([record(story.initialized())])
    assert isinstance(outcome, Forward)
    assert index.catch_ups == 0


def test_events_of_no_bundle_are_skipped_only_after_catching_up() -> None:
    index = LaggingIndex(codec.encode(story.initialized()))
    route = saga_router(codec, topics, index)

    outcomes = route([record(stranger.booking_made()), record(stranger.flight_booked())])

    assert [type(o) for o in outcomes] == [Skip, Skip]
    assert index.catch_ups == 1


def test_undecodable_input_is_rejected() -> None:
    bad = InputRecord(topics.input("BookingMade_v1"), 0, 0, 0, None, b"\xc3\x01garbage")
    [outcome] = saga_router(codec, topics, LaggingIndex())([bad])
    assert isinstance(outcome, Reject)
    assert outcome.reason.startswith("not-single-object")
