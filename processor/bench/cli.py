"""`python -m processor.bench`: argument parsing, the broker, and the run's order."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from processor.bench import catchup
from processor.bench.ceiling import ceiling, copy_backlog, read_backlog
from processor.bench.config import BenchConfig, BenchError
from processor.bench.figure import figure
from processor.bench.latency import latency
from processor.bench.memory import measure_rss, prefill
from processor.bench.recovery import recovery
from processor.bench.report import machine, summary
from processor.bench.session import Session
from processor.bench.throughput import backlog, topology

log = logging.getLogger("processor.bench")

DESCRIPTION = """\
Benchmark the VIP bundle processor on one Kafka broker, every figure from one run:

  1. throughput of the full topology (route + manage, exactly-once, one instance,
     in-process) on a pre-produced backlog of complete bundle histories, keyed as
     the services key them; sampled every --sample-every: the longest stretch
     without progress while a backlog remains, transactions, parked and retried;
  2. latency from a committed FlightBookingFailed_v1 to its bundle's last
     RefundTicket visible (read_committed), the processor live, --latency-rate;
  3. the ceilings: transactional consume -> produce pass-throughs of the same
     records with the engine's client settings and 100 ms commits, one hop
     (inputs -> sink) and two hops (inputs -> intermediate topics -> sink, the
     topology's shape), over copies of those records (--ceiling-records); and the
     ratios ours / ceiling;
  4. recovery: `processor run` under a live load (--recovery-rate bundles/s),
     SIGKILLed and restarted at once with the same instance id and state dir; the
     time until outputs flow again, and no duplicate among the phase's outputs;
  5. peak RSS (VmHWM) and ready time of `processor run` with 0 and --rss-bundles
     bundles in state (changelog + booking index), ready as /readyz says, with
     the default --state-memory;
  6. the changelog restore into RocksDB, and the booking index catch-up, each
     against a raw read of the same topic (the largest RSS state's topics).

Every phase uses private topics and groups (deleted at the end) and a private
state dir. Writes a JSON file with every figure and the machine, and a PNG."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not positive")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchConfig("", Path())
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
        default=defaults.bundles,
        help="bundles pre-produced for the throughput run and the ceilings (about 5.5 "
        "events each: 60%% success, 30%% flight failure with refunds, 10%% booking "
        "failure; default %(default)s)",
    )
    sizes.add_argument(
        "--partitions",
        type=_positive(int),
        default=defaults.partitions,
        help="partitions of the internal and output topics (default %(default)s)",
    )
    sizes.add_argument(
        "--input-partitions",
        type=_positive(int),
        default=defaults.input_partitions,
        help="partitions of each input topic (default %(default)s)",
    )
    sizes.add_argument(
        "--ceiling-records",
        type=_positive(int),
        default=defaults.ceiling_records,
        help="records each pass-through reads: copies of the backlog, so that it lasts "
        "several seconds (default %(default)s; at least the backlog)",
    )
    sizes.add_argument(
        "--ceiling-seconds",
        type=_positive(float),
        default=defaults.ceiling_s,
        help="a pass-through still reading after this long stops reading, lets what it "
        "read through and is measured up to there (default %(default)s)",
    )
    sizes.add_argument(
        "--latency-samples",
        type=_positive(int),
        default=defaults.latency_samples,
        help="bundles whose flight fails, one latency sample each (default %(default)s)",
    )
    sizes.add_argument(
        "--latency-rate",
        type=_positive(float),
        default=defaults.latency_rate,
        help="flight failures per second: modest, latency not saturation (default %(default)s)",
    )
    sizes.add_argument(
        "--recovery-rate",
        type=_positive(float),
        default=defaults.recovery_rate,
        help="bundles per second fed during the crash recovery phase (default %(default)s)",
    )
    sizes.add_argument(
        "--recovery-before",
        type=_positive(float),
        default=defaults.recovery_before_s,
        metavar="SECONDS",
        help="fed before the SIGKILL (default %(default)s)",
    )
    sizes.add_argument(
        "--recovery-after",
        type=_positive(float),
        default=defaults.recovery_after_s,
        metavar="SECONDS",
        help="fed after it (default %(default)s)",
    )
    sizes.add_argument(
        "--rss-bundles",
        type=int,
        nargs="*",
        default=list(defaults.rss_bundles),
        metavar="N",
        help="bundles in state for the RSS runs, each in a `processor run` of its own; an "
        "empty-state baseline is measured too; the largest also serves the restore and "
        "index phases (default: 1000000; none: only the baseline, and those phases read "
        "the throughput run's topics)",
    )
    sizes.add_argument(
        "--sample-every",
        type=_positive(float),
        default=defaults.sample_every_s,
        metavar="SECONDS",
        help="progress sampling period: the resolution of the stall figures (default %(default)s)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        type=Path,
        default=Path(".local/bench/results.json"),
        help="JSON with every figure and the machine; the `processor run` logs go "
        "beside it (default %(default)s)",
    )
    out.add_argument(
        "--figure",
        type=Path,
        default=Path(".local/bench/bench.png"),
        help="PNG of the figures (default %(default)s)",
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
        default=defaults.timeout_s,
        help="give up on a phase after this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the bundles (%(default)s)"
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


def _config(args: argparse.Namespace, bootstrap: str) -> BenchConfig:
    return BenchConfig(
        bootstrap_servers=bootstrap,
        state_dir=args.state_dir,
        log_dir=args.output.parent,
        bundles=args.bundles,
        partitions=args.partitions,
        input_partitions=args.input_partitions,
        ceiling_records=args.ceiling_records,
        ceiling_s=args.ceiling_seconds,
        latency_samples=args.latency_samples,
        latency_rate=args.latency_rate,
        rss_bundles=tuple(sorted(set(args.rss_bundles) - {0})),
        recovery_rate=args.recovery_rate,
        recovery_before_s=args.recovery_before,
        recovery_after_s=args.recovery_after,
        sample_every_s=args.sample_every,
        timeout_s=args.timeout,
        seed=args.seed,
    )


def measure(session: Session) -> dict[str, Any]:
    """Every phase, in an order where none disturbs another: the in-process engine
    is stopped before the `processor run` phases."""
    cfg = session.config
    phases: dict[str, float] = {}  # how long each took: where the run's time goes

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            phases[name] = round(time.monotonic() - started, 1)

    topics = session.deployment("topology")
    with phase("backlog"):
        bundles, events = backlog(session, topics)
        records = read_backlog(session, topics)  # the latency phase adds to the inputs
    # Before the ceilings: their 2.7 million writes leave the broker's disk
    # writing back for seconds, and the throughput measured after them was 10-30 % lower.
    with phase("throughput"):
        ours, running = topology(session, topics, bundles, events)
    try:
        with phase("latency"):
            lat = latency(session, topics, running)
    finally:
        running.stop()
    with phase("ceiling_copies"):
        sources, copies = copy_backlog(session, topics, records)
        del records
    with phase("ceiling_one_hop"):
        one_hop = ceiling(session, sources, copies, hops=1)
    with phase("ceiling_two_hops"):
        two_hops = ceiling(session, sources, copies, hops=2)
    with phase("recovery"):
        crash = recovery(session)
    rss, state = [], topics
    for n in (0, *cfg.rss_bundles):
        with phase(f"prefill_{n}"):
            state = prefill(session, n)
        with phase(f"rss_{n}"):
            rss.append(measure_rss(session, state, n))
    if not cfg.rss_bundles:
        state = topics  # the baseline's topics are empty
    # The bench's own heap (the backlog's bundles, every sample) is not a processor's:
    # out of the collector's way, the catch-ups measure the restore path, not its scans.
    gc.collect()
    gc.freeze()
    with phase("restore"):
        restore = catchup.restore(session, state.changelog)
    with phase("index"):
        index = catchup.index(session, state.input("VipBundleInitialized_v1"))
    return {
        "throughput": asdict(ours),
        "ceiling": {"one_hop": asdict(one_hop), "two_hops": asdict(two_hops)},
        "ratio": {
            "one_hop": round(ours.events_per_s / one_hop.events_per_s, 4),
            "two_hops": round(ours.events_per_s / two_hops.events_per_s, 4),
        },
        "latency": asdict(lat),
        "recovery": asdict(crash),
        "rss": [asdict(r) for r in rss],
        "restore": asdict(restore),
        "index": asdict(index),
        "phases_s": phases,
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall = time.monotonic()
    bootstrap, stop_broker = _broker(args.bootstrap_servers)
    config = _config(args, bootstrap)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
    )
    session: Session | None = None
    try:
        with progress:
            session = Session(config, progress)
            try:
                figures = measure(session)
            finally:
                session.cleanup(keep_topics=args.keep_topics)
        app = session.app
    finally:
        # Clients still open would log every refused connection once the broker stops.
        session = None
        gc.collect()
        stop_broker()
    config_json = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    return {
        "started_at": started_at,
        "application_id": app,  # prefix of the run's topics, groups and processor logs
        "wall_s": round(time.monotonic() - wall, 1),
        "config": config_json,
        "machine": machine(),
        **figures,
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
