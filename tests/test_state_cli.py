"""`processor state get` reads a bundle from a stopped instance's stores, read-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import BundleStory
from tests.harness import Deployment, final_state

pytestmark = pytest.mark.integration


def state_get(
    deployment: Deployment, state_dir: Path, bundle: str
) -> subprocess.CompletedProcess[str]:
    args = [
        "state",
        "get",
        bundle,
        "--application-id",
        deployment.app,
        "--state-dir",
        str(state_dir),
    ]
    args += [f"--topic={d}={n}" for d, n in deployment.topics.overrides.items()]
    return subprocess.run(
        [sys.executable, "-m", "processor", *args], capture_output=True, text=True, timeout=60
    )


def test_state_get_prints_the_committed_bundle_and_says_when_no_store_holds_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path / "state", partitions=2)
    story = BundleStory(seed=f"{deployment.app}/s", tickets=1)
    history = [story.initialized(), story.booking_made(), *story.all_confirmed()]
    deployment.publish(*history)
    running = deployment.start(instance=deployment.app)  # stores where `run` keeps them
    deployment.read(until=lambda got: len(got) >= 2)
    running.stop()

    found = state_get(deployment, deployment.state_root, story.vip_bundle_id)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == final_state(history)

    missing = state_get(deployment, deployment.state_root, "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1
    assert "no store in" in missing.stderr
