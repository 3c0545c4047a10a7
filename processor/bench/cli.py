"""`python -m processor.bench`: argument parsing, the broker, and the run's order."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from processor import localkafka
from processor.bench.measure import Bench, BenchConfig, BenchError
from processor.bench.report import figure, machine, summary

log = logging.getLogger("processor.bench")

DESCRIPTION = """\
Benchmark the VIP bundle processor on one Kafka broker, in one run:

  1. throughput of the full topology (route + manage, exactly-once, one instance)
     on a pre-produced backlog of complete bundle histories;
  2. the ceiling: a plain transactional consume -> produce pass-through of the same
     records with the engine's client settings, and the ratio ours / ceiling;
  3. end-to-end latency from a committed FlightBookingFailed_v1 to its bundle's last
     RefundTicket visible (read_committed), with the processor live;
  4. the changelog restore rate into fresh RocksDB stores against a plain read of
     the same changelog;
  5. peak RSS of `processor run` with N bundles in its stores (plus an empty baseline).

Every phase uses private topics (deleted at the end) and a private state dir.
Writes a JSON file with every figure and the machine, and a PNG figure."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not positive")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processor.bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS); unset: the project's local "
        "broker, started for the run and stopped after it if it was not running",
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument(
        "--bundles",
        type=_positive(int),
        default=10_000,
        help="bundles pre-produced for the throughput runs (about 5.6 events each: 60%% "
        "success, 30%% flight failure with refunds, 10%% booking failure; default %(default)s)",
    )
    sizes.add_argument(
        "--partitions",
        type=_positive(int),
        default=6,
        help="partitions of the internal and output topics (default %(default)s)",
    )
    sizes.add_argument(
        "--input-partitions",
        type=_positive(int),
        default=3,
        help="partitions of each input topic (%(default)s)",
    )
    sizes.add_argument(
        "--latency-samples",
        type=_positive(int),
        default=300,
        help="bundles whose flight fails, one latency sample each (default %(default)s)",
    )
    sizes.add_argument(
        "--latency-rate",
        type=_positive(float),
        default=25.0,
        help="flight failures per second: modest, latency not saturation (default %(default)s)",
    )
    sizes.add_argument(
        "--rss-bundles",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        metavar="N",
        help="bundles in state for the RSS runs, each in a `processor run` of its own "
        "(default: 10000 100000; none: skip); an empty-state baseline is measured too",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        type=Path,
        default=Path(".local/bench/results.json"),
        help="JSON with every figure and the machine; the RSS runs' processor logs go "
        "beside it (default %(default)s)",
    )
    out.add_argument(
        "--figure",
        type=Path,
        default=Path(".local/bench/bench.png"),
        help="PNG: throughput over time, latency distribution, restore rates, RSS "
        "(default %(default)s)",
    )
    out.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".local/bench/state"),
        help="scratch space for the stores, removed after the run (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=300.0,
        help="give up on a phase after this many seconds (%(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the generated bundles (%(default)s)"
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="keep the run's topics (default: delete)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="of the in-process engine and clients (default %(default)s)",
    )
    return parser


def _broker(configured: str | None) -> tuple[str, Callable[[], object]]:
    """The bootstrap address, and how to stop the broker if this run started it."""
    if configured:
        return configured, lambda: None
    running = localkafka.status().running
    address = localkafka.up()
    return address, (lambda: None) if running else localkafka.down


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall = time.monotonic()
    bootstrap, stop_broker = _broker(args.bootstrap_servers)
    config = BenchConfig(
        bootstrap_servers=bootstrap,
        state_dir=args.state_dir,
        bundles=args.bundles,
        partitions=args.partitions,
        input_partitions=args.input_partitions,
        latency_samples=args.latency_samples,
        latency_rate=args.latency_rate,
        rss_bundles=tuple(args.rss_bundles),
        timeout_s=args.timeout,
        seed=args.seed,
        log_dir=args.output.parent,
    )
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
    )
    bench: Bench | None = None
    try:
        with progress:
            bench = Bench(config, progress)
            try:
                bench.prepare()
                # The ceiling first: the processor's run then leaves its changelog and
                # its live engine for the latency and restore phases.
                ceiling = bench.ceiling()
                ours = bench.ours()
                latency = bench.latency()
                restore = bench.restore()
                baseline = [] if 0 in config.rss_bundles or not config.rss_bundles else [0]
                rss = [bench.rss(n) for n in (*baseline, *config.rss_bundles)]
            finally:
                bench.cleanup(keep_topics=args.keep_topics)
        app = bench.app
    finally:
        # Clients still open would log every refused connection once the broker stops.
        bench = None
        gc.collect()
        stop_broker()
    config_json = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    return {
        "started_at": started_at,
        "application_id": app,  # prefix of the run's topics and processor logs
        "wall_s": round(time.monotonic() - wall, 1),
        "config": config_json,
        "machine": machine(),
        "throughput": asdict(ours),
        "ceiling": asdict(ceiling),
        "ratio": round(ours.events_per_s / ceiling.events_per_s, 4),
        "latency": asdict(latency),
        "restore": asdict(restore),
        "rss": [asdict(r) for r in rss],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    logging.basicConfig(
        level=args.log_level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        results = run(args, console)
    except (BenchError, localkafka.LocalKafkaError) as exc:
        log.error("%s", exc)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    figure(results, args.figure)
    Console().print(summary(results))
    console.print(f"results: {args.output}\nfigure:  {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
