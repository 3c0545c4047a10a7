"""The bench's text output: the machine it ran on, and a summary table."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import confluent_kafka
from rich.table import Table

from processor.localkafka import kafka_version


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:  # no /proc (macOS): keep what platform says
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine at the end
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": kafka_version(),
    }


def summary(results: dict[str, Any]) -> Table:
    ours, lat, rec = results["throughput"], results["latency"], results["recovery"]
    table = Table(title=f"VIP bundle processor bench ({results['wall_s']:.0f} s)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("", style="dim")
    table.add_row(
        "throughput, full topology",
        f"{ours['events_per_s']:,.0f} events/s",
        f"{ours['bundles_per_s']:,.0f} bundles/s; {ours['events']:,} events in "
        f"{ours['elapsed_s']:.2f} s, ready after {ours['startup_s']:.1f} s",
    )
    table.add_row(
        "longest stall (no event done, backlog left)",
        f"{ours['longest_stall_s']:.1f} s",
        f"at {ours['longest_stall_at_s']:.1f} s; neither stage moving: "
        f"{ours['longest_idle_s']:.1f} s at {ours['longest_idle_at_s']:.1f} s "
        f"(sampled every {ours['sample_every_s']:g} s)",
    )
    table.add_row(
        "transactions / retried / parked (peak)",
        f"{ours['transactions']:,}",
        f"{ours['retried']:,} not-ready retries, {ours['parked_peak']:,} parked at most, "
        f"{ours['skipped']:,} skipped",
    )
    for key, name in (("one_hop", "one hop"), ("two_hops", "two hops")):
        run = results["ceiling"][key]
        table.add_row(
            f"ceiling, pass-through, {name}",
            f"{run['events_per_s']:,.0f} events/s",
            f"{run['events']:,} events ({run['copies']} copies"
            f"{', cut short' if run['cut_short'] else ''}) in {run['elapsed_s']:.2f} s, "
            f"{run['transactions']} transactions",
        )
    for key, name in (("one_hop", "one hop"), ("two_hops", "two hops")):
        table.add_row(f"ours / ceiling, {name}", f"{results['ratio'][key]:.3f}", "")
    table.add_row(
        "latency failure -> last refund",
        f"p99 {lat['p99_ms']:.0f} ms",
        f"p50 {lat['p50_ms']:.0f}, p90 {lat['p90_ms']:.0f}, max {lat['max_ms']:.0f} ms "
        f"({lat['samples']} bundles at {lat['rate_per_s']:g}/s)",
    )
    table.add_row(
        "SIGKILL + restart -> outputs flow",
        f"{rec['flowing_s']:.2f} s",
        f"ready after {rec['ready_s']:.2f} s; {rec['outputs']:,} outputs of "
        f"{rec['expected_outputs']:,}: {rec['duplicates']} duplicates, {rec['missing']} "
        f"missing ({rec['rate_per_s']:g} bundles/s)",
    )
    for key, name in (("restore", "changelog restore"), ("index", "booking index catch-up")):
        run = results[key]
        rounds = run.get("rounds") or []
        each = "; ".join(f"{rate / raw:.2f}" for raw, rate in rounds)
        table.add_row(
            name,
            f"{run['records_per_s']:,.0f} records/s",
            f"raw read {run['raw_records_per_s']:,.0f} records/s, ratio {run['ratio']:.2f} "
            f"({run['records']:,} records, {run['partitions']} partitions"
            + (f"; medians of {len(rounds)} rounds, whose ratios were {each})" if rounds else ")"),
        )
    for row in results["rss"]:
        index = (
            f", index caught up in {row['index_caught_up_s']:.1f} s"
            if row["index_caught_up_s"] is not None
            else ""
        )
        table.add_row(
            f"peak RSS, {row['bundles']:,} bundles in state",
            f"{row['peak_rss_mib']:.0f} MiB",
            f"ready in {row['ready_s']:.1f} s{index} (--state-memory "
            f"{row['state_memory_mib']:g} MiB)",
        )
    slowest = sorted(results["phases_s"].items(), key=lambda kv: -kv[1])[:4]
    table.add_row("slowest phases", "", ", ".join(f"{name} {s:.0f} s" for name, s in slowest))
    return table
