"""The broker the tests use: KAFKA_BOOTSTRAP_SERVERS, a Docker container, or the local broker."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from processor import localkafka

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

# Image for the Docker path; a 7.x cp-kafka matches testcontainers' scripts.
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.9.0"


@dataclass(frozen=True)
class BrokerChoice:
    bootstrap: str
    stop: Callable[[], None]


def _docker_available(timeout: float = 5.0) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _start_container() -> tuple[str, Callable[[], None]]:
    # Imported lazily: testcontainers pulls in the docker SDK, useless without an engine.
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14 only has the old module path
        from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(CONTAINER_IMAGE).with_kraft()
    # Same single-broker settings as the local broker; cp-kafka defaults assume three brokers.
    for key, value in {
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_NUM_PARTITIONS": "1",
    }.items():
        container.with_env(key, value)
    container.start(timeout=120)
    return container.get_bootstrap_server(), container.stop


def choose_broker() -> BrokerChoice:
    """Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set (nothing is started); a testcontainers Kafka if a
    Docker engine answers; else the local broker, which ``stop`` stops only if this call started it.
    """
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        return BrokerChoice(configured, lambda: None)
    if _docker_available():
        return BrokerChoice(*_start_container())
    address, started = localkafka._up(localkafka.START_TIMEOUT_S)
    if not started:
        return BrokerChoice(address, lambda: None)

    def stop() -> None:
        localkafka.down()

    return BrokerChoice(address, stop)
