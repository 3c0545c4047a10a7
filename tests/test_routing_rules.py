"""The router's decisions with an in-memory booking index (no broker). When to ask
again after a miss is the runtime's rule: see tests/runtime/test_route_task.py."""

from __future__ import annotations

from processor.codec import Codec
from processor.routing import index_entries, saga_router
from processor.runtime.handler import Forward, InputRecord, Reject, Unknown
from processor.topology import Topics
from tests.factories import BundleStory

codec = Codec()
topics = Topics("app")
story = BundleStory(tickets=1)
stranger = BundleStory(seed="stranger", tickets=1)


class Index(dict[bytes, bytes]):
    def learn(self, *initializations: bytes) -> None:
        for value in initializations:
            self.update(index_entries(codec)(value))


def record(event: object, offset: int = 0) -> InputRecord:
    topic = topics.input(type(event).schema_name)  # type: ignore[attr-defined]
    return InputRecord(topic, 0, offset, 1234, None, codec.encode(event), [("trace", b"x")])


def test_booking_and_flight_events_are_rekeyed_by_bundle_with_their_bytes_and_headers() -> None:
    index = Index()
    index.learn(codec.encode(story.initialized()))
    route = saga_router(codec, topics, index)
    for source in (
        record(story.booking_made()),
        record(story.confirmed(0)),
        record(story.flight_failed()),
    ):
        outcome = route(source)
        assert isinstance(outcome, Forward)
        [out] = outcome.records
        assert out.key == story.vip_bundle_id.encode()
        assert out.value == source.value()  # the original bytes
        assert out.headers == [("trace", b"x"), ("vip_bundle_id", story.vip_bundle_id.encode())]
        assert out.topic.startswith("app-") and out.topic.endswith("-repartition")


def test_initializations_route_without_the_index() -> None:
    assert isinstance(saga_router(codec, topics, Index())(record(story.initialized())), Forward)


def test_events_the_index_does_not_know_are_unknown_not_skipped() -> None:
    index = Index()
    index.learn(codec.encode(story.initialized()))
    route = saga_router(codec, topics, index)
    assert isinstance(route(record(stranger.booking_made())), Unknown)
    assert isinstance(route(record(stranger.flight_booked())), Unknown)


def test_undecodable_input_is_rejected() -> None:
    bad = InputRecord(topics.input("BookingMade_v1"), 0, 0, 0, None, b"\xc3\x01garbage")
    outcome = saga_router(codec, topics, Index())(bad)
    assert isinstance(outcome, Reject)
    assert outcome.reason.startswith("not-single-object")
