"""The simulator against the real topology on the test broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from processor.simulation.runner import SimulationConfig, report, simulate
from processor.simulation.services import Knobs
from tests.harness import Deployment

pytestmark = pytest.mark.integration

NOISY = Knobs(
    duplicate_rate=0.2, late_confirmation_rate=0.5, ordinary_booking_rate=0.5, max_delay_s=0.3
)


def test_a_noisy_world_passes_against_the_processor(kafka_bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    running = deployment.start()
    config = SimulationConfig(
        kafka_bootstrap,
        deployment.topics,
        bundles=40,
        rate=40,
        knobs=NOISY,
        timeout_s=90,
        settle_s=1.0,
        seed=11,
    )

    result = simulate(config, Console(quiet=True))
    running.stop()

    assert result.problems == []
    assert not result.timed_out
    assert running.engine.stats.not_routed >= 3 * result.ordinary_bookings
    assert running.engine.stats.dead_lettered == 0


def test_without_a_processor_the_check_fails_and_says_why(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    config = SimulationConfig(
        kafka_bootstrap, deployment.topics, bundles=3, rate=10, timeout_s=2, settle_s=0.1
    )

    result = simulate(config, Console(quiet=True))

    assert result.timed_out and not result.ok
    assert sum("finalized 0 times" in p for p in result.problems) == 3
    console = Console(record=True, width=120)
    report(result, console)
    assert "FAIL" in console.export_text()


def test_demo_runs_the_processor_and_the_simulation_and_passes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)  # private topic names
    overrides = [f"--topic={d}={n}" for d, n in deployment.topics.overrides.items()]
    result = subprocess.run(
        [sys.executable, "-m", "processor", "demo", "--bootstrap-servers", kafka_bootstrap,
         "--application-id", deployment.app, "--state-dir", str(tmp_path / "demo"),
         "--partitions", "3", "--http", "127.0.0.1:0", "--bundles", "30", "--rate", "30",
         "--no-progress", *overrides],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert "PASS" in result.stdout
    assert "30 finalized" in result.stdout
    log = (tmp_path / "demo" / "processor.log").read_text()
    assert "HTTP on http://127.0.0.1:" in log
    assert "HTTP on http://127.0.0.1:8080 " not in log  # --http reached the processor
