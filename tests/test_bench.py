"""Smoke test of `python -m processor.bench` on tiny sizes: every figure is there and
sane. Speed targets belong to the benchmark itself, never to these assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processor.bench.cli import main

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_bench_writes_every_figure_and_a_png(kafka_bootstrap: str, tmp_path: Path) -> None:
    results_path, figure_path = tmp_path / "results.json", tmp_path / "bench.png"
    code = main(
        [
            "--bootstrap-servers", kafka_bootstrap,
            "--bundles", "50",
            "--latency-samples", "20",
            "--latency-rate", "40",
            "--rss-bundles", "200", "500",
            "--partitions", "2",  # restore waits out a poll timeout per partition
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

    ours, ceiling = results["throughput"], results["ceiling"]
    assert ours["events"] == ceiling["events"] > 50  # the same records, ~6 per bundle
    for run in (ours, ceiling):
        assert run["bundles"] == 50
        assert run["events_per_s"] > 0 and run["bundles_per_s"] > 0 and run["elapsed_s"] > 0
        assert run["samples"][-1][1] == run["events"]
        assert run["transactions"] > 0
    assert ceiling["output_records"] == ceiling["events"]
    assert ours["output_records"] > ours["bundles"]  # at least a finalization each
    assert results["ratio"] == pytest.approx(
        ours["events_per_s"] / ceiling["events_per_s"], rel=1e-3
    )
    assert results["ratio"] > 0

    latency = results["latency"]
    assert latency["samples"] == len(latency["values_ms"]) == 20
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["refunds"] >= 20  # at least one ticket per failed bundle

    restore = results["restore"]
    assert restore["records"] == restore["raw_records"] > 0
    assert restore["restore_records_per_s"] > 0 and restore["raw_records_per_s"] > 0
    assert restore["ratio"] > 0

    rss = results["rss"]
    assert [r["bundles"] for r in rss] == [0, 200, 500]  # with the empty baseline
    for row in rss:
        assert row["restored"] == row["bundles"]
        assert row["peak_rss_mib"] >= row["rss_mib"] > 0

    assert figure_path.read_bytes().startswith(PNG_SIGNATURE)

    # The run's private topics are gone.
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30).topics
    assert not [t for t in topics if results["application_id"] in t]
