"""Dead-letter records with Kafka Streams' error headers, so tools that know
`__streams.errors.*` can read them."""

from __future__ import annotations

import traceback

from processor.runtime.handler import OutputRecord, Record


def dead_letter(topic: str, record: Record, error: BaseException) -> OutputRecord:
    """The original key, value and headers plus what went wrong and where it came from."""
    stack = "".join(traceback.format_exception(error)) if error.__traceback__ else repr(error)
    error_headers = [
        ("__streams.errors.exception", type(error).__name__),
        ("__streams.errors.message", str(error)),
        ("__streams.errors.stacktrace", stack),
        ("__streams.errors.topic", record.topic()),
        ("__streams.errors.partition", str(record.partition())),
        ("__streams.errors.offset", str(record.offset())),
    ]
    return OutputRecord(
        topic=topic,
        key=record.key(),
        value=record.value(),
        headers=[*(record.headers() or []), *((k, v.encode()) for k, v in error_headers)],
    )


class NotReadyTooLong(Exception):
    """A record stayed not ready past the configured deadline."""
