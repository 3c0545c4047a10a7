"""processor.logs: the JSON lines, and librdkafka's log translated and rate-limited."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from processor.logs import (
    KAFKA_LOGGER,
    JsonFormatter,
    KafkaLogTranslator,
    RateLimiter,
    client_logging,
    connection_failure,
)

# As librdkafka 2.16 words them (the first two seen against 127.0.0.1:1 and an unknown host).
REFUSED = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
    "Connection refused (after 0ms in state CONNECT)"
)
UNRESOLVED = (
    "[thrd:nosuchhost.invalid:9092/bootstrap]: nosuchhost.invalid:9092/bootstrap: Failed to "
    "resolve 'nosuchhost.invalid:9092': Name or service not known (after 1ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


# ------------------------------------------------------------------------- JSON lines


def _format(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one object per line, tracebacks included
    return json.loads(line)


def test_json_line_has_time_level_logger_and_the_formatted_message() -> None:
    record = logging.makeLogRecord(
        {
            "name": "processor.x",
            "levelno": 30,
            "levelname": "WARNING",
            "msg": "%d of %s",
            "args": (3, "them"),
            "created": 1795500000.25,
        }
    )
    entry = _format(record)
    assert entry == {
        "time": "2026-11-24T06:00:00.250+00:00",
        "level": "WARNING",
        "logger": "processor.x",
        "message": "3 of them",
    }
    assert datetime.fromisoformat(str(entry["time"])).timestamp() == 1795500000.25


def test_json_line_carries_the_exception_text_and_extra_fields() -> None:
    logger = logging.getLogger(f"test.json.{uuid.uuid4().hex}")
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed on %s", "purpose", extra={"partition": 3, "path": object()})
    entry = _format(records.records[0])
    assert entry["level"] == "ERROR"
    assert entry["message"] == "failed on purpose"
    assert str(entry["exception"]).startswith("Traceback (most recent call last)")
    assert str(entry["exception"]).endswith("ValueError: boom")
    assert entry["partition"] == 3
    assert str(entry["path"]).startswith("<object object")  # not JSON: its str()


# ------------------------------------------------------------ librdkafka's lines parsed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (REFUSED, ("127.0.0.1:1", "connection refused")),
        (UNRESOLVED, ("nosuchhost.invalid:9092", "cannot resolve host: name or service not known")),
        (
            "[thrd:sasl_ssl://b-1.example:9096/1]: sasl_ssl://b-1.example:9096/1: Connection "
            "setup timed out in state CONNECT (after 30029ms in state CONNECT)",
            ("b-1.example:9096", "connection timed out"),
        ),
        (
            "[thrd:broker:9092/2]: broker:9092/2: Disconnected (after 5123ms in state UP, "
            "3 identical error(s) suppressed)",
            ("broker:9092", "connection lost"),
        ),
        (
            "[thrd:[::1]:9092/bootstrap]: [::1]:9092/bootstrap: Connect to ipv6#[::1]:9092 "
            "failed: Network is unreachable (after 0ms in state CONNECT)",
            ("[::1]:9092", "network unreachable"),
        ),
        # What to fix is in librdkafka's own words: kept.
        (
            "[thrd:ssl://broker:9093/bootstrap]: ssl://broker:9093/bootstrap: SSL handshake "
            "failed: certificate verify failed (after 12ms in state SSL_HANDSHAKE)",
            ("broker:9093", "SSL handshake failed: certificate verify failed"),
        ),
        ("[thrd:main]: something without a broker", None),
    ],
)
def test_connection_failure_names_broker_and_reason(
    text: str, expected: tuple[str, str] | None
) -> None:
    assert connection_failure(text) == expected


# ------------------------------------------------------ translation and rate limiting


@pytest.fixture
def translated() -> Iterator[tuple[logging.Logger, Records, Clock, KafkaLogTranslator]]:
    """A logger set up as kafka_logger() is, with its own translator on a fake clock."""
    clock = Clock()
    translator = KafkaLogTranslator(interval_s=5.0, clock=clock)
    logger = logging.getLogger(f"test.kafka.{uuid.uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addFilter(translator)
    records = Records()
    logger.addHandler(records)
    yield logger, records, clock, translator
    logger.removeHandler(records)


def librdkafka(logger: logging.Logger, level: int, facility: str, text: str) -> None:
    """What confluent-kafka's log callback calls."""
    logger.log(level, "%s [%s] %s", facility, "rdkafka#producer-1", text)


def test_a_connection_failure_becomes_one_clear_warning(translated) -> None:
    logger, records, _, _ = translated
    librdkafka(logger, logging.ERROR, "FAIL", REFUSED)
    [record] = records.records
    assert record.getMessage() == "cannot reach Kafka at 127.0.0.1:1 (connection refused); retrying"
    assert record.levelname == "WARNING"
    assert (record.kafka_broker, record.kafka_client, record.kafka_facility) == (
        "127.0.0.1:1",
        "rdkafka#producer-1",
        "FAIL",
    )


