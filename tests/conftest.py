"""Shared fixtures: a real Kafka broker and a real Schema Registry for integration tests (see
processor.localkafka and processor.localregistry), and the deletion of every topic a test
made, whatever its result."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from processor import localregistry
from processor.localkafka.cluster import LocalCluster, get_cluster
from processor.localkafka.container import BrokerChoice, choose_broker
from processor.localregistry import ensure_registry
from tests.harness import TopicLeakWarning, clean_up_deployments, delete_topics

TopicFactory = Callable[..., str]

# The broker this session chose, for the terminal summary (its log line is captured by pytest).
_CHOSEN: list[BrokerChoice] = []


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else an apache/kafka container where Docker can start
    one, else the local broker (processor.localkafka.container.choose_broker)."""
    choice = choose_broker()
    _CHOSEN.append(choice)
    try:
        yield choice.bootstrap
    finally:
        clean_up_deployments()  # any made outside a test (module or session fixtures)
        choice.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for choice in _CHOSEN:
        terminalreporter.write_sep("-", "Kafka broker of the integration tests")
        terminalreporter.write_line(choice.summary)


@pytest.fixture(autouse=True)
def _delete_deployment_topics() -> Iterator[None]:
    """Deletes the topics of every harness.Deployment the test made, after the test,
    pass or fail; a failed deletion is a TopicLeakWarning, never a test error."""
    yield
    clean_up_deployments()


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """The local three-node cluster (processor.localkafka.cluster), for tests of faults that
    move coordinators. Started unless it runs, and stopped at the end only then; a cluster
    someone else started is left running, whole again."""
    local = get_cluster()
    already = bool(local.running())
    local.up()
    try:
        yield local
    finally:
        if already:
            local.up()
        else:
            local.down()


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """SCHEMA_REGISTRY_URL if set, else the local Apicurio Registry (started if need be, and
    stopped at the end only if this session started it). Tests share it: use unique subjects."""
    url, stop = ensure_registry()
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def local_registry_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The project's own registry (processor.localregistry), even when SCHEMA_REGISTRY_URL
    points elsewhere: for tests of the registry process itself."""
    if not os.environ.get(localregistry.URL_ENV):
        yield request.getfixturevalue("schema_registry_url")
        return
    url, started = localregistry._up(localregistry.START_TIMEOUT_S)
    try:
        yield url
    finally:
        if started:
            localregistry.down()


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """new_topic(partitions=1, config=None, prefix="test") -> a fresh, uniquely named topic.

    Every topic made through it is deleted when the test ends.
    """
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(
        partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str = "test"
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        created.append(name)  # before creating: a half-made topic is deleted too
        spec = NewTopic(name, partitions, 1, config=dict(config or {}))
        admin.create_topics([spec], operation_timeout=30)[name].result(timeout=30)
        return name

    yield make
    # A test may already have deleted its topic; delete_topics skips what is gone.
    leftover = delete_topics(kafka_bootstrap, created)
    if leftover:
        warnings.warn(f"could not delete topics {leftover}", TopicLeakWarning, stacklevel=1)
