"""The broker the tests use: ``KAFKA_BOOTSTRAP_SERVERS``, an ``apache/kafka`` container, or the
project's local broker, in that order.

The container runs the official ``apache/kafka`` image of the same Kafka version as the local
broker and docker-compose, through testcontainers' generic container (its ``KafkaContainer``
only knows Confluent's images and scripts), configured like the local broker.

A Docker engine that answers is not enough: it may be unable to pull (offline, a proxy, a
registry mirror missing). Testcontainers also pulls a second image before the first container,
its reaper ``testcontainers/ryuk`` (``TESTCONTAINERS_RYUK_DISABLED=true`` goes without it). Both
images are checked first; when either cannot be had, or the container does not get ready, the
local broker is used, and one log line says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from processor import localkafka
from processor.localkafka.jvm import new_cluster_id, wait_ready

if TYPE_CHECKING:
    from testcontainers.core.docker_client import DockerClient

__all__ = ["BOOTSTRAP_ENV", "BrokerChoice", "ContainerUnavailable", "choose_broker"]

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
RYUK_DISABLED_ENV = "TESTCONTAINERS_RYUK_DISABLED"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

PING_TIMEOUT_S = 5
START_TIMEOUT_S = 120.0
BROKER_PORT = 9092
CONTROLLER_PORT = 9093
DATA_DIR = "/var/lib/kafka/data"
# The container waits for its advertised listener, known only once Docker has mapped the port.
ADVERTISED_FILE = "/tmp/advertised.listeners"

log = logging.getLogger(__name__)


class ContainerUnavailable(Exception):
    """A Docker engine answered, but the Kafka container could not be had; says why."""


@dataclass(frozen=True)
class BrokerChoice:
    bootstrap: str
    source: str  # BOOTSTRAP_ENV, "container" or "local"
    reason: str  # why this broker: the one line logged
    stop: Callable[[], None]

    @property
    def summary(self) -> str:
        return f"{self.source} broker at {self.bootstrap}: {self.reason}"


def kafka_image() -> str:
    return f"apache/kafka:{localkafka.kafka_version()}"


def container_env() -> dict[str, str]:
    """The local broker's single-node settings as the apache/kafka image's KAFKA_* variables
    (it turns KAFKA_FOO_BAR into foo.bar), listening on every interface of the container."""
    settings = localkafka.kraft_settings(
        node_id=1,
        voters={1: CONTROLLER_PORT},
        broker_port=BROKER_PORT,
        data_dir=PurePosixPath(DATA_DIR),
        replicas=1,
        min_isr=1,
        internal_partitions=1,
    )
    settings.update(
        {
            "controller.quorum.voters": f"1@localhost:{CONTROLLER_PORT}",
            "listeners": f"PLAINTEXT://:{BROKER_PORT},CONTROLLER://:{CONTROLLER_PORT}",
        }
    )
    del settings["advertised.listeners"]  # from ADVERTISED_FILE, once the port is mapped
    env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in settings.items()}
    env["CLUSTER_ID"] = new_cluster_id()
    return env


# ------------------------------------------------------------------------- docker


def _engine() -> tuple[DockerClient | None, str]:
    """(testcontainers' Docker client, where it is) if an engine answers; else (None, why not)."""
    try:
        import docker
        from testcontainers.core.docker_client import DockerClient, get_docker_host
    except ImportError:
        return None, "testcontainers is not installed"
    host = get_docker_host()
    where = host or DEFAULT_DOCKER_HOST
    environment = {**os.environ, "DOCKER_HOST": host} if host else None
    try:
        # A short timeout of its own: a socket that does not answer must not stall the suite.
        docker.from_env(timeout=PING_TIMEOUT_S, environment=environment).ping()
        return DockerClient(), where
    except Exception as exc:  # docker-py raises DockerException, requests' and OS errors
        return None, f"no Docker engine answers at {where} ({type(exc).__name__})"


def _ensure_images(client: DockerClient) -> None:
    """Pull what is missing of the Kafka image and (unless disabled) testcontainers' reaper."""
    import docker.errors
    from testcontainers.core.config import testcontainers_config

    images = [kafka_image()]
    if not testcontainers_config.ryuk_disabled:
        images.insert(0, testcontainers_config.ryuk_image)
    failed: list[str] = []
    error = ""
    for image in images:
        try:
            client.client.images.get(image)
            continue
        except docker.errors.ImageNotFound:
            pass
        try:
            client.client.images.pull(image)
        except docker.errors.DockerException as exc:
            note = ""
            if image == testcontainers_config.ryuk_image:
                note = f" (testcontainers' reaper; {RYUK_DISABLED_ENV}=true skips it)"
            failed.append(image + note)
            error = getattr(exc, "explanation", None) or str(exc)
    if failed:
        raise ContainerUnavailable(f"cannot pull {' or '.join(failed)}: {error}")


def start_container(
    client: DockerClient, timeout: float = START_TIMEOUT_S
) -> tuple[str, Callable[[], None]]:
    """Start apache/kafka and wait until it commits a transaction: (bootstrap, stop).
    Raises ContainerUnavailable, whatever went wrong."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(kafka_image()).with_exposed_ports(BROKER_PORT)
    for key, value in container_env().items():
        container.with_env(key, value)
    # Start only once the advertised listener (the host's address and mapped port) is there.
    container.with_command(
        [
            "sh",
            "-c",
            f"while [ ! -s {ADVERTISED_FILE} ]; do sleep 0.1; done; "
            f'KAFKA_ADVERTISED_LISTENERS="$(cat {ADVERTISED_FILE})" exec /etc/kafka/docker/run',
        ]
    )

    def running() -> bool:
        container.reload()
        return container.status == "running"

    try:
        _ensure_images(client)
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(BROKER_PORT))
        bootstrap = f"{host}:{port}"
        container.exec(["sh", "-c", f"echo PLAINTEXT://{bootstrap} > {ADVERTISED_FILE}"])
        wait_ready(bootstrap, [], time.monotonic() + timeout, running)
    except ContainerUnavailable:
        raise
    except Exception as exc:  # any failure means: no container broker, use the local one
        logs = ""
        with contextlib.suppress(Exception):
            tail = container.get_wrapped_container().logs(tail=3).decode(errors="replace")
            logs = f"; its last log lines: {tail.strip()}" if tail.strip() else ""
        with contextlib.suppress(Exception):
            container.stop()
        raise ContainerUnavailable(f"{kafka_image()} did not start: {exc}{logs}") from exc
    return bootstrap, container.stop


# ------------------------------------------------------------------------- choice


def choose_broker() -> BrokerChoice:
    """The broker for a test session, logged in one line that says which and why.

    ``stop`` stops only what this call started (the container, or a local broker that was not
    already running).
    """
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        choice = BrokerChoice(configured, BOOTSTRAP_ENV, "set in the environment", lambda: None)
        log.info("Kafka for tests: %s", choice.summary)
        return choice

    engine, where = _engine()
    if engine is None:
        why, level = where, logging.INFO
    else:
        try:
            bootstrap, stop = start_container(engine)
        except ContainerUnavailable as exc:
            why, level = f"a Docker engine answers at {where}, but {exc}", logging.WARNING
        else:
            choice = BrokerChoice(bootstrap, "container", f"{kafka_image()} via Docker", stop)
            log.info("Kafka for tests: %s", choice.summary)
            return choice

    address, started = localkafka._up(localkafka.START_TIMEOUT_S)

    def stop_local() -> None:
        if started:
            localkafka.down()

    choice = BrokerChoice(address, "local", why, stop_local)
    log.log(level, "Kafka for tests: %s", choice.summary)
    return choice
