"""The manage stage: the saga as a runtime handler (decode, decide, encode)."""

from __future__ import annotations

from processor.codec import Codec, CodecError
from processor.domain.messages import EVENT_TYPES, VipBundle, bundle_id_of
from processor.domain.saga import Apply, Ignore, NotReady, decide
from processor.runtime.handler import (
    BadInput,
    Handler,
    InputRecord,
    Outcome,
    OutputRecord,
    Retry,
    Skip,
    Stage,
)
from processor.topology import BUNDLE_HEADER, Topics


def saga_handler(codec: Codec, topics: Topics) -> Handler:
    event_types = {topics.repartition(cls.schema_name): cls for cls in EVENT_TYPES}

    def handle(record: InputRecord, state: bytes | None) -> Outcome:
        try:
            event = codec.decode(record.value or b"", event_types[record.topic])
        except CodecError as exc:
            raise BadInput(str(exc)) from exc
        key = (record.key or b"").decode("utf-8", "replace")
        named = bundle_id_of(event)
        if named is not None and named != key:
            raise BadInput(f"record key {key!r} is not the event's vip_bundle_id {named!r}")
        bundle = None if state is None else codec.decode(state, VipBundle)
        decision = decide(bundle, event)
        match decision:
            case Apply():
                header = [(BUNDLE_HEADER, key.encode())]
                return Stage(
                    codec.encode(decision.state),
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