def test_repeats_are_let_through_once_per_interval_per_broker_and_reason(translated) -> None:
    logger, records, clock, _ = translated
    first = clock.now
    for i in range(20):  # librdkafka: every 50 ms
        clock.now = first + i * 0.05
        librdkafka(logger, logging.ERROR, "FAIL", REFUSED)
    assert len(records.records) == 1
    librdkafka(logger, logging.ERROR, "FAIL", UNRESOLVED)  # another broker: its own line
    assert len(records.records) == 2
    clock.now = first + 5.0
    librdkafka(logger, logging.ERROR, "FAIL", REFUSED)
    assert records.messages[-1].startswith("cannot reach Kafka at 127.0.0.1:1")
    assert records.records[-1].suppressed == 19
    assert len(records.records) == 3


def test_other_lines_keep_their_level_and_lose_the_thread_prefix(translated) -> None:
    logger, records, _, _ = translated
    librdkafka(logger, logging.INFO, "CONFWARN", "[thrd:app]: Configuration property x is ok")
    librdkafka(logger, logging.DEBUG, "BROKER", "[thrd:app]: detail")
    for _ in range(3):  # warnings repeat once per interval too; INFO and DEBUG are not held
        librdkafka(logger, logging.WARNING, "TXNERR", "[thrd:main]: Current transaction failed")
        librdkafka(logger, logging.INFO, "CONFWARN", "[thrd:app]: Configuration property x is ok")
    assert [(r.levelname, r.getMessage()) for r in records.records] == [
        ("INFO", "[rdkafka#producer-1] CONFWARN: Configuration property x is ok"),
        ("DEBUG", "[rdkafka#producer-1] BROKER: detail"),
        ("WARNING", "[rdkafka#producer-1] TXNERR: Current transaction failed"),
        *[("INFO", "[rdkafka#producer-1] CONFWARN: Configuration property x is ok")] * 3,
    ]


def test_failures_are_remembered_even_when_held_back(translated) -> None:
    logger, _, clock, translator = translated
    librdkafka(logger, logging.ERROR, "FAIL", REFUSED)
    started = clock.now = clock.now + 1
    assert translator.failures_since(started) == {}
    librdkafka(logger, logging.ERROR, "FAIL", REFUSED)  # held back by the rate limit
    assert translator.failures_since(started) == {"127.0.0.1:1": "connection refused"}


def test_records_not_from_librdkafka_pass_untouched(translated) -> None:
    logger, records, _, _ = translated
    logger.warning("%s [%s]", "a", "b")
    logger.warning("plain")
    assert records.messages == ["a [b]", "plain"]


def test_rate_limiter_counts_what_it_held_back() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, clock)
    assert limiter.allow("k") == 0
    assert limiter.allow("k") is None
    assert limiter.allow("other") == 0
    clock.now += 1.9
    assert limiter.allow("k") is None
    clock.now += 0.1
    assert limiter.allow("k") == 2


# ---------------------------------------------------- real clients, real librdkafka


def _closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _producer(config: dict[str, object]) -> Callable[[float], object]:
    return Producer(config).poll


def _consumer(config: dict[str, object]) -> Callable[[float], object]:
    consumer = Consumer({**config, "group.id": f"test-logs-{uuid.uuid4().hex}"})
    consumer.subscribe(["test-logs"])  # so that it connects
    return consumer.poll


def _admin(config: dict[str, object]) -> Callable[[float], object]:
    admin = AdminClient(config)
    admin.describe_cluster(request_timeout=5)  # so that it connects; never answered here

    def serve(timeout: float) -> object:
        time.sleep(timeout)
        return admin.poll(0)  # the only call that hands over an AdminClient's log lines

    return serve


@pytest.mark.parametrize(
    "make", [_producer, _consumer, _admin], ids=["producer", "consumer", "admin"]
)
def test_librdkafka_logs_through_python_logging_not_stderr(
    make: Callable[[dict[str, object]], Callable[[float], object]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    port = _closed_port()
    records = Records()
    logging.getLogger(KAFKA_LOGGER).addHandler(records)
    try:
        poll = make({"bootstrap.servers": f"127.0.0.1:{port}", **client_logging()})
        deadline = time.monotonic() + 10
        while not records.records and time.monotonic() < deadline:
            poll(0.1)
    finally:
        logging.getLogger(KAFKA_LOGGER).removeHandler(records)
    assert f"cannot reach Kafka at 127.0.0.1:{port} (connection refused); retrying" in (
        records.messages
    )
    err = capfd.readouterr().err
    assert "|FAIL|" not in err and "Connection refused" not in err, err
