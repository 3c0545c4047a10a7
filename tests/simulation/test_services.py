"""The simulated services and the checker, without a broker."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.messages import (
    BookFlight,
    BookingFailedV1,
    BookingMadeV1,
    Event,
    FlightBookingFailedV1,
    Message,
    TicketBookingConfirmedV1,
    VipBundle,
    VipBundleFinalizedV1,
    VipBundleInitializedV1,
    bundle_id_of,
)
from processor.domain.saga import Apply, NotReady, decide
from processor.simulation.check import Observed, complete, violations
from processor.simulation.services import Knobs, Scheduled, Services


def events(scheduled: list[Scheduled]) -> list[Event]:
    return [s.event for s in sorted(scheduled)]


def only_init(services: Services) -> VipBundleInitializedV1:
    [event] = events(services.new_bundle(0.0))
    assert isinstance(event, VipBundleInitializedV1)
    return event


def book_show(services: Services, init: VipBundleInitializedV1) -> list[Event]:
    decision = decide(None, init)
    assert isinstance(decision, Apply)
    [command] = [o.message for o in decision.outputs]
    return events(services.on_command(command, 1.0))


def test_a_failing_show_booking_answers_booking_failed_once() -> None:
    services = Services(Knobs(booking_failure_rate=1, ordinary_booking_rate=0, duplicate_rate=0))
    init = only_init(services)
    assert [type(e) for e in book_show(services, init)] == [BookingFailedV1]
    assert book_show(services, init) == []  # a duplicate command is de-duplicated


def test_a_made_booking_confirms_every_ticket() -> None:
    services = Services(Knobs(booking_failure_rate=0, duplicate_rate=0, ordinary_booking_rate=0))
    init = only_init(services)

    answer = book_show(services, init)

    assert [type(e) for e in answer].count(BookingMadeV1) == 1
    confirmed = {e.ticket_id for e in answer if isinstance(e, TicketBookingConfirmedV1)}
    assert len(confirmed) == init.number_of_tickets
    assert set(services.plans[init.vip_bundle_id].ticket_ids) == confirmed


def test_late_confirmations_arrive_after_the_flight_failure() -> None:
    services = Services(
        Knobs(
            booking_failure_rate=0,
            flight_failure_rate=1,
            late_confirmation_rate=1,
            duplicate_rate=0,
            ordinary_booking_rate=0,
            max_tickets=3,
        )
    )
    init = only_init(services)
    assert not [e for e in book_show(services, init) if isinstance(e, TicketBookingConfirmedV1)]
    command = BookFlight(
        init.header,
        init.customer_email,
        init.inbound_flight_id,
        init.passengers,
        init.vip_bundle_id,
        init.header.idempotency_key,
    )

    answer = sorted(services.on_command(command, 2.0))

    assert isinstance(answer[0].event, FlightBookingFailedV1)
    late = [s for s in answer if isinstance(s.event, TicketBookingConfirmedV1)]
    assert len(late) == init.number_of_tickets
    assert all(s.due >= answer[0].due for s in late)
    assert services.on_command(command, 3.0) == []


def test_checker_names_every_kind_of_violation() -> None:
    services = Services(
        Knobs(
            booking_failure_rate=0,
            flight_failure_rate=1,
            duplicate_rate=0,
            ordinary_booking_rate=0,
            late_confirmation_rate=0,
        )
    )
    init = only_init(services)
    book_show(services, init)
    plan = services.plans[init.vip_bundle_id]
    observed = Observed()
    assert not complete(services.plans, observed)
    bundle = init.vip_bundle_id
    assert violations(services.plans, observed) == [
        f"bundle {bundle}: finalized 0 times",
        f"bundle {bundle}: refunded [], expected {sorted(plan.ticket_ids)}",
        f"bundle {bundle}: BookShowTickets sent 0 times, expected 1",
        f"bundle {bundle}: BookFlight sent 0 times, expected 1",
    ]


def test_checker_counts_every_output_by_idempotency_key() -> None:
    services = Services(Knobs(booking_failure_rate=0, flight_failure_rate=0, duplicate_rate=0))
    init = only_init(services)
    made = next(e for e in book_show(services, init) if isinstance(e, BookingMadeV1))
    first, second = decide(None, init), None
    assert isinstance(first, Apply)
    second = decide(first.state, made)
    assert isinstance(second, Apply)
    [book_flight] = [o.message for o in second.outputs]
    final = VipBundleFinalizedV1(init.header, init.vip_bundle_id, True)
    observed = Observed()
    # A command and an event twice, as a broken replay would publish them.
    for message in (*(o.message for o in first.outputs), book_flight, book_flight, final, final):
        observed.record(message, init.vip_bundle_id)

    found = violations(services.plans, observed)

    bundle = init.vip_bundle_id
    assert isinstance(book_flight, BookFlight)
    assert found == [
        f"bundle {bundle}: finalized 2 times",
        f"bundle {bundle}: BookFlight sent 2 times, expected 1",
        f"BookFlight with idempotency key {book_flight.header.idempotency_key} published 2 times",
        f"VipBundleFinalized_v1 with idempotency key {init.header.idempotency_key} "
        "published 2 times",
    ]


def test_outputs_for_ordinary_bookings_are_violations_and_other_runs_bundles_are_not() -> None:
    services = Services(Knobs(ordinary_booking_rate=1, duplicate_rate=0))
    init = [
        s.event for s in services.new_bundle(0.0) if isinstance(s.event, VipBundleInitializedV1)
    ]
    [reference] = services.ordinary_references
    observed = Observed()
    observed.record(FlightBookingFailedV1(init[0].header, "f", "x", reference), reference)
    observed.record(init[0], "some-other-runs-bundle")

    found = violations(services.plans, observed, services.ordinary_references)

    assert f"output for ordinary booking reference {reference}" in found
    assert not any("some-other-runs-bundle" in v for v in found)


def run_world(seed: int, bundles: int, knobs: Knobs) -> tuple[Services, Observed]:
    """The services against the pure saga as the processor: no Kafka, same rules.
    Not-ready events wait for the next state change of their bundle."""
    services = Services(knobs, seed)
    queue: list[Scheduled] = []
    for n in range(bundles):
        for item in services.new_bundle(float(n)):
            heapq.heappush(queue, item)
    states: dict[str, VipBundle] = {}
    bundle_of_booking: dict[str, str] = {}
    waiting: dict[str, list[Event]] = {}
    observed = Observed()

    def process(event: Event, now: float) -> None:
        if isinstance(event, VipBundleInitializedV1):
            bundle_of_booking[event.booking_id] = event.vip_bundle_id
        bundle = bundle_id_of(event) or bundle_of_booking.get(getattr(event, "booking_id", ""))
        if bundle is None or (bundle not in services.plans):
            return  # not a VIP bundle's: the route stage skips it
        decision = decide(states.get(bundle), event)
        if isinstance(decision, NotReady):
            waiting.setdefault(bundle, []).append(event)
            return
        if not isinstance(decision, Apply):
            return
        states[bundle] = decision.state
        for out in decision.outputs:
            message: Message = out.message
            observed.record(message, bundle)
            for item in services.on_command(message, now):
                heapq.heappush(queue, item)
        for retry in waiting.pop(bundle, []):
            process(retry, now)

    while queue:
        item = heapq.heappop(queue)
        process(item.event, item.due)
    return services, observed


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_the_saga_passes_the_simulators_checks_in_any_world(seed: int) -> None:
    knobs = Knobs(duplicate_rate=0.3, late_confirmation_rate=0.5, ordinary_booking_rate=0.5)
    services, observed = run_world(seed, bundles=12, knobs=knobs)
    assert complete(services.plans, observed)
    assert violations(services.plans, observed) == []


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_flight_outcomes_follow_the_failure_rate(rate: float) -> None:
    services, observed = run_world(3, 10, Knobs(booking_failure_rate=0, flight_failure_rate=rate))
    assert {f for finals in observed.finals.values() for f in finals} == {rate == 0.0}
    assert len(services.plans) == 10
