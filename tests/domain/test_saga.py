"""Every cell of the saga's (state, event) table, and the graded scenarios."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from msgspec.structs import replace

from processor.domain.messages import (
    BookFlight,
    BookShowTickets,
    Event,
    RefundTicket,
    VipBundle,
    VipBundleFinalizedV1,
)
from processor.domain.saga import (
    IDEMPOTENCY_NAMESPACE,
    MESSAGE_ID_NAMESPACE,
    Apply,
    Decision,
    Ignore,
    NotReady,
    decide,
)
from tests.factories import BundleStory

story = BundleStory(tickets=3)


def apply_all(*events: Event) -> VipBundle:
    state: VipBundle | None = None
    for event in events:
        decision = decide(state, event)
        assert isinstance(decision, Apply), decision
        state = decision.state
    assert state is not None
    return state


def initialized() -> VipBundle:
    return apply_all(story.initialized())


def booked(confirmed: int = 0) -> VipBundle:
    return apply_all(story.initialized(), story.booking_made(), *story.all_confirmed()[:confirmed])


def messages(decision: Decision) -> list[object]:
    assert isinstance(decision, Apply), decision
    return [o.message for o in decision.outputs]


# --- the graded scenarios -----------------------------------------------------


def test_initialized_sends_one_book_show_tickets_with_the_bundle_fields() -> None:
    decision = decide(None, story.initialized())

    [book] = messages(decision)
    assert isinstance(book, BookShowTickets)
    assert (book.booking_id, book.customer_email, book.number_of_tickets, book.show_id) == (
        story.booking_id,
        story.email,
        3,
        story.show_id,
    )
    assert decision.outputs[0].kind == "command"
    assert decision.outputs[0].key == story.vip_bundle_id
    assert decision.state.vip_bundle_id == story.vip_bundle_id


def test_booking_made_sets_booking_made_at_and_books_the_inbound_flight() -> None:
    event = story.booking_made()
    decision = decide(initialized(), event)

    [book] = messages(decision)
    assert isinstance(book, BookFlight)
    assert book.flight_id == story.inbound_flight_id
    assert book.reference_id == story.vip_bundle_id
    assert book.passengers == story.initialized().passengers
    assert book.customer_email == story.email
    assert book.idempotency_key == book.header.idempotency_key
    assert decision.state.booking_made_at == event.header.published_at


def test_flight_booked_sends_no_command_and_finalizes_successfully() -> None:
    decision = decide(booked(), story.flight_booked())

    [final] = messages(decision)
    assert final == VipBundleFinalizedV1(final.header, story.vip_bundle_id, success=True)
    assert decision.outputs[0].kind == "event"
    assert decision.state.is_finalized and not decision.state.failed
    assert decision.state.inbound_flight_ticket_ids == story.flight_booked().flight_tickets_ids


def test_booking_failed_sends_no_command_and_finalizes_as_failed() -> None:
    decision = decide(initialized(), story.booking_failed())

    [final] = messages(decision)
    assert isinstance(final, VipBundleFinalizedV1) and final.success is False
    assert decision.state.is_finalized and decision.state.failed


def test_flight_failed_with_no_confirmation_is_not_ready_and_emits_nothing() -> None:
    decision = decide(booked(confirmed=0), story.flight_failed())

    assert isinstance(decision, NotReady)
    assert "0 of 3" in decision.reason


def test_flight_failed_after_all_confirmations_refunds_every_ticket_once() -> None:
    decision = decide(booked(confirmed=3), story.flight_failed())

    out = messages(decision)
    refunds = [m for m in out if isinstance(m, RefundTicket)]
    finals = [m for m in out if isinstance(m, VipBundleFinalizedV1)]
    assert sorted(r.ticket_id for r in refunds) == sorted(story.ticket_ids)
    assert len(refunds) == 3 and len(out) == 4
    assert [f.success for f in finals] == [False]
    assert decision.state.is_finalized and decision.state.failed
    refund_keys = {o.key for o in decision.outputs if isinstance(o.message, RefundTicket)}
    assert refund_keys == set(story.ticket_ids)


# --- unknown bundle -------------------------------------------------------------

NOT_INITIALIZED: list[Callable[[], Event]] = [
    story.booking_made,
    lambda: story.confirmed(0),
    story.booking_failed,
    story.flight_booked,
    story.flight_failed,
]


@pytest.mark.parametrize("event", NOT_INITIALIZED, ids=lambda f: f().schema_name)
def test_any_event_of_an_unknown_bundle_is_not_ready(event: Callable[[], Event]) -> None:
    assert isinstance(decide(None, event()), NotReady)


# --- open bundle, show booking not made yet -------------------------------------


def test_initialized_twice_is_ignored() -> None:
    assert isinstance(decide(initialized(), story.initialized()), Ignore)
    assert isinstance(decide(booked(), story.initialized()), Ignore)


def test_confirmation_before_booking_made_is_remembered_without_output() -> None:
    decision = decide(initialized(), story.confirmed(1))

    assert messages(decision) == []
    assert decision.state.ticket_ids == (story.ticket_ids[1],)


@pytest.mark.parametrize("state", [initialized, booked], ids=["unbooked", "booked"])
def test_redelivered_confirmation_is_ignored(state: Callable[[], VipBundle]) -> None:
    once = decide(state(), story.confirmed(0))
    assert isinstance(once, Apply)
    assert isinstance(decide(once.state, story.confirmed(0)), Ignore)


def test_ticket_ids_stay_a_sorted_set_whatever_the_arrival_order() -> None:
    forward = apply_all(story.initialized(), *story.all_confirmed())
    backward = apply_all(story.initialized(), *reversed(story.all_confirmed()))
    assert forward == backward
    assert forward.ticket_ids == tuple(sorted(story.ticket_ids))


@pytest.mark.parametrize("event", [story.flight_booked, story.flight_failed])
def test_flight_result_before_booking_made_is_not_ready(event: Callable[[], Event]) -> None:
    decision = decide(initialized(), event())
    assert isinstance(decision, NotReady)
    assert "before the show booking" in decision.reason


def test_booking_failed_never_refunds_tickets_of_a_booking_that_was_not_made() -> None:
    state = apply_all(story.initialized(), *story.all_confirmed())

    out = messages(decide(state, story.booking_failed()))
    assert [type(m) for m in out] == [VipBundleFinalizedV1]


# --- open bundle, show booking made ---------------------------------------------


def test_booking_made_twice_is_ignored() -> None:
    assert isinstance(decide(booked(), story.booking_made()), Ignore)


def test_confirmation_after_booking_made_is_remembered() -> None:
    decision = decide(booked(confirmed=1), story.confirmed(2))
    assert messages(decision) == []
    assert set(decision.state.ticket_ids) == {story.ticket_ids[0], story.ticket_ids[2]}


def test_flight_failed_with_some_confirmations_is_not_ready() -> None:
    decision = decide(booked(confirmed=2), story.flight_failed())
    assert isinstance(decision, NotReady)
    assert "2 of 3" in decision.reason


def test_booking_failed_after_booking_made_waits_for_confirmations_then_refunds() -> None:
    assert isinstance(decide(booked(confirmed=1), story.booking_failed()), NotReady)

    out = messages(decide(booked(confirmed=3), story.booking_failed()))
    assert sorted(m.ticket_id for m in out if isinstance(m, RefundTicket)) == sorted(
        story.ticket_ids
    )
    assert [m.success for m in out if isinstance(m, VipBundleFinalizedV1)] == [False]


def test_flight_booked_does_not_wait_for_confirmations() -> None:
    assert isinstance(decide(booked(confirmed=0), story.flight_booked()), Apply)


# --- events of another booking or flight ----------------------------------------

other = BundleStory(seed="other-bundle", tickets=3)


@pytest.mark.parametrize(
    "event",
    [other.booking_made, lambda: other.confirmed(0), other.booking_failed],
    ids=["BookingMade", "TicketBookingConfirmed", "BookingFailed"],
)
def test_booking_event_of_another_booking_is_ignored(event: Callable[[], Event]) -> None:
    decision = decide(booked(), event())
    assert isinstance(decision, Ignore)
    assert "not this bundle's" in decision.reason


@pytest.mark.parametrize("event", [other.flight_booked, other.flight_failed])
def test_flight_event_of_another_flight_is_ignored(event: Callable[[], Event]) -> None:
    decision = decide(booked(confirmed=3), replace(event(), reference_id=story.vip_bundle_id))
    assert isinstance(decision, Ignore)
    assert "inbound flight" in decision.reason


# --- finalized bundle -------------------------------------------------------------

FINALIZED_STATES: dict[str, Callable[[], VipBundle]] = {
    "booking-failed": lambda: apply_all(story.initialized(), story.booking_failed()),
    "flight-booked": lambda: apply_all(
        story.initialized(), story.booking_made(), story.flight_booked()
    ),
    "flight-failed": lambda: apply_all(
        story.initialized(), story.booking_made(), *story.all_confirmed(), story.flight_failed()
    ),
}
EVERY_EVENT: list[Callable[[], Event]] = [story.initialized, *NOT_INITIALIZED]


@pytest.mark.parametrize("state", FINALIZED_STATES.values(), ids=list(FINALIZED_STATES))
@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda f: f().schema_name)
def test_every_event_after_finalization_is_ignored(
    state: Callable[[], VipBundle], event: Callable[[], Event]
) -> None:
    assert isinstance(decide(state(), event()), Ignore)


def test_late_confirmation_after_a_successful_flight_is_ignored() -> None:
    state = apply_all(story.initialized(), story.booking_made(), story.flight_booked())
    assert isinstance(decide(state, story.confirmed(0)), Ignore)


# --- deterministic outputs ----------------------------------------------------------


def test_output_ids_are_uuid5_of_bundle_message_and_ticket() -> None:
    trigger = story.flight_failed()
    out = messages(decide(booked(confirmed=3), trigger))

    for m in out:
        detail = m.ticket_id if isinstance(m, RefundTicket) else ""
        name = f"{story.vip_bundle_id}/{m.schema_name}/{detail}"
        assert m.header.id == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))
        assert m.header.idempotency_key == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, name))
        assert m.header.published_at == trigger.header.published_at


def test_book_flight_id_names_the_flight() -> None:
    [book] = messages(decide(initialized(), story.booking_made()))
    name = f"{story.vip_bundle_id}/BookFlight/{story.inbound_flight_id}"
    assert book.header.id == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))


def test_same_event_on_same_state_gives_equal_outputs() -> None:
    assert decide(booked(3), story.flight_failed()) == decide(booked(3), story.flight_failed())
