"""`processor chaos`: its options, presets and verdict."""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from processor.chaos.run import ChaosConfig, report, run_chaos
from processor.chaos.timeline import Schedule
from processor.localkafka import LocalKafkaError
from processor.simulation.services import Knobs

# --size: what `make test` runs, and the long run of the README.
PRESETS: dict[str, dict[str, object]] = {
    "ci": {
        "bundles": 300,
        "duration": 60.0,
        "drain": 90.0,
        "fuzz": 1000,
        "near_max": 6,
        "partitions": 6,
        "kill_every": (3.0, 6.0),
        "coordinator_down": 4.0,
    },
    # Ten minutes of traffic at about 33 bundles/s (≈200 events/s), the size;
    # --bundles goes as far as the engine and the machine do.
    "long": {
        "bundles": 20000,
        "duration": 600.0,
        "drain": 300.0,
        "fuzz": 5000,
        "near_max": 20,
        "partitions": 6,
        "kill_every": (5.0, 10.0),
        "coordinator_down": 8.0,
    },
}


def _duration(text: str) -> float:
    from processor.cli import duration  # the CLI's own parser (no import cycle at load)

    return duration(text)


def _span(text: str) -> tuple[float, float]:
    """'3s-6s' -> (3.0, 6.0)."""
    match = re.fullmatch(r"\s*([^-\s]+)\s*-\s*([^-\s]+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN-MAX, e.g. 3s-6s")
    low, high = _duration(match[1]), _duration(match[2])
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN is above MAX")
    return low, high


def add_chaos_command(commands: argparse._SubParsersAction) -> None:
    chaos = commands.add_parser(
        "chaos",
        help="the processor under overlapping faults and fuzzed input, checked end to end",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Runs three `processor run` instances (subprocesses, instance ids p1..p3, own state
dirs and logs) against the local three-node cluster (started if not running)
under the simulator's ticket and flight services, and meanwhile:

  - scales the instances 1 -> 3 -> 1 (the last two stop gracefully, SIGTERM);
  - every few seconds SIGKILLs a random instance and restarts it;
  - stops the node coordinating the group, later the node coordinating one
    instance's transactions, and starts each again;
  - interleaves fuzzed records with the good traffic on all six inputs: random
    bytes, empty and null values, truncated Avro, unknown fingerprints, another
    event's Avro, bad UUIDs, zero or negative ticket counts, passengers !=
    tickets, values near the topic's maximum size, events of no bundle; keys
    null, UUIDs or bytes.

Then it stops everything, reads the outputs and the DLQ (read_committed) and
checks: every bundle finalized once with the right flag; refunds exactly the
confirmed tickets; no command or event twice by idempotency key and no output
of a bundle that was never started; every undecodable or invalid fuzzed record
in the DLQ exactly once with its key, value, headers and the six
__streams.errors.* headers (events of no bundle are skipped, not dead-lettered);
no instance that exited on its own. It prints kills, restarts, coordinator
moves, records, and the time from each SIGKILL until the victim's partitions
published again (p50, max).

Every run has its own application id (chaos-<time>-<hex>) and topics, deleted
at the end unless --keep-topics; instance logs and result.json stay in
<work-dir>/<application id>. Exit 0 on a pass, 1 on any violation, 2 when the
run could not be set up.""",
        epilog="""\
sizes:
  --size ci     300 bundles over 60s, 1000 fuzzed records, 6 partitions (make test)
  --size long   20000 bundles over 10m, 5000 fuzzed records, 6 partitions
  every other option overrides the preset.

examples:
  processor chaos                              # the CI size, ~2 minutes
  processor chaos --size long                  # make chaos SIZE=long
  processor chaos --bundles 2000 --duration 3m --kill-every 2s-4s --seed 7
  processor chaos --bootstrap-servers host:9092  # no coordinator moves there""",
    )
    chaos.add_argument("--size", choices=sorted(PRESETS), default="ci", help="preset (ci)")
    sizes = chaos.add_argument_group("size (default: the preset's)")
    sizes.add_argument("--bundles", type=int, help="VIP bundles the services start")
    sizes.add_argument(
        "--duration", type=_duration, metavar="DURATION", help="they start evenly over this"
    )
    sizes.add_argument(
        "--drain",
        type=_duration,
        metavar="DURATION",
        help="after it, the longest to wait for every bundle to finish",
    )
    sizes.add_argument("--fuzz", type=int, help="fuzzed records (at least the six kinds' worth)")
    sizes.add_argument("--near-max", type=int, help="of them, records near the maximum size")
    sizes.add_argument("--partitions", type=int, help="internal partitions (tasks)")
    faults = chaos.add_argument_group("faults")
    faults.add_argument("--instances", type=int, default=3, help="at the peak (3)")
    faults.add_argument(
        "--kill-every", type=_span, metavar="MIN-MAX", help="between SIGKILLs, e.g. 3s-6s"
    )
    faults.add_argument(
        "--restart-after",
        type=_span,
        default=(0.2, 2.0),
        metavar="MIN-MAX",
        help="from a SIGKILL to the restart (200ms-2s)",
    )
    faults.add_argument(
        "--coordinator-down",
        type=_duration,
        metavar="DURATION",
        help="how long a coordinator node stays stopped",
    )
    faults.add_argument(
        "--broker-signal",
        choices=["term", "kill"],
        default="term",
        help="stop coordinator nodes with SIGTERM (controlled shutdown) or SIGKILL (term)",
    )
    faults.add_argument(
        "--no-coordinator-moves", action="store_true", help="leave the brokers alone"
    )
    faults.add_argument(
        "--session-timeout",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="the instances' session.timeout.ms (10s): a killed instance that is not back "
        "by then loses its partitions to the others",
    )
    where = chaos.add_argument_group("where")
    where.add_argument(
        "--bootstrap-servers",
        help="use these brokers instead of the local three-node cluster; coordinator moves "
        "need the local cluster",
    )
    where.add_argument(
        "-X",
        dest="client_config",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="librdkafka setting for every client, the instances' too (repeatable)",
    )
    where.add_argument(
        "--processor-arg",
        dest="processor_args",
        metavar="ARG",
        action="append",
        default=[],
        help="extra argument for every `processor run` (repeatable), e.g. "
        "--processor-arg=--commit-interval=50ms",
    )
    where.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".local/chaos"),
        help="instance state and logs, result.json (default %(default)s)",
    )
    where.add_argument(
        "--keep-topics", action="store_true", help="do not delete the run's topics at the end"
    )
    chaos.add_argument("--seed", type=int, help="same seed, same world and faults (default: new)")
    chaos.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    chaos.add_argument("--no-progress", action="store_true", help="no progress display")
    chaos.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="of the run itself; the instances log INFO to their files (default %(default)s)",
    )
    chaos.set_defaults(func=cmd_chaos, log_format="text")


