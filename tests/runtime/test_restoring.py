"""Restoring is a task state driven by the loop: during a long restore the process
stays healthy (its loop turns), /readyz says what restores and how far, and turns
ready only once every store caught up. Against the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.harness import Deployment
from tests.runtime.test_waiting import _free_port, _metrics

pytestmark = pytest.mark.integration

RECORDS = 300_000


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_holds_and_readiness_waits_during_a_long_restore(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path / "state", partitions=3)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": 50, "batch.num.messages": 10000}
    )
    value = b"x" * 200  # restore copies bytes: it never decodes them
    for i in range(RECORDS):
        while True:
            try:
                producer.produce(deployment.topics.changelog, value, f"key-{i}", partition=i % 3)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)

    port = _free_port()
    args = deployment.cli_args(tmp_path / "restore-state", "r", "--http", f"127.0.0.1:{port}")
    process = subprocess.Popen(
        [sys.executable, "-m", "processor", *args], env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    seen_restoring, health, loop_ages = [], [], []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status, body = _get(port, "/readyz")
            except OSError:
                time.sleep(0.05)
                continue
            health.append(_get(port, "/healthz")[0])
            metrics = _metrics(port)
            if "vip_bundle_seconds_since_loop" in metrics:
                loop_ages.append(metrics["vip_bundle_seconds_since_loop"])
            if status == 200:
                break
            if body.get("restoring"):
                seen_restoring.append(body["restoring"])
            time.sleep(0.05)
        else:
            pytest.fail("never ready")
        assert _metrics(port)["vip_bundle_restored_total"] == RECORDS
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0

    assert seen_restoring, "/readyz never showed the restore"
    remaining = [sum(p["remaining"] for p in r.values()) for r in seen_restoring]  # type: ignore[union-attr]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > 0
    assert set(health) == {200}
    assert max(loop_ages) < 1.0  # the loop kept turning while the stores restored
