"""The bench's figure: one PNG, a panel per question."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

RATE_WINDOW_S = 0.5  # rates are plotted over this, not the (finer) sampling period
Samples = list[list[float]]


def _rates(samples: Samples, column: int = 1) -> tuple[list[float], list[float]]:
    """Cumulative (t, count, ...) samples -> (t, count/s over about RATE_WINDOW_S)."""
    if len(samples) < 2:
        return [], []
    period = max(samples[-1][0] / (len(samples) - 1), 1e-3)
    step = max(1, round(RATE_WINDOW_S / period))
    picked = [*samples[::step], *([samples[-1]] if (len(samples) - 1) % step else [])]
    times, rates = [], []
    for a, b in itertools.pairwise(picked):
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
    from matplotlib.ticker import StrMethodFormatter

    fig, axes = plt.subplots(3, 3, figsize=(20, 15))
    _throughput(axes[0][0], results)
    _progress(axes[0][1], results)
    _ceilings(axes[0][2], results)
    _latency(axes[1][0], results)
    _recovery(axes[1][1], results)
    _catch_up(axes[1][2], results)
    _memory(axes[2][0], results)
    for ax in (axes[0][1], axes[0][2], axes[1][2]):
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[2][2].remove()
    _text(axes[2][1], results)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _throughput(ax: Any, results: dict[str, Any]) -> None:
    ours, ceiling = results["throughput"], results["ceiling"]
    runs = (
        (f"processor, done ({ours['events_per_s']:,.0f}/s)", ours, 1, "tab:blue", "-", 2.0),
        ("processor, routed", ours, 2, "tab:blue", ":", 1.5),
        (f"ceiling, two hops ({ceiling['two_hops']['events_per_s']:,.0f}/s)",
         ceiling["two_hops"], 1, "tab:red", "-", 0.8),
        (f"ceiling, one hop ({ceiling['one_hop']['events_per_s']:,.0f}/s)",
         ceiling["one_hop"], 1, "tab:orange", "-", 0.8),
    )  # fmt: skip
    for label, run, column, color, style, width in runs:
        times, rates = _rates(run["samples"], column)
        ax.step(times, rates, style, where="pre", color=color, label=label, linewidth=width)
    ax.set(
        title=f"Throughput over time (per {RATE_WINDOW_S:g} s)",
        xlabel="seconds since ready / assigned",
        ylabel="input events/s",
    )
    # Symlog: the ceilings are an order of magnitude above, and idle intervals are 0.
    ax.set_yscale("symlog", linthresh=1000)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)


def _progress(ax: Any, results: dict[str, Any]) -> None:
    ours = results["throughput"]
    samples = ours["samples"]
    times = [s[0] for s in samples]
    ax.plot(times, [s[1] for s in samples], color="tab:blue", label="done (manage)")
    ax.plot(times, [s[2] for s in samples], ":", color="tab:blue", label="routed")
    stall, at = ours["longest_stall_s"], ours["longest_stall_at_s"]
    ax.axvspan(at, at + stall, color="tab:red", alpha=0.2,
               label=f"longest stall {stall:.1f} s")  # fmt: skip
    parked = ax.twinx()
    parked.plot(times, [max(s[3], 0) for s in samples], color="tab:gray", alpha=0.6, lw=0.8)
    parked.set_ylim(0, max(10, ours["parked_peak"] * 1.1))
    parked.set_ylabel(f"parked records (peak {ours['parked_peak']:,})", color="tab:gray")
    ax.set(
        title=f"Input events of {ours['bundles']:,} bundles ({ours['events']:,} events; "
        f"{ours['transactions']:,} transactions, {ours['retried']:,} retries)",
        xlabel="seconds since ready",
        ylabel="events",
    )
    ax.legend(loc="lower right", fontsize=8)


def _ceilings(ax: Any, results: dict[str, Any]) -> None:
    ceiling, ratio = results["ceiling"], results["ratio"]
    names = ["processor\n(full topology)", "pass-through\ntwo hops", "pass-through\none hop"]
    rates = [
        results["throughput"]["events_per_s"],
        ceiling["two_hops"]["events_per_s"],
        ceiling["one_hop"]["events_per_s"],
    ]
    bars = ax.bar(range(3), rates, color=["tab:blue", "tab:red", "tab:orange"])
    ax.set_xticks(range(3), names, fontsize=9)
    ax.bar_label(bars, fmt="{:,.0f}")
    ax.set(
        title=f"Exactly-once, one instance, 100 ms commits\nours / two hops "
        f"{ratio['two_hops']:.3f}, ours / one hop {ratio['one_hop']:.3f}",
        ylabel="input events/s",
    )


def _latency(ax: Any, results: dict[str, Any]) -> None:
    lat = results["latency"]
    values = lat["values_ms"]
    ax.hist(values, bins=min(50, max(10, len(values) // 5)), color="tab:blue", alpha=0.6)
    for q, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        ms = lat[f"{q}_ms"]
        ax.axvline(ms, color="black", linestyle=style, label=f"{q} {ms:.0f} ms")
    cdf = ax.twinx()
    cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], color="tab:red")
    cdf.set_ylabel("cumulative share", color="tab:red")
    cdf.set_ylim(0, 1.02)
    ax.set(
        title=f"FlightBookingFailed_v1 committed -> last RefundTicket visible\n"
        f"({lat['samples']} bundles at {lat['rate_per_s']:g}/s, processor live)",
        xlabel="ms",
        ylabel="bundles",
    )
    ax.legend(loc="upper left", fontsize=8)


def _recovery(ax: Any, results: dict[str, Any]) -> None:
    rec = results["recovery"]
    times = [t for t, _ in rec["timeline"]]
    counts = [n / rec["bin_s"] for _, n in rec["timeline"]]
    ax.bar(times, counts, width=rec["bin_s"], align="edge", color="tab:blue", alpha=0.7)
    marks = (
        (0.0, "SIGKILL, restart", "black", "-"),
        (rec["ready_s"], f"ready {rec['ready_s']:.1f} s", "tab:green", "--"),
        (rec["flowing_s"], f"outputs flow {rec['flowing_s']:.1f} s", "tab:red", "-"),
    )
    for x, label, color, style in marks:
        ax.axvline(x, color=color, linestyle=style, label=label)
    ax.set(
        title=f"Crash recovery under {rec['rate_per_s']:g} bundles/s: outputs visible\n"
        f"({rec['outputs']:,} outputs, {rec['duplicates']} duplicates, "
        f"{rec['missing']} missing)",
        xlabel="seconds since SIGKILL",
        ylabel=f"outputs/s (per {rec['bin_s']:g} s)",
    )
    ax.legend(loc="upper left", fontsize=8)


def _catch_up(ax: Any, results: dict[str, Any]) -> None:
    restore, index = results["restore"], results["index"]
    names = ["changelog\nraw read", "changelog\nrestore", "index topic\nraw read"]
    names.append("index\ncatch-up")
    rates = [
        restore["raw_records_per_s"],
        restore["records_per_s"],
        index["raw_records_per_s"],
        index["records_per_s"],
    ]
    colors = ["tab:gray", "tab:green", "tab:gray", "tab:olive"]
    bars = ax.bar(range(4), rates, color=colors)
    ax.set_xticks(range(4), names, fontsize=9)
    ax.bar_label(bars, fmt="{:,.0f}")
    ax.set(
        title=f"Into RocksDB vs a raw read of the same topic\n({restore['records']:,} states: "
        f"ratio {restore['ratio']:.2f}; {index['records']:,} initializations: "
        f"{index['ratio']:.2f})",
        ylabel="records/s",
    )


def _memory(ax: Any, results: dict[str, Any]) -> None:
    rss = results["rss"]
    bars = ax.bar(range(len(rss)), [r["peak_rss_mib"] for r in rss], color="tab:purple")
    ax.set_xticks(
        range(len(rss)), [f"{r['bundles']:,} bundles\nready in {r['ready_s']:.1f} s" for r in rss]
    )
    ax.bar_label(bars, fmt="{:,.0f} MiB")
    ax.axhline(250, color="tab:red", linestyle=":", label="target 250 MiB")
    ax.set(
        title="Peak RSS (VmHWM) of `processor run` once ready\n(state: changelog + "
        f"booking index; --state-memory {rss[0]['state_memory_mib']:g} MiB)",
        ylabel="MiB",
    )
    ax.legend(loc="upper left", fontsize=8)


def _text(ax: Any, results: dict[str, Any]) -> None:
    m, ours, lat = results["machine"], results["throughput"], results["latency"]
    rec, ratio = results["recovery"], results["ratio"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM (load {m['load_avg_1m']})",
        f"{m['python']}; confluent-kafka {m['confluent_kafka']}, librdkafka {m['librdkafka']}",
        f"Kafka {m['kafka']}; {results['started_at']}; run took {results['wall_s']:.0f} s",
        "",
        f"processor   {ours['events_per_s']:>9,.0f} events/s  {ours['bundles_per_s']:>7,.0f}"
        " bundles/s",
        f"ours/ceiling  two hops {ratio['two_hops']:.3f}   one hop {ratio['one_hop']:.3f}",
        f"stall       {ours['longest_stall_s']:.1f} s at {ours['longest_stall_at_s']:.1f} s"
        f" (idle {ours['longest_idle_s']:.1f} s)",
        f"latency     p50 {lat['p50_ms']:.0f}  p90 {lat['p90_ms']:.0f}  p99 {lat['p99_ms']:.0f}"
        f"  max {lat['max_ms']:.0f} ms",
        f"recovery    outputs flow {rec['flowing_s']:.2f} s after SIGKILL, "
        f"{rec['duplicates']} duplicates",
        f"restore     {results['restore']['records_per_s']:>9,.0f} records/s"
        f"  (raw {results['restore']['raw_records_per_s']:,.0f})",
        f"index       {results['index']['records_per_s']:>9,.0f} records/s"
        f"  (raw {results['index']['raw_records_per_s']:,.0f})",
        *(
            f"RSS {r['bundles']:>9,}  {r['peak_rss_mib']:>6,.0f} MiB peak, ready "
            f"{r['ready_s']:.1f} s"
            for r in results["rss"]
        ),
    ]
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=10)
