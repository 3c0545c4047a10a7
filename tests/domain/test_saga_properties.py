"""Whatever the order and duplication of a bundle's events, and whatever other bundles'
events reach its state, the saga ends in the right state with the right outputs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from processor.domain.messages import (
    BookFlight,
    BookShowTickets,
    Event,
    Message,
    RefundTicket,
    VipBundle,
    VipBundleFinalizedV1,
    VipBundleInitializedV1,
)
from processor.domain.saga import Apply, Ignore, NotReady, decide
from tests.factories import OUTCOMES, BundleStory

# Stories beyond the three causal outcomes (factories.OUTCOMES):
# - made_then_failed: BookingFailed_v1 after BookingMade_v1 and every confirmation. Which of
#   the two the saga sees first decides whether the tickets are refunded.
# - confirmed_then_failed: confirmations but no BookingMade_v1, then BookingFailed_v1.
# - confirmed_then_flight_failed: confirmations but no BookingMade_v1, then a flight failure,
#   which must wait for ever (a flight result before the show booking): never a refund.
KINDS = (*OUTCOMES, "made_then_failed", "confirmed_then_failed", "confirmed_then_flight_failed")
# Kinds whose final state and outputs do not depend on the delivery order. (After a
# flight_booked success, a late confirmation is ignored: its ticket id may be missing.)
ORDER_FREE = (*OUTCOMES, "confirmed_then_flight_failed")


@dataclass
class Replayed:
    state: VipBundle | None = None
    outputs: list[Message] = field(default_factory=list)
    # The state each RefundTicket was decided on.
    refunded_from: list[VipBundle] = field(default_factory=list)
    stuck: list[Event] = field(default_factory=list)  # NotReady for good


def replay(events: list[Event]) -> Replayed:
    """Feeds events to one bundle's state in order; NotReady ones wait and are retried
    after the others, until a full pass changes nothing (the runtime's retry, without
    the clock). Whatever is still waiting then is `stuck`."""
    result = Replayed()
    pending = list(events)
    while pending:
        waiting: list[Event] = []
        for event in pending:
            decision = decide(result.state, event)
            if isinstance(decision, Apply):
                for out in decision.outputs:
                    result.outputs.append(out.message)
                    if isinstance(out.message, RefundTicket):
                        assert result.state is not None
                        result.refunded_from.append(result.state)
                result.state = decision.state
            elif isinstance(decision, NotReady):
                waiting.append(event)
            else:
                assert isinstance(decision, Ignore)
        if len(waiting) == len(pending):
            result.stuck = waiting
            break
        pending = waiting
    return result


def history(story: BundleStory, kind: str, confirmed: tuple[int, ...]) -> list[Event]:
    """The bundle's events in causal order; `confirmed` picks the confirmations of the
    stories without BookingMade_v1."""
    if kind in OUTCOMES:
        return story.history(kind)
    if kind == "made_then_failed":
        return [
            story.initialized(),
            story.booking_made(),
            *story.all_confirmed(),
            story.booking_failed(),
        ]
    some = [story.confirmed(i) for i in confirmed]
    last = story.booking_failed() if kind == "confirmed_then_failed" else story.flight_failed()
    return [story.initialized(), *some, last]


@dataclass(frozen=True)
class Case:
    story: BundleStory
    kind: str
    in_order: list[Event]
    delivered: list[Event]  # the bundle's own events, reordered and redelivered
    foreign: list[Event]  # other bundles' events reaching this bundle's state

    def mixed(self, positions: list[int]) -> list[Event]:
        events = list(self.delivered)
        for at, event in zip(positions, self.foreign, strict=True):
            events.insert(at % (len(events) + 1), event)
        return events


@st.composite
def cases(draw: st.DrawFn) -> tuple[Case, list[int]]:
    tickets = draw(st.integers(1, 4))
    story = BundleStory(seed=f"prop-{draw(st.integers(0, 3))}", tickets=tickets)
    kind = draw(st.sampled_from(KINDS))
    confirmed = tuple(draw(st.lists(st.integers(0, tickets - 1), unique=True)))
    events = history(story, kind, confirmed)
    redelivered = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    # Another bundle's booking and flight events: never its initialization, which the
    # runtime keys by its own vip_bundle_id. Its ids differ from this bundle's.
    other = BundleStory(seed=f"other-{draw(st.integers(0, 3))}", tickets=draw(st.integers(1, 3)))
    other_events = [
        e
        for e in history(other, draw(st.sampled_from(KINDS)), tuple(range(other.tickets)))
        if not isinstance(e, VipBundleInitializedV1)
    ]
    foreign = draw(st.lists(st.sampled_from(other_events), max_size=4))
    positions = draw(st.lists(st.integers(0, 50), min_size=len(foreign), max_size=len(foreign)))
    delivered = draw(st.permutations(events + redelivered))
    return Case(story, kind, events, delivered, foreign), positions


def refunded(result: Replayed) -> list[str]:
    return sorted(m.ticket_id for m in result.outputs if isinstance(m, RefundTicket))


def of_type(result: Replayed, cls: type) -> list[Message]:
    return [m for m in result.outputs if isinstance(m, cls)]


@given(cases())
def test_every_refund_comes_from_a_booked_state_and_the_outputs_match_the_final_state(
    drawn: tuple[Case, list[int]],
) -> None:
    case, positions = drawn

    result = replay(case.mixed(positions))

    state = result.state
    assert state is not None and state.vip_bundle_id == case.story.vip_bundle_id
    # Never a refund of a booking that was not made, and only of confirmed tickets.
    for source, refund in zip(result.refunded_from, of_type(result, RefundTicket), strict=True):
        assert source.booking_made_at is not None
        assert refund.ticket_id in source.ticket_ids  # type: ignore[attr-defined]
    # Refunds are all the tickets of a failed booked bundle, once each, or nothing.
    if state.failed and state.booking_made_at is not None:
        assert refunded(result) == sorted(case.story.ticket_ids) == sorted(state.ticket_ids)
    else:
        assert refunded(result) == []
    finals = of_type(result, VipBundleFinalizedV1)
    assert [f.success for f in finals] == ([not state.failed] if state.is_finalized else [])  # type: ignore[attr-defined]
    assert len(of_type(result, BookShowTickets)) == 1
    assert len(of_type(result, BookFlight)) == (1 if state.booking_made_at else 0)
    assert not result.stuck or not state.is_finalized  # only an open bundle waits
    keys = [m.header.idempotency_key for m in result.outputs]  # type: ignore[attr-defined]
    assert len(keys) == len(set(keys))  # nothing published twice


@given(cases())
def test_other_bundles_events_change_nothing(drawn: tuple[Case, list[int]]) -> None:
    case, positions = drawn

    with_foreign = replay(case.mixed(positions))
    without = replay(case.delivered)

    assert with_foreign.state == without.state
    assert with_foreign.outputs == without.outputs
    # They wait like any event until the bundle is initialized, and are ignored after.
    assert with_foreign.stuck == without.stuck


@given(cases())
def test_final_state_and_outputs_do_not_depend_on_order_or_run(
    drawn: tuple[Case, list[int]],
) -> None:
    case, positions = drawn
    events = case.mixed(positions)

    first = replay(events)
    second = replay(list(events))
    in_order = replay(case.in_order)

    assert first == second
    assert first.state is not None and in_order.state is not None
    assert first.state.ticket_ids == tuple(sorted(first.state.ticket_ids))
    if case.kind in ORDER_FREE:
        if case.kind == "flight_booked":
            assert set(first.state.ticket_ids) <= set(in_order.state.ticket_ids)
            assert replace(first.state, ticket_ids=()) == replace(in_order.state, ticket_ids=())
        else:
            assert first.state == in_order.state
        assert Counter(first.outputs) == Counter(in_order.outputs)
        assert set(first.stuck) == set(in_order.stuck)
    elif case.kind == "made_then_failed":
        # Either the booking was seen made first (everything refunded, as in causal
        # order) or the failure was (nothing refunded; confirmations seen before it kept).
        assert first.state.failed and first.state.is_finalized
        if first.state.booking_made_at is not None:
            assert first.state == in_order.state
            assert Counter(first.outputs) == Counter(in_order.outputs)
        else:
            assert refunded(first) == [] and of_type(first, BookFlight) == []
    else:  # confirmed_then_failed: finalized failed, never booked, never refunded
        assert first.state.failed and first.state.is_finalized
        assert first.state.booking_made_at is None and refunded(first) == []
        assert set(first.state.ticket_ids) <= set(in_order.state.ticket_ids)


def test_stories_without_booking_made_end_as_specified_in_causal_order() -> None:
    story = BundleStory(seed="prop-causal", tickets=2)

    failed = replay(history(story, "confirmed_then_failed", (0, 1)))
    waiting = replay(history(story, "confirmed_then_flight_failed", (1,)))
    made = replay(history(story, "made_then_failed", ()))

    assert failed.state is not None and failed.state.is_finalized and refunded(failed) == []
    assert failed.state.ticket_ids == tuple(sorted(story.ticket_ids))
    assert waiting.state is not None and not waiting.state.is_finalized
    assert waiting.stuck == [story.flight_failed()] and refunded(waiting) == []
    assert made.state is not None and refunded(made) == sorted(story.ticket_ids)
