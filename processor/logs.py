"""Logging: the CLI's set-up (text or JSON lines) and librdkafka's log through Python logging.

Without a `logger` in its config, every confluent-kafka client has librdkafka write raw
`%3|...|FAIL|...` lines to stderr, one per reconnect attempt (every 50 ms to a closed port).
`client_logging()` gives a client the `processor.kafka` logger instead. librdkafka's syslog
levels arrive mapped by confluent-kafka (0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO,
7 DEBUG, the last only with `-X debug=...`), and a filter on that logger

- turns a broker connection failure (facility FAIL) into one line, "cannot reach Kafka at
  HOST:PORT (connection refused); retrying", at WARNING;
- lets the same line through at most once per `RATE_LIMIT_S` (per broker and reason);
  the record's `suppressed` attribute counts the repeats it stands for.

librdkafka queues its log lines; a client hands them over only inside its own calls:
`Producer.poll()`/`flush()`, `Consumer.poll()`/`consume()`/`close()`, and for an
`AdminClient` only `poll()`, which nothing else calls (its results come on a background
thread): a long-lived AdminClient must be polled now and then, or its lines pile up.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

KAFKA_LOGGER = "processor.kafka"
RATE_LIMIT_S = 5.0
LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    exception's traceback text when there is one, and the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(
    level: str = "INFO", log_format: LogFormat = "text", stream: TextIO | None = None
) -> None:
    """Root logging for the CLI. Like `logging.basicConfig`, it does nothing when the root
    logger has handlers already (an embedding application's, or pytest's)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


# --- librdkafka -----------------------------------------------------------------------

# librdkafka's line: "[thrd:NAME]: BROKER: TEXT", BROKER like 127.0.0.1:9092/bootstrap,
# broker:9092/1 or sasl_ssl://broker:9093/1; TEXT may end in "(after 0ms in state CONNECT,
# 4 identical error(s) suppressed)".
_THREAD = re.compile(r"^\[thrd:.*?\]: ")  # the name may hold "]" itself: [thrd:[::1]:9092/1]
_BROKER = re.compile(r"^(?:[a-z_]+://)?(?P<address>[^/\s]+)/(?:\d+|bootstrap): ")
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)$")
_CONNECT = re.compile(r"^Connect to \S+ failed: ")
_REASONS = [  # (pattern searched in librdkafka's text, what the user is told); first wins
    (re.compile(r"^Connection refused"), "connection refused"),
    (re.compile(r"^Failed to resolve '[^']*': (.*)"), "cannot resolve host: {}"),
    (re.compile(r"timed out"), "connection timed out"),
    (re.compile(r"Network is unreachable|No route to host"), "network unreachable"),
    (re.compile(r"^Disconnected$"), "connection lost"),
]


def connection_failure(text: str) -> tuple[str, str] | None:
    """(broker address, reason) of a librdkafka FAIL line's text, or None if it names no
    broker. Reasons librdkafka words in many ways get one short wording; others (TLS,
    SASL, wrong protocol) keep librdkafka's text, which says what to fix."""
    text = _THREAD.sub("", text, count=1)
    broker = _BROKER.match(text)
    if broker is None:
        return None
    detail = _CONNECT.sub("", _AFTER.sub("", text[broker.end() :]))
    for pattern, wording in _REASONS:
        match = pattern.search(detail)
        if match:
            return broker["address"], wording.format(*(s.lower() for s in match.groups()))
    return broker["address"], uncapitalize(detail)


def uncapitalize(text: str) -> str:
    """'Connection refused' -> 'connection refused', but 'SSL handshake' stays."""
    return text[0].lower() + text[1:] if text[:2].istitle() else text


class RateLimiter:
    """Lets a key through at most once per `interval_s`; counts what it held back."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}
        self._lock = threading.Lock()  # clients may be polled from several threads

    def allow(self, key: object) -> int | None:
        """None: hold this one back. Else: how many were held back since the last one."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if len(self._last) > 1000:  # distinct keys are few; forget the stale ones
                stale = [k for k, t in self._last.items() if now - t >= self.interval_s]
                for k in stale:
                    del self._last[k]
                    self._held.pop(k, None)
            self._last[key] = now
            return self._held.pop(key, 0)


class KafkaLogTranslator(logging.Filter):
    """Rewrites the records confluent-kafka logs for librdkafka, which it emits as
    `logger.log(level, "%s [%s] %s", facility, client_name, text)`.

    Every line becomes "[client] FACILITY: text"; connection failures become the "cannot
    reach" line above. Lines at WARNING or above repeat at most once per interval per
    (broker, reason), or per text for other lines. `failures` keeps the last reason seen
    per broker address (rate-limited or not) with its time, for the start-up check.
    """

    def __init__(
        self, interval_s: float = RATE_LIMIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._clock = clock
        self._limiter = RateLimiter(interval_s, clock)
        self.failures: dict[str, tuple[str, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s"):
            return True  # not librdkafka's
        facility, client, text = (str(a) for a in args)
        text = _THREAD.sub("", text, count=1)
        failure = connection_failure(text) if facility == "FAIL" else None
        record.kafka_client = client
        record.kafka_facility = facility
        if failure is not None and record.levelno >= logging.WARNING:
            address, reason = failure
            self.failures[address] = (reason, self._clock())
            record.msg, record.args = "cannot reach Kafka at %s (%s); retrying", failure
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.kafka_broker = address
            key: object = failure
        else:
            record.msg, record.args = "[%s] %s: %s", (client, facility, text)
            key = (facility, text)
        if record.levelno < logging.WARNING:
            return True
        held = self._limiter.allow(key)
        if held is None:
            return False
        record.suppressed = held
        return True

    def failures_since(self, since: float) -> dict[str, str]:
        """Broker address -> reason of the connection failures seen at or after `since`
        (on the translator's clock, `time.monotonic` by default)."""
        return {a: reason for a, (reason, at) in self.failures.items() if at >= since}


_translator = KafkaLogTranslator()
_setup_lock = threading.Lock()


def kafka_logger() -> logging.Logger:
    """The logger to give every confluent-kafka client (`{"logger": kafka_logger()}`),
    with the translation and rate limiting installed, shared by all clients so that two
    clients failing to reach the same broker still make one line."""
    logger = logging.getLogger(KAFKA_LOGGER)
    with _setup_lock:
        if _translator not in logger.filters:
            logger.addFilter(_translator)
    return logger


def client_logging() -> dict[str, Any]:
    """Config fragment for every Producer, Consumer and AdminClient the project creates:
    `Producer({**config, **client_logging()})`."""
    return {"logger": kafka_logger()}


def translator() -> KafkaLogTranslator:
    """The filter `kafka_logger()` installs (its `failures` serve the start-up check)."""
    return _translator
