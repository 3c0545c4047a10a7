"""The manage stage: the saga as a runtime handler (decode, decide, encode)."""

from __future__ import annotations

from collections import OrderedDict

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


class StateCache:
    """Decoded states by their bytes, newest last. The handler reads back the state
    it encoded for the bundle's previous event: keeping the pair saves the decode."""

    def __init__(self, codec: Codec, size: int = 10_000) -> None:
        self._codec = codec
        self._size = size
        self._states: OrderedDict[bytes, VipBundle] = OrderedDict()

    def decode(self, raw: bytes) -> VipBundle:
        state = self._states.get(raw)
        if state is None:
            state = self._codec.decode(raw, VipBundle)
            self._remember(raw, state)
        return state

    def encode(self, state: VipBundle) -> bytes:
        raw = self._codec.encode(state)
        self._remember(raw, state)
        return raw

    def _remember(self, raw: bytes, state: VipBundle) -> None:
        self._states[raw] = state
        self._states.move_to_end(raw)
        if len(self._states) > self._size:
            self._states.popitem(last=False)


def saga_handler(codec: Codec, topics: Topics) -> Handler:
    event_types = {topics.repartition(cls.schema_name): cls for cls in EVENT_TYPES}
    states = StateCache(codec)

    def handle(record: InputRecord, state: bytes | None) -> Outcome:
        try:
            event = codec.decode(record.value or b"", event_types[record.topic])
        except CodecError as exc:
            raise BadInput(str(exc)) from exc
        key = (record.key or b"").decode("utf-8", "replace")
        named = bundle_id_of(event)
        if named is not None and named != key:
            raise BadInput(f"record key {key!r} is not the event's vip_bundle_id {named!r}")
        bundle = None if state is None else states.decode(state)
        decision = decide(bundle, event)
        match decision:
            case Apply():
                header = [(BUNDLE_HEADER, key.encode())]
                return Stage(
                    states.encode(decision.state),
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
