"""The pure domain: messages, state and the saga's decision function.

Imports nothing from Kafka or RocksDB; the runtime drives it.
"""

from processor.domain.messages import MESSAGE_TYPES, Event, InvalidMessage, Output, VipBundle
from processor.domain.saga import Apply, Decision, Ignore, NotReady, decide

__all__ = [
    "MESSAGE_TYPES",
    "Apply",
    "Decision",
    "Event",
    "Ignore",
    "InvalidMessage",
    "NotReady",
    "Output",
    "VipBundle",
    "decide",
]
