"""The start-up check: do the brokers answer at all?

librdkafka retries a broker it cannot reach forever, which is what a running processor
wants (a broker outage is waited out), but a command started against a wrong address would
wait forever too. So the CLI asks for metadata first and gives up after `--connect-timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from processor.logs import client_logging, translator, uncapitalize

DEFAULT_CONNECT_TIMEOUT_S = 60.0
_ATTEMPT_S = 1.0  # one metadata request's wait: its log lines are served in between


class KafkaUnreachable(RuntimeError):
    """No broker answered within the timeout; the message says where and why."""


def wait_for_kafka(
    bootstrap_servers: str,
    client_config: Mapping[str, object] | None = None,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> AdminClient:
    """An AdminClient (logging through `processor.kafka`) once a broker has answered a
    metadata request. Meanwhile librdkafka's failures are logged as "cannot reach Kafka at
    HOST:PORT (REASON); retrying" every few seconds; past `timeout_s`, KafkaUnreachable."""
    admin = AdminClient(
        {"bootstrap.servers": bootstrap_servers, **(client_config or {}), **client_logging()}
    )
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        attempt_s = min(_ATTEMPT_S, max(deadline - time.monotonic(), 0.5))
        try:
            admin.list_topics(timeout=attempt_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
        else:
            admin.poll(0)
            return admin
        admin.poll(0)  # an AdminClient hands over librdkafka's log lines only here
        if time.monotonic() >= deadline:
            raise KafkaUnreachable(_unreachable(bootstrap_servers, started, timeout_s, error))


def _unreachable(
    bootstrap_servers: str, started: float, timeout_s: float, error: KafkaError
) -> str:
    failures = translator().failures_since(started)
    if failures:
        where = ", ".join(f"{address} ({reason})" for address, reason in sorted(failures.items()))
    else:  # the brokers took the connection but did not answer (or no FAIL line came)
        where = f"{bootstrap_servers} ({uncapitalize(error.str())})"
    return f"cannot reach Kafka at {where}; gave up after {timeout_s:g}s (--connect-timeout)"
