"""The bench's output: the machine it ran on, a summary table and the figure."""

from __future__ import annotations

import itertools
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
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": kafka_version(),
    }


def summary(results: dict[str, Any]) -> Table:
    ours, ceiling = results["throughput"], results["ceiling"]
    latency, restore = results["latency"], results["restore"]
    table = Table(title=f"VIP bundle processor bench ({results['wall_s']:.0f} s)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("", style="dim")
    table.add_row(
        "throughput, full topology",
        f"{ours['events_per_s']:,.0f} events/s",
        f"{ours['bundles_per_s']:,.0f} bundles/s, {ours['events']:,} events in "
        f"{ours['elapsed_s']:.2f} s",
    )
    table.add_row(
        "ceiling, transactional pass-through",
        f"{ceiling['events_per_s']:,.0f} events/s",
        f"{ceiling['events']:,} events in {ceiling['elapsed_s']:.2f} s",
    )
    table.add_row("ours / ceiling", f"{results['ratio']:.3f}", "")
    table.add_row(
        "latency failure -> last refund",
        f"p50 {latency['p50_ms']:.0f} ms",
        f"p90 {latency['p90_ms']:.0f}, p99 {latency['p99_ms']:.0f}, max "
        f"{latency['max_ms']:.0f} ms ({latency['samples']} bundles at "
        f"{latency['rate_per_s']:g}/s)",
    )
    table.add_row(
        "changelog restore",
        f"{restore['restore_records_per_s']:,.0f} records/s",
        f"raw read {restore['raw_records_per_s']:,.0f} records/s ({restore['records']:,} "
        f"records, ratio {restore['ratio']:.2f})",
    )
    for row in results["rss"]:
        rate = row["restore_records_per_s"]
        table.add_row(
            f"peak RSS, {row['bundles']:,} bundles in state",
            f"{row['peak_rss_mib']:.0f} MiB",
            f"ready in {row['ready_s']:.1f} s"
            + (f", restore {rate:,.0f} records/s" if rate else ""),
        )
    return table


def _rates(samples: list[list[float]], column: int = 1) -> tuple[list[float], list[float]]:
    """Cumulative (t, count, ...) samples -> (t, events/s over the preceding interval)."""
    times, rates = [], []
    for a, b in itertools.pairwise(samples):
        if b[0] > a[0]:
            times.append(b[0])
            rates.append((b[column] - a[column]) / (b[0] - a[0]))
    return times, rates


def figure(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(
            "the figure needs matplotlib: pip install -e '.[bench]' (or make bench)"
        ) from exc
    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 9.5))
    (rate, latency, restore), (progress, memory, text) = axes
    ours, ceiling = results["throughput"], results["ceiling"]
    runs = (
        (f"processor, full topology ({ours['events_per_s']:,.0f}/s)", ours, "tab:blue"),
        (f"ceiling, pass-through ({ceiling['events_per_s']:,.0f}/s)", ceiling, "tab:orange"),
    )
    for label, run, color in runs:
        times, rates = _rates(run["samples"])
        rate.step(times, rates, where="pre", marker=".", color=color, label=label)
        rate.axhline(run["events_per_s"], color=color, alpha=0.4, linewidth=1)
        progress.plot(
            [x[0] for x in run["samples"]],
            [x[1] for x in run["samples"]],
            marker=".",
            color=color,
            label=label,
        )
    routed = [x for x in ours["samples"] if len(x) > 2]
    if routed:
        # The route stage runs ahead: managed events wait for its transactions.
        progress.plot(
            [x[0] for x in routed],
            [x[2] for x in routed],
            linestyle=":",
            color="tab:blue",
            label="processor, routed (route stage)",
        )
    if any(len(x) > 2 for x in ours["samples"]):
        times, rates = _rates(ours["samples"], column=2)
        rate.step(times, rates, ":", where="pre", color="tab:blue", label="processor, routed")
    rate.set(
        title=f"Throughput over time (ratio {results['ratio']:.3f}; lines: averages)",
        xlabel="seconds since assignment",
        ylabel="input events/s (per sample interval)",
    )
    # Symlog: the ceiling is an order of magnitude above, and idle intervals are 0.
    rate.set_yscale("symlog", linthresh=1000)
    rate.set_ylim(bottom=0)
    rate.legend(loc="lower left")
    progress.set(
        title=f"Input events done ({ours['events']:,} events of {ours['bundles']:,} bundles)",
        xlabel="seconds since assignment",
        ylabel="events",
    )
    progress.legend(loc="lower right")

    lat = results["latency"]
    values = lat["values_ms"]
    latency.hist(values, bins=min(50, max(10, len(values) // 5)), color="tab:blue", alpha=0.6)
    for q, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        ms = lat[f"{q}_ms"]
        latency.axvline(ms, color="black", linestyle=style, label=f"{q} {ms:.0f} ms")
    cdf = latency.twinx()
    cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], color="tab:red")
    cdf.set_ylabel("cumulative share", color="tab:red")
    cdf.set_ylim(0, 1.02)
    latency.set(
        title=f"FlightBookingFailed_v1 committed -> last RefundTicket visible\n"
        f"({lat['samples']} bundles at {lat['rate_per_s']:g}/s, processor live)",
        xlabel="ms",
        ylabel="bundles",
    )
    latency.legend(loc="upper left")

    rest = results["restore"]
    names = ["raw read\n(no store)", "restore()\n(RocksDB)"]
    rates = [rest["raw_records_per_s"], rest["restore_records_per_s"]]
    for row in results["rss"]:
        if row["restore_records_per_s"]:
            names.append(f"processor run\n{row['bundles']:,} bundles")
            rates.append(row["restore_records_per_s"])
    colors = ["tab:gray", "tab:green"] + ["tab:olive"] * (len(names) - 2)
    bars = restore.bar(range(len(names)), rates, color=colors)
    restore.set_xticks(range(len(names)), names, fontsize=8)
    restore.bar_label(bars, fmt="{:,.0f}")
    restore.set(
        title=f"Changelog read rates ({rest['records']:,} records, {rest['partitions']} "
        "partitions;\nin `processor run`: the RSS runs' changelogs)",
        ylabel="records/s",
    )

    rss = results["rss"]
    bars = memory.bar(range(len(rss)), [r["peak_rss_mib"] for r in rss], color="tab:purple")
    memory.set_xticks(range(len(rss)), [f"{r['bundles']:,}" for r in rss])
    memory.bar_label(bars, fmt="{:,.0f} MiB")
    memory.set(
        title="Peak RSS (VmHWM) of `processor run` once restored",
        xlabel="bundles in state (changelog + booking index)",
        ylabel="MiB",
    )

    m = results["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM",
        f"{m['python']}; confluent-kafka {m['confluent_kafka']}, librdkafka {m['librdkafka']}",
        f"Kafka {m['kafka']}; {results['started_at']}; run took {results['wall_s']:.0f} s",
        "",
        f"processor  {ours['events_per_s']:>9,.0f} events/s"
        f"  {ours['bundles_per_s']:>7,.0f} bundles/s",
        f"ceiling    {ceiling['events_per_s']:>9,.0f} events/s  ratio {results['ratio']:.3f}",
        f"latency    p50 {lat['p50_ms']:.0f}  p90 {lat['p90_ms']:.0f}  p99 {lat['p99_ms']:.0f}"
        f"  max {lat['max_ms']:.0f} ms",
        f"restore    {rest['restore_records_per_s']:>9,.0f} records/s"
        f"  (raw read {rest['raw_records_per_s']:,.0f})",
        *(f"RSS {r['bundles']:>9,}  {r['peak_rss_mib']:>6,.0f} MiB peak" for r in rss),
    ]
    text.axis("off")
    text.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
