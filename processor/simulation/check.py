"""What the processor published, checked against what the services know."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from processor.domain.messages import (
    BookFlight,
    BookShowTickets,
    RefundTicket,
    VipBundleFinalizedV1,
)
from processor.simulation.services import Plan


@dataclass
class Observed:
    finals: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    refunds: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # (message name, idempotency key) -> records: commands and events alike
    outputs: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_bundle: Counter[tuple[str, str]] = field(default_factory=Counter)  # (bundle, name)
    bundles: Counter[str] = field(default_factory=Counter)  # records per vip_bundle_id header
    records: int = 0

    def record(self, message: object, bundle_id: str) -> None:
        """`bundle_id`: the record's vip_bundle_id header."""
        self.records += 1
        self.bundles[bundle_id] += 1
        if isinstance(message, VipBundleFinalizedV1):
            self.finals[message.vip_bundle_id].append(message.success)
        elif isinstance(message, RefundTicket):
            self.refunds[bundle_id].append(message.ticket_id)
        if isinstance(message, BookShowTickets | BookFlight | RefundTicket | VipBundleFinalizedV1):
            self.outputs[(message.schema_name, message.header.idempotency_key)] += 1
            self.per_bundle[(bundle_id, message.schema_name)] += 1


def complete(plans: Mapping[str, Plan], observed: Observed) -> bool:
    """Every bundle finalized and every expected refund seen."""
    return all(
        observed.finals.get(bundle)
        and set(observed.refunds.get(bundle, ())) >= plan.expected_refunds
        for bundle, plan in plans.items()
    )


def violations(
    plans: Mapping[str, Plan], observed: Observed, ordinary: Set[str] = frozenset()
) -> list[str]:
    """`ordinary`: ids that name no bundle (ordinary bookings' flight references).
    Outputs of other bundles are not counted against this run: on a shared
    broker they are other runs' (or a replay's)."""
    problems: list[str] = []
    for bundle, plan in plans.items():
        finals = observed.finals.get(bundle, [])
        if len(finals) != 1:
            problems.append(f"bundle {bundle}: finalized {len(finals)} times")
        elif finals[0] != plan.expect_success:
            problems.append(f"bundle {bundle}: success={finals[0]}, expected {plan.expect_success}")
        refunds = observed.refunds.get(bundle, [])
        if sorted(refunds) != sorted(plan.expected_refunds):
            problems.append(
                f"bundle {bundle}: refunded {sorted(refunds)}, "
                f"expected {sorted(plan.expected_refunds)}"
            )
        # The commands that drive the services: one show booking, one flight once booked.
        for name, expected in (("BookShowTickets", 1), ("BookFlight", int(plan.booked))):
            sent = observed.per_bundle[(bundle, name)]
            if sent != expected:
                problems.append(f"bundle {bundle}: {name} sent {sent} times, expected {expected}")
    problems += [
        f"output for ordinary booking reference {b}"
        for b in sorted(ordinary & observed.bundles.keys())
    ]
    problems += [
        f"{name} with idempotency key {key} published {count} times"
        for (name, key), count in sorted(observed.outputs.items())
        if count > 1
    ]
    return problems


def summary(plans: Mapping[str, Plan], observed: Observed) -> list[tuple[str, str, str]]:
    """(what, expected, observed) rows for the report."""
    outcomes = Counter(
        "success" if p.expect_success else "booking failed" if p.booking_fails else "flight failed"
        for p in plans.values()
    )
    seen = Counter(
        "missing" if not f else "success" if f[0] else "failed"
        for b in plans
        for f in [observed.finals.get(b, [])]
    )
    expected_refunds = sum(len(p.expected_refunds) for p in plans.values())
    foreign = sum(n for b, n in observed.bundles.items() if b not in plans)
    return [
        ("bundles", str(len(plans)), str(len(plans) - seen["missing"]) + " finalized"),
        ("successful", str(outcomes["success"]), str(seen["success"])),
        (
            "failed (booking / flight)",
            f"{outcomes['booking failed']} / {outcomes['flight failed']}",
            str(seen["failed"]),
        ),
        (
            "refunds",
            str(expected_refunds),
            str(sum(len(observed.refunds.get(b, ())) for b in plans)),
        ),
        (
            "outputs twice (by idempotency key)",
            "0",
            str(sum(1 for c in observed.outputs.values() if c > 1)),
        ),
        ("outputs of other runs' bundles", "-", str(foreign)),
    ]
