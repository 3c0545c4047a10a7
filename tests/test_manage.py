"""The saga as a runtime handler, without a broker."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from processor.codec import Codec
from processor.domain.messages import BookShowTickets, VipBundle
from processor.manage import BundleSerde, saga_handler
from processor.runtime.handler import BadInput, InputRecord, Retry, Skip, Stage
from processor.topology import Topics
from tests.factories import BundleStory

codec = Codec()
topics = Topics("app")
handle = saga_handler(codec, topics)
story = BundleStory(tickets=2)


def record(
    event: object, key: str = story.vip_bundle_id, value: bytes | None = None
) -> InputRecord:
    topic = topics.repartition(type(event).schema_name)  # type: ignore[attr-defined]
    return InputRecord(topic, 0, 0, 0, key.encode(), value or codec.encode(event))


def test_apply_stages_the_new_state_and_publishes_the_outputs_with_the_bundle_header() -> None:
    outcome = handle(record(story.initialized()), None)

    assert isinstance(outcome, Stage)
    assert isinstance(outcome.state, VipBundle)
    assert outcome.state.vip_bundle_id == story.vip_bundle_id
    [out] = outcome.records
    assert out.topic == "commands.BookShowTickets"
    assert out.key == story.vip_bundle_id.encode()
    assert isinstance(codec.decode(out.value), BookShowTickets)
    assert out.headers == [("vip_bundle_id", story.vip_bundle_id.encode())]


def test_ignore_is_a_skip_and_not_ready_a_retry() -> None:
    staged = handle(record(story.initialized()), None)
    assert isinstance(staged, Stage)

    assert isinstance(handle(record(story.initialized()), staged.state), Skip)
    assert isinstance(handle(record(story.flight_failed()), staged.state), Retry)
    assert isinstance(handle(record(story.booking_made()), None), Retry)


def test_undecodable_value_is_bad_input() -> None:
    with pytest.raises(BadInput, match="not-single-object"):
        handle(record(story.booking_made(), value=b"junk"), None)


def test_an_event_on_another_events_topic_is_bad_input() -> None:
    wrong = InputRecord(
        topics.repartition("BookingMade_v1"), 0, 0, 0, b"k", codec.encode(story.initialized())
    )
    with pytest.raises(BadInput, match="unexpected-type"):
        handle(wrong, None)


def test_a_key_that_is_not_the_events_bundle_is_bad_input() -> None:
    with pytest.raises(BadInput, match="is not the event's vip_bundle_id"):
        handle(record(story.flight_booked(), key="someone-else"), None)


def test_the_state_label_reads_is_finalized_off_the_bytes_in_both_wire_formats() -> None:
    serde = BundleSerde(codec)
    state = None
    for event in [story.initialized(), story.booking_made(), *story.all_confirmed()]:
        staged = handle(record(event), state)
        assert isinstance(staged, Stage)
        state = staged.state
        assert serde.label(serde.dumps(state)) == "active"
    final = handle(record(story.flight_failed()), state)
    assert isinstance(final, Stage) and final.state.is_finalized and final.state.failed
    assert serde.label(serde.dumps(final.state)) == "finalized"
    booked = replace(state, is_finalized=True, failed=False)  # finalized, succeeded
    assert serde.label(serde.dumps(booked)) == "finalized"
    # The Confluent wire format puts the same body after its 5-byte header.
    body = serde.dumps(booked)[10:]
    assert BundleSerde.label(b"\x00\x00\x00\x00\x07" + body) == "finalized"