def config_from(args: argparse.Namespace) -> ChaosConfig:
    preset = PRESETS[args.size]

    def pick(name: str) -> object:
        value = getattr(args, name)
        return preset[name] if value is None else value

    duration = float(pick("duration"))  # type: ignore[arg-type]
    schedule = Schedule(
        traffic_s=duration,
        instances=args.instances,
        kill_every_s=pick("kill_every"),  # type: ignore[arg-type]
        restart_after_s=args.restart_after,
        coordinator_down_s=float(pick("coordinator_down")),  # type: ignore[arg-type]
        broker_kill=args.broker_signal == "kill",
    )
    if args.no_coordinator_moves:
        schedule = replace(schedule, group_move_at=None, transaction_move_at=None)
    client_config = {}
    for item in args.client_config:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-X {item!r} is not KEY=VALUE")
        client_config[key] = value
    return ChaosConfig(
        bootstrap_servers=args.bootstrap_servers,
        bundles=int(pick("bundles")),  # type: ignore[arg-type]
        traffic_s=duration,
        drain_s=float(pick("drain")),  # type: ignore[arg-type]
        fuzz=int(pick("fuzz")),  # type: ignore[arg-type]
        near_max=int(pick("near_max")),  # type: ignore[arg-type]
        partitions=int(pick("partitions")),  # type: ignore[arg-type]
        schedule=schedule,
        knobs=Knobs(null_key_rate=0.05),
        session_timeout_ms=int(args.session_timeout * 1000),
        client_config=client_config,
        processor_args=tuple(args.processor_args),
        seed=args.seed if args.seed is not None else random.randrange(2**32),
        work_dir=args.work_dir,
        keep_topics=args.keep_topics,
    )


def cmd_chaos(args: argparse.Namespace) -> int:
    config = config_from(args)
    console = Console()
    try:
        result = run_chaos(config, console, Console(stderr=True, quiet=args.no_progress))
    except LocalKafkaError as exc:
        console.print(f"[red]cannot set up the run: {exc}[/]")
        return 2
    report(result, console)
    if args.json:
        args.json.write_text(json.dumps({"problems": result.problems, **result.figures}, indent=2))
    return 0 if result.ok else 1
