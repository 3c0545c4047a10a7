"""Which broker the tests use: KAFKA_BOOTSTRAP_SERVERS, an apache/kafka container, or the
local broker, and the fallback when a Docker engine answers but cannot pull.

The engine is tests/localkafka/docker_engine.py (what a real dockerd without a registry route
answered, served over a unix socket); the fallback broker is the real local broker.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from testcontainers.core.config import testcontainers_config

from processor import localkafka
from processor.localkafka import container
from tests.localkafka.docker_engine import NO_REGISTRY, OfflineDockerEngine

RYUK = testcontainers_config.ryuk_image
LOGGER = "processor.localkafka.container"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="vip-docker-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_configured_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(container.BOOTSTRAP_ENV, raising=False)


def _choice_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def _answers(bootstrap: str) -> bool:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return bool(metadata.brokers)


# ------------------------------------------------------------------ no broker needed


def test_kafka_bootstrap_servers_wins_and_nothing_is_started(
    monkeypatch: pytest.MonkeyPatch, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(container.BOOTSTRAP_ENV, "broker.example:9092")
    caplog.set_level(logging.INFO, LOGGER)
    with OfflineDockerEngine(socket_dir / "docker.sock") as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
        choice = container.choose_broker()
        choice.stop()  # stops nothing: it started nothing
        assert engine.requests == []
    assert (choice.bootstrap, choice.source) == ("broker.example:9092", "KAFKA_BOOTSTRAP_SERVERS")
    assert [r.getMessage() for r in _choice_records(caplog)] == [
        f"Kafka for tests: {choice.summary}"
    ]


@pytest.mark.parametrize("started", [True, False])
def test_the_local_broker_is_stopped_only_if_the_choice_started_it(
    monkeypatch: pytest.MonkeyPatch, started: bool, no_configured_broker: None
) -> None:
    monkeypatch.setattr(container, "_engine", lambda: (None, "no Docker engine answers"))
    monkeypatch.setattr(localkafka, "_up", lambda _timeout: ("127.0.0.1:9092", started))
    downs: list[bool] = []
    monkeypatch.setattr(localkafka, "down", lambda: downs.append(True) or True)
    bootstrap, stop = localkafka.ensure_bootstrap()
    assert bootstrap == "127.0.0.1:9092"
    stop()
    assert downs == ([True] if started else [])


def test_the_container_is_configured_like_the_local_broker() -> None:
    env = container.container_env()
    local = dict(
        line.split("=", 1)
        for line in localkafka.render_server_properties(
            broker_port=9092, data_dir=Path(container.DATA_DIR)
        ).splitlines()
        if not line.startswith("#")
    )
    as_env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in local.items()}
    # Inside the container: every interface, and no advertised address until the port is mapped.
    assert env.pop("KAFKA_LISTENERS") == "PLAINTEXT://:9092,CONTROLLER://:9093"
    assert env.pop("KAFKA_CONTROLLER_QUORUM_VOTERS") == "1@localhost:9093"
    assert len(env.pop("CLUSTER_ID")) == 22  # a base64 Kafka Uuid
    for key in ("KAFKA_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_ADVERTISED_LISTENERS"):
        del as_env[key]
    assert env == as_env
    assert container.kafka_image() == f"apache/kafka:{localkafka.kafka_version()}"


# ---------------------------------------------------------- the real local broker needed


@pytest.mark.integration
def test_an_engine_that_cannot_pull_falls_back_to_the_local_broker_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    socket_dir: Path,
    caplog: pytest.LogCaptureFixture,
    no_configured_broker: None,
) -> None:
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", False)
    caplog.set_level(logging.INFO, LOGGER)
    with OfflineDockerEngine(socket_dir / "docker.sock") as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
        choice = container.choose_broker()
        try:
            assert choice.source == "local"
            assert choice.bootstrap == localkafka.bootstrap()
            assert _answers(choice.bootstrap)
        finally:
            choice.stop()
        # Both images were tried, the reaper first, as testcontainers would; no container made.
        assert engine.pulled() == [RYUK, container.kafka_image()]
        assert not [path for _, path in engine.requests if "/containers/" in path]

    assert choice.reason == (
        f"a Docker engine answers at {engine.docker_host}, but cannot pull {RYUK} "
        f"(testcontainers' reaper; TESTCONTAINERS_RYUK_DISABLED=true skips it) "
        f"or {container.kafka_image()}: {NO_REGISTRY}"
    )
    records = _choice_records(caplog)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, f"Kafka for tests: local broker at {choice.bootstrap}: {choice.reason}")
    ]


@pytest.mark.integration
def test_without_the_reaper_only_the_kafka_image_is_pulled(
    monkeypatch: pytest.MonkeyPatch, socket_dir: Path, no_configured_broker: None
) -> None:
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    with OfflineDockerEngine(socket_dir / "docker.sock") as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
        choice = container.choose_broker()
        choice.stop()
        assert engine.pulled() == [container.kafka_image()]
    assert choice.source == "local"
    assert choice.reason.endswith(f"but cannot pull {container.kafka_image()}: {NO_REGISTRY}")


@pytest.mark.integration
def test_a_present_image_is_not_pulled(
    monkeypatch: pytest.MonkeyPatch, socket_dir: Path, no_configured_broker: None
) -> None:
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", False)
    with OfflineDockerEngine(socket_dir / "docker.sock", images=frozenset({RYUK})) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
        choice = container.choose_broker()
        choice.stop()
        assert engine.pulled() == [container.kafka_image()]
    assert "reaper" not in choice.reason
    assert f"cannot pull {container.kafka_image()}:" in choice.reason


@pytest.mark.integration
def test_no_engine_means_the_local_broker(
    monkeypatch: pytest.MonkeyPatch,
    socket_dir: Path,
    caplog: pytest.LogCaptureFixture,
    no_configured_broker: None,
) -> None:
    nowhere = f"unix://{socket_dir / 'nothing.sock'}"
    monkeypatch.setenv("DOCKER_HOST", nowhere)
    caplog.set_level(logging.INFO, LOGGER)
    choice = container.choose_broker()
    try:
        assert _answers(choice.bootstrap)
    finally:
        choice.stop()
    assert choice.source == "local"
    assert choice.reason.startswith(f"no Docker engine answers at {nowhere} (")
    assert [r.levelno for r in _choice_records(caplog)] == [logging.INFO]
