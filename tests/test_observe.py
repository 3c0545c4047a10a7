"""Metrics, health, readiness and bundle state over HTTP, on a live engine."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from processor.codec import Codec
from processor.observe import serve
from tests.factories import BundleStory
from tests.harness import Deployment, wait_for

pytestmark = pytest.mark.integration


def get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_health_readiness_and_bundle_state(kafka_bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    story = BundleStory(seed=f"{deployment.app}/observed", tickets=2)
    deployment.publish(story.initialized(), story.booking_made(), story.confirmed(1))
    running = deployment.start()
    server = serve(running.engine, Codec(), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        deployment.read(until=lambda got: len(got) == 2)  # BookShowTickets, BookFlight
        # The confirmation publishes nothing: wait until its state change is committed.
        wait_for(
            lambda: running.engine.stats.processed == 3 and not running.engine.parked,
            10,
            f"3 processed: {running.engine.stats} parked {running.engine.parked}",
        )
        wait_for(lambda: json.loads(get(base, f"/bundles/{story.vip_bundle_id}")[1])["ticket_ids"])

        assert get(base, "/healthz")[0] == 200
        status, ready = get(base, "/readyz")
        assert status == 200 and json.loads(ready)["partitions"] == [0, 1, 2]

        status, body = get(base, f"/bundles/{story.vip_bundle_id}")
        assert status == 200
        bundle = json.loads(body)
        assert bundle["vip_bundle_id"] == story.vip_bundle_id
        made_at = datetime.fromisoformat(bundle["booking_made_at"])  # ISO 8601, UTC as Z
        assert made_at == story.booking_made().header.published_at
        assert bundle["ticket_ids"] == [story.ticket_ids[1]]
        assert bundle["is_finalized"] is False

        assert get(base, "/bundles/00000000-0000-4000-8000-000000000000")[0] == 404
        assert get(base, "/nope")[0] == 404

        status, metrics = get(base, "/metrics")
        assert status == 200
        assert "vip_bundle_forwarded_total 3.0" in metrics
        assert "vip_bundle_processed_total 3.0" in metrics
        assert "vip_bundle_assigned_partitions 3.0" in metrics
        assert 'vip_bundle_bundles{state="active"} 1.0' in metrics
        assert 'vip_bundle_bundles{state="finalized"} 0.0' in metrics
        assert 'vip_bundle_record_processing_seconds_count{stage="route"} 3.0' in metrics
        assert 'vip_bundle_record_processing_seconds_count{stage="manage"} 3.0' in metrics
        commits = re.search(r"^vip_bundle_commit_duration_seconds_count (\S+)$", metrics, re.M)
        assert commits and float(commits[1]) >= 1
        # Known once a partition was fetched from (those that had records at least), as
        # the loop measures them: every second.
        fed = {
            deployment.topics.input(e.schema_name)
            for e in (story.initialized(), story.booking_made())
        }

        def lags() -> list[tuple[str, str, str]]:
            pattern = r'^vip_bundle_consumer_lag\{partition="(\d+)",topic="([^"]+)"\} (\S+)$'
            return re.findall(pattern, get(base, "/metrics")[1], re.M)

        wait_for(lambda: fed <= {t for _, t, _ in lags()}, 10, "lag of the fed partitions")
        measured = lags()
        assert {t for _, t, _ in measured} <= {
            *deployment.topics.inputs,
            *deployment.topics.repartitions,
        }
        assert all(float(v) >= 0 for *_, v in measured)

        # A scrape never waits for the loop: it took 0.2 s to over 2 s while /metrics
        # asked the consumers itself (a consumer call waits for the loop's own calls).
        for _ in range(20):
            with urllib.request.urlopen(base + "/metrics", timeout=1) as response:
                assert response.status == 200
    finally:
        server.shutdown()
        running.stop()
