"""The manage stage: the saga as a runtime handler (decode, decide, encode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from processor.codec import Codec, CodecError
from processor.domain.messages import EVENT_TYPES, VipBundle, bundle_id_of
from processor.domain.saga import Apply, Ignore, NotReady, decide
from processor.runtime.handler import (
    BadInput,
    Handler,
    Outcome,
    OutputRecord,
    Record,
    Retry,
    Skip,
    Stage,
)
from processor.topology import BUNDLE_HEADER, Topics


class BundleSerde:
    """VipBundle states in the store and the changelog: Avro, like every message."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec

    def dumps(self, state: VipBundle) -> bytes:
        return self._codec.encode(state)

    def loads(self, raw: bytes) -> VipBundle:
        return self._codec.decode(raw, VipBundle)

    @staticmethod
    def label(raw: bytes) -> str:
        """ "finalized" or "active", read off the bytes: VipBundle's last two fields are
        the booleans is_finalized and failed, one byte each at the end of the body in
        both wire formats (tests/test_manage.py pins this to the schema)."""
        return "finalized" if raw[-2] == 1 else "active"


def saga_handler(
    codec: Codec, topics: Topics, decode: Callable[[bytes, type], Any] | None = None
) -> Handler:
    """`decode` reads the events (by default `codec.decode`; `DecodeMemo.take` hands
    over what the route stage of this process decoded)."""
    event_types = {topics.repartition(cls.schema_name): cls for cls in EVENT_TYPES}
    decode = decode or codec.decode

    def handle(record: Record, bundle: VipBundle | None) -> Outcome:
        try:
            event = decode(record.value() or b"", event_types[record.topic()])
        except CodecError as exc:
            raise BadInput(str(exc)) from exc
        raw_key = record.key() or b""
        key = raw_key.decode("utf-8", "replace")
        named = bundle_id_of(event)
        if named is not None and named != key:
            raise BadInput(f"record key {key!r} is not the event's vip_bundle_id {named!r}")
        decision = decide(bundle, event)
        match decision:
            case Apply():
                header = [(BUNDLE_HEADER, raw_key)]
                return Stage(
                    decision.state,
                    [
                        OutputRecord(
                            topics.output(out), out.key.encode(), codec.encode(out.message), header
                        )
                        for out in decision.outputs
                    ],
                )
            case Ignore():
                return Skip(decision.reason)
            case NotReady():
                return Retry(decision.reason)
        raise TypeError(f"unknown decision {decision!r}")

    return handle
