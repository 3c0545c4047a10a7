"""A broker outage in the middle of processing: the engine waits and resumes, and
every output still appears exactly once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor import localkafka
from tests.factories import OUTCOMES, BundleStory
from tests.harness import Deployment, clean_up_deployments, expected_outputs, observed

pytestmark = pytest.mark.integration


def free_port_pair() -> int:
    """A port whose successor is free too (the broker's controller listens there)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def private_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A broker of this test's own, so that stopping it disturbs no other test."""
    shared_libs = localkafka.get_paths().libs_root
    home = tmp_path / "kafka"
    home.mkdir()
    if shared_libs.exists():
        (home / "libs").symlink_to(shared_libs)  # the jar cache, not a second download
    monkeypatch.setenv(localkafka.DIR_ENV, str(home))
    monkeypatch.setenv(localkafka.PORT_ENV, str(free_port_pair()))
    bootstrap = localkafka.up()
    try:
        yield bootstrap
    finally:
        clean_up_deployments(bootstrap)  # while it answers; its data goes with it anyway
        localkafka.down()


def test_processing_survives_a_broker_restart_exactly_once(
    private_broker: str, tmp_path: Path
) -> None:
    deployment = Deployment(private_broker, tmp_path / "state")
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=2) for n in range(6)]
    histories = [s.history(OUTCOMES[n % 3]) for n, s in enumerate(stories)]
    expected = sum((expected_outputs(deployment.topics, h) for h in histories), start=observed([]))
    for history in histories:
        deployment.publish(*history[:-1])  # all but the outcome
    # After a broker restart librdkafka may hang in send_offsets_to_transaction: the
    # engine must notice, replace its producer and carry on.
    running = deployment.start(commit_timeout_s=10)
    deployment.read(until=lambda got: len(got) >= 2 * len(stories) - 2, settle=0.5)

    localkafka.down()
    time.sleep(5)  # the engine keeps trying meanwhile
    assert running.thread.is_alive()
    localkafka.up()

    for history in histories:
        deployment.publish(history[-1])
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()), timeout=90)
    running.stop()

    assert observed(received) == expected
