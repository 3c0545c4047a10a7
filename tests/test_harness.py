"""The test harness's own clean-up: what a test made on the broker goes away with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processor.admin import TopicSpec, create_topics
from tests.harness import Deployment, clean_up_deployments, delete_topics, topics_named_after

pytestmark = pytest.mark.integration


def test_clean_up_stops_an_engine_left_running_and_deletes_every_topic_of_the_app(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    running = deployment.start()  # never stopped, as in a test that failed midway
    derived = f"{deployment.app}-made-by-the-test"  # e.g. what `processor run` creates
    create_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), [TopicSpec(derived, 1)])
    assert len(topics_named_after(kafka_bootstrap, deployment.app)) == 6 + 4 + 6 + 2 + 1

    clean_up_deployments(kafka_bootstrap)

    assert not running.thread.is_alive()
    assert topics_named_after(kafka_bootstrap, deployment.app) == []


def test_deleting_topics_on_a_broker_that_is_away_reports_them_and_never_raises() -> None:
    assert delete_topics("127.0.0.1:9", ["some-topic"], timeout=1) == ["some-topic"]
