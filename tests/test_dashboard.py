"""The Grafana dashboard asks only for metrics the processor exports: every metric name
in its queries is checked against what a running engine serves on /metrics."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from processor.codec import Codec
from processor.observe import serve
from tests.factories import BundleStory
from tests.harness import Deployment

DASHBOARD = Path(__file__).resolve().parent.parent / "processor" / "grafana" / "dashboard.json"
pytestmark = pytest.mark.integration


def queried_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    return set(re.findall(r"\bvip_bundle_[a-z_]+", " ".join(exprs)))


def test_every_metric_the_dashboard_queries_is_exported(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    story = BundleStory(seed=f"{deployment.app}/d", tickets=1)
    deployment.publish(*story.history("flight_failed"))
    running = deployment.start()
    server = serve(running.engine, Codec(), "127.0.0.1", 0)
    try:
        deployment.read(until=lambda got: len(got) >= 4)  # every stage has worked once
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        running.stop()
    # Sample names, with a histogram's _bucket/_count/_sum series.
    exported = set(re.findall(r"^(vip_bundle_[a-z_]+)", text, re.M))
    missing = queried_metrics() - exported
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"
