"""Whatever the order and duplication of one bundle's events, the saga ends the same way."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from processor.domain.messages import (
    BookFlight,
    BookShowTickets,
    Event,
    Message,
    RefundTicket,
    VipBundle,
    VipBundleFinalizedV1,
)
from processor.domain.saga import Apply, Ignore, NotReady, decide
from tests.factories import OUTCOMES, BundleStory


def replay(events: list[Event]) -> tuple[VipBundle | None, list[Message]]:
    """Feeds events in order; NotReady ones wait and are retried after the others,
    until a full pass changes nothing (the runtime's retry, without the clock)."""
    state: VipBundle | None = None
    outputs: list[Message] = []
    pending = list(events)
    while pending:
        waiting: list[Event] = []
        for event in pending:
            decision = decide(state, event)
            if isinstance(decision, Apply):
                state = decision.state
                outputs.extend(o.message for o in decision.outputs)
            elif isinstance(decision, NotReady):
                waiting.append(event)
            else:
                assert isinstance(decision, Ignore)
        if len(waiting) == len(pending):
            raise AssertionError(f"stuck: {[type(e).__name__ for e in waiting]}")
        pending = waiting
    return state, outputs


@st.composite
def delivered(draw: st.DrawFn) -> tuple[BundleStory, str, list[Event]]:
    story = BundleStory(seed=f"prop-{draw(st.integers(0, 3))}", tickets=draw(st.integers(1, 4)))
    outcome = draw(st.sampled_from(OUTCOMES))
    events = story.history(outcome)
    redelivered = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    return story, outcome, draw(st.permutations(events + redelivered))


@given(delivered())
def test_any_order_and_duplication_ends_finalized_once_with_the_right_refunds(
    case: tuple[BundleStory, str, list[Event]],
) -> None:
    story, outcome, events = case

    state, outputs = replay(events)

    assert state is not None and state.is_finalized
    finals = [m for m in outputs if isinstance(m, VipBundleFinalizedV1)]
    assert [f.success for f in finals] == [outcome == "flight_booked"]
    assert state.failed is (outcome != "flight_booked")
    refunds = [m.ticket_id for m in outputs if isinstance(m, RefundTicket)]
    expected_refunds = list(story.ticket_ids) if outcome == "flight_failed" else []
    assert sorted(refunds) == sorted(expected_refunds)
    kinds = Counter(type(m) for m in outputs)
    assert kinds[BookShowTickets] == 1
    assert kinds[BookFlight] == (0 if outcome == "booking_failed" else 1)


@given(delivered())
def test_outputs_do_not_depend_on_order_or_run(case: tuple[BundleStory, str, list[Event]]) -> None:
    story, outcome, events = case

    first = replay(events)
    second = replay(list(events))
    in_order = replay(story.history(outcome))

    assert first == second
    assert Counter(first[1]) == Counter(in_order[1])
    assert first[0] is not None and in_order[0] is not None
    assert first[0].ticket_ids == tuple(sorted(first[0].ticket_ids))
