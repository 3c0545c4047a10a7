"""Smoke test of `python -m processor.bench` on tiny sizes: every figure is there and
sane. Speed targets belong to the benchmark itself, never to these assertions."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processor.bench.catchup import RESTORE_ROUNDS
from processor.bench.cli import main

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_bench_writes_every_figure_and_a_png(kafka_bootstrap: str, tmp_path: Path) -> None:
    results_path, figure_path = tmp_path / "results.json", tmp_path / "bench.png"
    code = main(
        [
            "--bootstrap-servers", kafka_bootstrap,
            "--bundles", "50",
            "--ceiling-records", "1000",
            "--latency-samples", "20",
            "--latency-rate", "40",
            "--recovery-rate", "40",
            "--recovery-before", "2",
            "--recovery-after", "2",
            "--rss-bundles", "500",
            "--partitions", "2",
            "--input-partitions", "1",
            "--output", str(results_path),
            "--figure", str(figure_path),
            "--state-dir", str(tmp_path / "state"),
            "--timeout", "60",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0

    results = json.loads(results_path.read_text())
    machine = results["machine"]
    for key in ("cpu", "cores", "ram_gib", "python", "confluent_kafka", "librdkafka", "kafka"):
        assert machine[key], key

    ours = results["throughput"]
    assert ours["bundles"] == 50 and ours["events"] > 50  # about 5.5 events a bundle
    assert ours["events_per_s"] > 0 and ours["bundles_per_s"] > 0 and ours["elapsed_s"] > 0
    assert ours["samples"][-1][1] == ours["events"]  # every event done by the last sample
    assert ours["samples"][-1][2] == ours["events"]  # ... and routed
    assert ours["transactions"] > 0
    assert ours["output_records"] > ours["bundles"]  # at least a finalization each
    assert 0 <= ours["longest_stall_s"] <= ours["elapsed_s"]
    assert ours["longest_idle_s"] <= ours["longest_stall_s"]  # idle: a stall routing too

    for hops, key in ((1, "one_hop"), (2, "two_hops")):
        run = results["ceiling"][key]
        assert run["hops"] == hops
        assert run["copies"] == -(-1000 // ours["events"])  # copies of the same records
        if not run["cut_short"]:
            assert run["events"] == run["copies"] * ours["events"]
        assert run["output_records"] == run["events"] > 0  # all through, exactly once
        assert run["transactions"] > 0
        assert results["ratio"][key] == pytest.approx(
            ours["events_per_s"] / run["events_per_s"], rel=1e-3
        )

    latency = results["latency"]
    assert latency["samples"] == len(latency["values_ms"]) == 20
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["refunds"] >= 20  # at least one ticket per failed bundle

    recovery = results["recovery"]
    assert recovery["bundles"] == 160  # 40/s for 2 + 2 s
    assert recovery["outputs"] == recovery["expected_outputs"] > recovery["bundles"]
    assert recovery["duplicates"] == recovery["missing"] == 0
    assert recovery["ready_s"] > 0 and recovery["flowing_s"] > 0
    assert sum(n for _, n in recovery["timeline"]) == recovery["outputs"]

    rss = results["rss"]
    assert [r["bundles"] for r in rss] == [0, 500]  # with the empty baseline
    for row in rss:
        assert row["restored"] == row["bundles"]
        assert row["index_records"] == row["bundles"]
        assert row["peak_rss_mib"] >= row["rss_mib"] > 0
        assert row["ready_s"] > 0

    for key in ("restore", "index"):  # over the largest state
        run = results[key]
        assert run["records"] == run["raw_records"] == 500
        assert run["records_per_s"] > 0 and run["raw_records_per_s"] > 0 and run["ratio"] > 0
    # The restore alternates with its raw read and reports the medians of each.
    rounds = results["restore"]["rounds"]
    assert len(rounds) == RESTORE_ROUNDS
    assert results["restore"]["raw_records_per_s"] == statistics.median(r[0] for r in rounds)
    assert results["restore"]["records_per_s"] == statistics.median(r[1] for r in rounds)

    assert figure_path.read_bytes().startswith(PNG_SIGNATURE)

    # The run's private topics and groups are gone.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=30).topics
    assert not [t for t in topics if results["application_id"] in t]
    groups = admin.list_consumer_groups(request_timeout=30).result().valid
    assert not [g.group_id for g in groups if results["application_id"] in g.group_id]
