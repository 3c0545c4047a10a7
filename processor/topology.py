"""Topic names of the process manager (design.md section 3), every one overridable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from processor.domain.messages import EVENT_TYPES, Output

DEFAULT_APPLICATION_ID = "vip-bundle-process-manager"
BUNDLE_HEADER = "vip_bundle_id"  # on every record the processor writes
EVENT_NAMES: tuple[str, ...] = tuple(cls.schema_name for cls in EVENT_TYPES)


@dataclass(frozen=True)
class Topics:
    application_id: str = DEFAULT_APPLICATION_ID
    # default topic name -> the name used instead
    overrides: Mapping[str, str] = field(default_factory=dict)

    def _named(self, default: str) -> str:
        return self.overrides.get(default, default)

    def input(self, event_name: str) -> str:
        return self._named(f"events.{event_name}")

    def repartition(self, event_name: str) -> str:
        # Kafka Streams' naming, so reset tooling and habits carry over.
        return self._named(f"{self.application_id}-{event_name}-repartition")

    @property
    def changelog(self) -> str:
        return self._named(f"{self.application_id}-vip-bundles-changelog")

    @property
    def dlq(self) -> str:
        return self._named(f"{self.application_id}-dlq")

    def output(self, output: Output) -> str:
        return self.output_named(output.kind, output.message.schema_name)

    def output_named(self, kind: str, name: str) -> str:
        return self._named(f"{kind}s.{name}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.input(name) for name in EVENT_NAMES)

    @property
    def repartitions(self) -> tuple[str, ...]:
        return tuple(self.repartition(name) for name in EVENT_NAMES)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (
            self.output_named("command", "BookShowTickets"),
            self.output_named("command", "BookFlight"),
            self.output_named("command", "RefundTicket"),
            self.output_named("event", "VipBundleFinalized_v1"),
        )
