"""The CI-sized chaos run (`processor chaos --size ci`) on the local three-node cluster."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from processor.localkafka.cluster import LocalCluster

pytestmark = pytest.mark.integration


def test_the_ci_sized_chaos_run_passes_with_every_fault_injected(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)  # a new world every run; the seed reproduces it
    figures = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, "-m", "processor", "chaos", "--size", "ci", "--seed", str(seed),
         "--no-progress", "--work-dir", str(tmp_path / "work"), "--json", str(figures)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert figures.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    why = f"seed {seed}:\n{run.stdout[-6000:]}"
    assert result["problems"] == [], why
    assert run.returncode == 0, why
    assert "PASS" in run.stdout
    assert result["bundles"] == result["bundles_finalized"] == 300
    assert result["fuzzed"] == 1000
    assert result["fuzzed_near_max"] == 6
    assert result["fuzzed_in_dlq_once"] == result["fuzzed_for_dlq"] > 800
    assert result["unexpected_exits"] == 0
    assert result["kills"] >= 5
    assert result["restarts"] == result["kills"]
    assert result["graceful_stops"] == 2
    moves = {m["role"]: m for m in result["coordinator_moves"]}
    assert set(moves) == {"group", "transaction"}
    assert all(m["moved_to"] not in (None, m["node"]) for m in moves.values())
    assert result["recovery_s"]["count"] >= 1
