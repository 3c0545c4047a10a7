"""Command line: `processor run | topics create | reset | simulate | demo | schemas | chaos`."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka
import msgspec
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console

from processor.admin import (
    TopicSpec,
    TopologyError,
    create_topics,
    ensure_internal_topics,
    internal_topics,
    require_topics,
)
from processor.app import build_engine
from processor.codec import Codec
from processor.connect import DEFAULT_CONNECT_TIMEOUT_S, KafkaUnreachable, wait_for_kafka
from processor.logs import setup as setup_logging
from processor.observe import serve
from processor.reset import ResetRefused, Target, iso_datetime, render, reset
from processor.runtime.parking import Backoff
from processor.simulation.runner import SimulationConfig, report, simulate
from processor.simulation.services import Knobs
from processor.topology import DEFAULT_APPLICATION_ID, Topics

log = logging.getLogger("processor")
DISTRIBUTION = "vip-bundle-process-manager"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """'100ms', '5s', '2m', '1h', '1d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 100ms, 5s, 1h")
    return float(match[1]) * _UNITS[match[2]]


def size(text: str) -> int:
    """'64MiB', '512KiB', '1GiB' or bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b|b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 64MiB, 1GiB")
    unit = (match[2] or "").lower().replace("ib", "").replace("b", "")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    return int(match[1]) * factor


def address(text: str) -> tuple[str, int] | None:
    """'HOST:PORT' (port 0: any free port), or 'off'."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT or 'off'")
    return host or "127.0.0.1", int(port)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key.strip(), value.strip()


def add_registry_options(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--schema-registry-option",
        dest="registry_options",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="SchemaRegistryClient setting (repeatable; a schema.registry. prefix is "
        "dropped), e.g. basic.auth.user.info=USER:PASSWORD, ssl.ca.location=/ca.pem, "
        "ssl.certificate.location=..., ssl.key.location=..., timeout=10",
    )


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS; default %(default)s)",
    )
    parser.add_argument(
        "--application-id",
        default=os.environ.get("VIP_APPLICATION_ID", DEFAULT_APPLICATION_ID),
        help="consumer group and prefix of internal topics; a new one starts from the "
        "earliest offsets (env VIP_APPLICATION_ID; default %(default)s)",
    )
    parser.add_argument(
        "-X",
        dest="client_config",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="librdkafka setting for every client (repeatable), e.g. -X security.protocol=SSL",
    )
    parser.add_argument(
        "--topic",
        dest="topic_overrides",
        metavar="DEFAULT=NAME",
        type=key_value,
        action="append",
        default=[],
        help="use NAME instead of the default topic name DEFAULT (repeatable), "
        "e.g. --topic events.BookingMade_v1=bookings.made",
    )
    parser.add_argument(
        "--connect-timeout",
        type=duration,
        default=os.environ.get("VIP_CONNECT_TIMEOUT", f"{DEFAULT_CONNECT_TIMEOUT_S:g}s"),
        metavar="DURATION",
        help="at start-up, give up (exit 2) when no broker answers within this; once "
        "started, broker outages are waited out (env VIP_CONNECT_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG also logs every not-ready retry and skipped event, and librdkafka's "
        "debug lines when -X debug=... asks for them (default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line (time, level, logger, message, exception) for log "
        "shippers (default %(default)s)",
    )


def _registry_args(parser: argparse.ArgumentParser, *, processor: bool = False) -> None:
    group = parser.add_argument_group("Schema Registry mode")
    group.add_argument(
        "--schema-registry",
        metavar="URL",
        default=os.environ.get("SCHEMA_REGISTRY_URL"),
        help="read and write the Confluent wire format (magic byte 0, schema id, Avro body) "
        "with the schemas in this registry (its Confluent-compatible API), subjects "
        "<topic>-value; unset: Avro single-object encoding, no registry "
        "(env SCHEMA_REGISTRY_URL)",
    )
    add_registry_options(group)
    if processor:
        group.add_argument(
            "--no-register-schemas",
            dest="register_schemas",
            action="store_false",
            help="look up the ids of our output and changelog schemas instead of registering "
            "them (for registries where the processor may only read; register them with "
            "`processor schemas register`)",
        )


def _codec(args: argparse.Namespace, writes: str) -> Any:
    """Single-object Avro, or with --schema-registry the Confluent wire format;
    `writes` is "processor" (outputs, changelog), "services" (the six events) or
    "nothing" (a reader: registers nothing)."""
    if not args.schema_registry:
        return Codec()
    from processor import registry_codec  # the registry client's HTTP stack, only if used

    client = registry_codec.make_client(args.schema_registry, dict(args.registry_options))
    topics = _topics(args)
    written = {
        "processor": registry_codec.processor_topics,
        "services": registry_codec.input_topics,
        "nothing": lambda _: {},
    }[writes](topics)
    return registry_codec.RegistryCodec(
        client, written, register=getattr(args, "register_schemas", True)
    )


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("VIP_STATE_DIR", ".local/state")),
        help="where the RocksDB stores live, under <state-dir>/<application-id> "
        "(env VIP_STATE_DIR; default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="VIP bundle process manager: an exactly-once Kafka stream processor "
        "running the VIP bundle saga (show tickets + inbound flight, refunds on failure).",
        epilog="examples:\n"
        "  processor topics create --all --partitions 12\n"
        "  processor run --bootstrap-servers broker:9092 --state-dir /var/lib/vip\n"
        "  processor simulate --bundles 500\n"
        "  processor reset --to-datetime 2026-11-23T10:00:00Z\n"
        "\n'processor COMMAND --help' shows every option of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="process events until SIGTERM/SIGINT",
        description="Join the application's consumer group and process. Creates missing "
        "internal topics and refuses mis-partitioned ones.",
    )
    _connection_args(run)
    _registry_args(run, processor=True)
    run.add_argument(
        "--instance-id",
        default=os.environ.get("VIP_INSTANCE_ID"),
        help="stable id of this instance; its transactional.id is <application-id>-<id> "
        "(env VIP_INSTANCE_ID). Default: an id kept in the state dir, so a restart reuses it",
    )
    _state_dir_arg(run)
    run.add_argument(
        "--partitions",
        type=int,
        default=12,
        help="partitions of internal topics created now (default %(default)s)",
    )
    run.add_argument(
        "--http",
        type=address,
        default=os.environ.get("VIP_HTTP", "127.0.0.1:8080"),
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz and /bundles/<id> here "
        "(env VIP_HTTP; default %(default)s; 'off' to disable)",
    )
    run.add_argument(
        "--commit-interval",
        type=duration,
        default=0.1,
        help="the longest a transaction stays open while records keep coming; more "
        "records per transaction means more throughput and more latency (default 100ms)",
    )
    run.add_argument(
        "--no-commit-when-idle",
        dest="commit_when_idle",
        action="store_false",
        help="wait out --commit-interval even when nothing more was fetched (by default a "
        "caught-up engine commits at once, for latency)",
    )
    run.add_argument(
        "--commit-timeout",
        type=duration,
        default=60.0,
        help="a commit that takes longer is given up: a new producer fences and aborts its "
        "transaction, and processing resumes from the committed offsets (default 60s)",
    )
    run.add_argument(
        "--retry-backoff-min",
        type=duration,
        default=0.1,
        help="first retry of a not-ready event (default 100ms); doubles per attempt",
    )
    run.add_argument(
        "--retry-backoff-max",
        type=duration,
        default=5.0,
        help="cap of the retry delay (default 5s)",
    )
    run.add_argument(
        "--not-ready-deadline",
        type=duration,
        default=3600.0,
        help="a not-ready event still waiting after this goes to the DLQ; the wait's start "
        "is kept in the commit metadata, so restarts do not reset it (default 1h)",
    )
    run.add_argument(
        "--max-parked",
        type=int,
        default=1000,
        metavar="N",
        help="not-ready records a task (partition) may hold parked; past it, the partitions "
        "that park pause until some complete (default %(default)s)",
    )
    run.add_argument(
        "--state-memory",
        type=size,
        default=os.environ.get("VIP_STATE_MEMORY", "64MiB"),
        metavar="SIZE",
        help="memory of every RocksDB store of this instance together: one block cache, "
        "with the memtables charged to it (env VIP_STATE_MEMORY; default %(default)s; "
        "minimum 8MiB)",
    )
    run.set_defaults(func=cmd_run)

    topics = commands.add_parser("topics", help="manage the topology's topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topic_commands.add_parser(
        "create",
        help="create the internal topics (and with --all the input and output topics)",
    )
    _connection_args(create)
    create.add_argument(
        "--partitions",
        type=int,
        default=12,
        help="partitions of each new topic; existing internal topics keep theirs and must "
        "agree (default %(default)s)",
    )
    create.add_argument(
        "--all", action="store_true", help="also create missing input and output topics"
    )
    create.set_defaults(func=cmd_topics_create)

    replay = commands.add_parser(
        "reset",
        help="replay: reset the input offsets, delete the internal topics and local state",
        description="In the spirit of kafka-streams-application-reset: refuses while the "
        "consumer group has members; resets the group's offsets on the input topics (by "
        "default to the earliest), deletes the repartition topics and the changelog, and the "
        "stores under <state-dir>/<application-id>, so that the next run replays. The DLQ "
        "<application-id>-dlq is kept unless --delete-dlq: dead letters are never lost "
        "silently.",
    )
    _connection_args(replay)
    _state_dir_arg(replay)
    to = replay.add_argument_group("where the input offsets go").add_mutually_exclusive_group()
    to.add_argument("--to-earliest", action="store_true", help="to the log start (default)")
    to.add_argument(
        "--to-datetime",
        type=iso_datetime,
        metavar="ISO8601",
        help="to the first record at or after it, e.g. 2026-11-23T10:00:00Z (no zone: UTC)",
    )
    to.add_argument(
        "--by-duration", type=duration, metavar="DURATION", help="to now minus DURATION, e.g. 2h"
    )
    dlq = replay.add_mutually_exclusive_group()
    dlq.add_argument(
        "--keep-dlq",
        dest="delete_dlq",
        action="store_false",
        help="keep the DLQ topic and its dead letters (default)",
    )
    dlq.add_argument(
        "--delete-dlq",
        dest="delete_dlq",
        action="store_true",
        help="also delete the DLQ topic: its dead letters are lost",
    )
    replay.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    replay.set_defaults(func=cmd_reset, delete_dlq=False)
    state = commands.add_parser("state", help="read an instance's local state")
    state_actions = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    get = state_actions.add_parser(
        "get",
        help="print one bundle's state from an instance's stores, read-only",
        description="Reads <state-dir>/<application-id>/<changelog>/<partition> read-only (the "
        "instance may be stopped, or running: then it shows what the instance committed) and "
        "prints the bundle as JSON. Exit 1 if no store of that instance holds it.",
    )
    get.add_argument("vip_bundle_id")
    _connection_args(get)
    _state_dir_arg(get)
    _registry_args(get)
    get.set_defaults(func=cmd_state_get)

    simulate = commands.add_parser(
        "simulate",
        help="play the ticket and flight services against a running processor and check it",
        description="Initializes bundles, answers BookShowTickets and BookFlight like the "
        "services would (late, reordered, duplicated), mixes in ordinary bookings, records "
        "every RefundTicket and VipBundleFinalized_v1, then checks them against its ground "
        "truth. Exit code 1 on any violation.",
    )
    _connection_args(simulate)
    _registry_args(simulate)
    _simulation_args(simulate)
    simulate.set_defaults(func=cmd_simulate)

    demo = commands.add_parser(
        "demo",
        help="create the topics, start `processor run` in the background, simulate, report",
        description="The whole thing on one broker: what `make run` runs.",
    )
    _connection_args(demo)
    _registry_args(demo)
    _state_dir_arg(demo)
    demo.add_argument("--partitions", type=int, default=12, help="default %(default)s")
    demo.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the processor's HTTP address (default %(default)s; 'off' to disable)",
    )
    _simulation_args(demo)
    demo.set_defaults(func=cmd_demo)
    _schemas_command(commands)
    # Imported here: processor.chaos uses this module's parsers once it is loaded.
    from processor.chaos.cli import add_chaos_command

    add_chaos_command(commands)
    return parser


def version_text() -> str:
    try:
        ours = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        ours = "(not installed)"
    return (
        f"processor {ours} (confluent-kafka {metadata.version('confluent-kafka')}, "
        f"librdkafka {confluent_kafka.libversion()[0]}, Python {platform.python_version()})"
    )


def _schemas_command(commands: argparse._SubParsersAction) -> None:
    schemas = commands.add_parser("schemas", help="Schema Registry: register our schemas")
    actions = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    register = actions.add_parser(
        "register",
        help="register the writer schemas of the topics the processor writes",
        description="Register, under TopicNameStrategy subjects (<topic>-value), the Avro\n"
        "schemas the processor writes with: the four outputs and the changelog\n"
        "(<application-id>-vip-bundles-changelog); with --inputs the six input topics too.\n"
        "For registries where the processor itself may not register. Idempotent: a schema\n"
        "already registered keeps its id.\n\n"
        "Exit 0 when all are registered (or, with --check, compatible); 2 when a subject's\n"
        "compatibility rule refuses a schema or an option is wrong; 1 when the registry\n"
        "cannot be reached.",
        epilog="examples:\n"
        "  processor schemas register --schema-registry http://registry:8081\n"
        "  processor schemas register --inputs --compatibility BACKWARD \\\n"
        "      --schema-registry-option basic.auth.user.info=user:secret\n"
        "  processor schemas register --check   # test compatibility, register nothing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    register.add_argument(
        "--schema-registry",
        metavar="URL",
        default=os.environ.get("SCHEMA_REGISTRY_URL"),
        help="the registry's Confluent-compatible API, e.g. http://127.0.0.1:28081/apis/ccompat/v7 "
        "for the local Apicurio (env SCHEMA_REGISTRY_URL; required)",
    )
    add_registry_options(register)
    register.add_argument(
        "--application-id",
        default=os.environ.get("VIP_APPLICATION_ID", DEFAULT_APPLICATION_ID),
        help="names the changelog topic (env VIP_APPLICATION_ID; default %(default)s)",
    )
    register.add_argument(
        "--topic",
        dest="topic_overrides",
        metavar="DEFAULT=NAME",
        type=key_value,
        action="append",
        default=[],
        help="use NAME instead of the default topic name DEFAULT (repeatable), as for run",
    )
    register.add_argument(
        "--inputs",
        action="store_true",
        help="also the six input topics (for producers of events, tests and the simulator)",
    )
    mode = register.add_mutually_exclusive_group()
    mode.add_argument(
        "--compatibility",
        type=str.upper,
        metavar="LEVEL",
        help="first set this compatibility rule on each subject: BACKWARD, FORWARD, FULL, "
        "their _TRANSITIVE forms, or NONE (default: leave the rules as they are)",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="only test each schema against its subject's rule; register nothing",
    )
    register.add_argument(
        "--schema-dir",
        type=Path,
        metavar="DIR",
        help="the schemas/ folder (default: the one the codec reads: env VIP_SCHEMA_DIR, "
        "else schemas/ beside the package)",
    )
    register.set_defaults(func=cmd_schemas_register, log_level="INFO", log_format="text")


def _simulation_args(parser: argparse.ArgumentParser) -> None:
    knobs = Knobs()
    group = parser.add_argument_group("simulation")
    group.add_argument("--bundles", type=int, default=200, help="default %(default)s")
    group.add_argument(
        "--rate", type=float, default=50.0, help="new bundles per second (default %(default)s)"
    )
    for name, default, what in [
        ("booking-failure-rate", knobs.booking_failure_rate, "share of show bookings that fail"),
        ("flight-failure-rate", knobs.flight_failure_rate, "share of flight bookings that fail"),
        ("duplicate-rate", knobs.duplicate_rate, "share of events delivered twice"),
        (
            "late-confirmation-rate",
            knobs.late_confirmation_rate,
            "share of a failing bundle's confirmations sent after the flight failure",
        ),
        ("ordinary-booking-rate", knobs.ordinary_booking_rate, "non-VIP bookings per bundle"),
        ("null-key-rate", knobs.null_key_rate, "share of events sent with a null key"),
    ]:
        group.add_argument(f"--{name}", type=float, default=default, help=f"{what} ({default})")
    group.add_argument("--max-tickets", type=int, default=knobs.max_tickets)
    group.add_argument(
        "--max-delay", type=duration, default=knobs.max_delay_s, help="longest event delay (1s)"
    )
    group.add_argument("--timeout", type=duration, default=120.0, help="give up after (120s)")
    group.add_argument(
        "--seed",
        type=int,
        default=None,
        help="same seed, same world (ids included: reuse one only on fresh topics); "
        "default: a new world every run",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _simulation_config(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        bootstrap_servers=args.bootstrap_servers,
        topics=_topics(args),
        bundles=args.bundles,
        rate=args.rate,
        knobs=Knobs(
            booking_failure_rate=args.booking_failure_rate,
            flight_failure_rate=args.flight_failure_rate,
            duplicate_rate=args.duplicate_rate,
            late_confirmation_rate=args.late_confirmation_rate,
            ordinary_booking_rate=args.ordinary_booking_rate,
            null_key_rate=args.null_key_rate,
            max_tickets=args.max_tickets,
            max_delay_s=args.max_delay,
        ),
        timeout_s=args.timeout,
        seed=args.seed if args.seed is not None else random.randrange(2**32),
        client_config=dict(args.client_config),
        codec=_codec(args, writes="services"),
    )


def _topics(args: argparse.Namespace) -> Topics:
    return Topics(args.application_id, dict(args.topic_overrides))


def _admin(args: argparse.Namespace) -> AdminClient:
    """An AdminClient once the brokers answer; KafkaUnreachable after --connect-timeout."""
    return wait_for_kafka(args.bootstrap_servers, dict(args.client_config), args.connect_timeout)


def instance_id(state_dir: Path) -> str:
    """An id kept beside the stores: stable across restarts of this instance,
    distinct for instances with their own state dirs (as Kafka Streams' process id)."""
    path = state_dir / "instance-id"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex[:12]
    path.write_text(new + "\n")
    return new


def cmd_run(args: argparse.Namespace) -> int:
    if args.state_memory < 8 << 20:
        log.error("--state-memory %d bytes is below the 8MiB minimum", args.state_memory)
        return 2
    topics = _topics(args)
    admin = _admin(args)
    require_topics(admin, topics.inputs, "input")
    require_topics(admin, topics.outputs, "output")
    partitions = ensure_internal_topics(admin, topics, args.partitions)
    # Nothing would poll it while the engine runs: its log lines would queue up unserved.
    del admin
    state_dir = args.state_dir / args.application_id
    codec = _codec(args, writes="processor")
    engine = build_engine(
        bootstrap_servers=args.bootstrap_servers,
        topics=topics,
        instance_id=args.instance_id or instance_id(state_dir),
        state_dir=state_dir,
        client_config=dict(args.client_config),
        codec=codec,
        commit_interval_s=args.commit_interval,
        commit_timeout_s=args.commit_timeout,
        commit_when_idle=args.commit_when_idle,
        backoff=Backoff(args.retry_backoff_min, args.retry_backoff_max, args.not_ready_deadline),
        max_parked=args.max_parked,
        state_memory=args.state_memory,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: engine.stop())
    log.info(
        "instance %s of %s on %s: %d partitions, state in %s (%d MiB of RocksDB memory, "
        "table files written %s)",
        engine.config.instance_id,
        engine.config.application_id,
        engine.config.bootstrap_servers,
        partitions,
        state_dir,
        engine.memory.total_bytes >> 20,
        "with O_DIRECT" if engine.memory.direct_writes else "buffered",
    )
    try:
        server = serve(engine, codec, *args.http) if args.http else None
    except OSError as exc:
        log.error(
            "cannot serve HTTP on %s:%d (%s); pass --http HOST:PORT or --http off",
            *args.http,
            exc.strerror,
        )
        return 2
    try:
        engine.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


def cmd_state_get(args: argparse.Namespace) -> int:
    from processor.domain.messages import VipBundle
    from processor.runtime.store import read_only

    stores = args.state_dir / args.application_id / _topics(args).changelog
    key = args.vip_bundle_id.encode()
    for partition, db in read_only(stores):
        raw = db.get(key)
        if raw is not None:
            bundle = _codec(args, writes="nothing").decode(raw, VipBundle)
            print(msgspec.json.format(msgspec.json.encode(bundle)).decode())
            log.info("from the store of partition %s in %s", partition, stores)
            return 0
    log.error("no store in %s holds bundle %s", stores, args.vip_bundle_id)
    return 1


def cmd_topics_create(args: argparse.Namespace) -> int:
    topics = _topics(args)
    admin = _admin(args)
    if args.all:
        created = create_topics(
            admin, [TopicSpec(t, args.partitions) for t in (*topics.inputs, *topics.outputs)]
        )
        print("\n".join(f"created {name}" for name in created) or "inputs and outputs exist")
    existing = set(admin.list_topics(timeout=30).topics)
    ensure_internal_topics(admin, topics, args.partitions)
    for spec in internal_topics(topics, args.partitions):
        state = "exists" if spec.name in existing else "created"
        print(f"{state} {spec.name}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    target = Target.of(args.to_datetime, args.by_duration)
    admin = _admin(args)
    try:
        rows = reset(
            admin,
            _topics(args),
            args.state_dir / args.application_id,
            target,
            delete_dlq=args.delete_dlq,
            dry_run=args.dry_run,
        )
    except ResetRefused as exc:
        log.error("refusing to reset: %s", exc)
        return 2
    outcome = "dry run, nothing changed" if args.dry_run else "done, the next run replays"
    print(render(rows, f"reset of {args.application_id} to {target}: {outcome}"))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    _admin(args)  # the brokers answer, or exit 2 with why
    console = Console(stderr=True, quiet=args.no_progress)
    result = simulate(_simulation_config(args), console)
    report(result, Console())
    return 0 if result.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    topics = _topics(args)
    admin = _admin(args)
    create_topics(admin, [TopicSpec(t, args.partitions) for t in (*topics.inputs, *topics.outputs)])
    ensure_internal_topics(admin, topics, args.partitions)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.state_dir / "processor.log"
    forwarded = [
        "--bootstrap-servers",
        args.bootstrap_servers,
        "--application-id",
        args.application_id,
        "--state-dir",
        str(args.state_dir),
        "--partitions",
        str(args.partitions),
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
        "--connect-timeout",
        f"{args.connect_timeout:g}s",
        "--http",
        args.http,
    ]
    forwarded += [f"-X{k}={v}" for k, v in args.client_config]
    forwarded += [f"--topic={k}={v}" for k, v in args.topic_overrides]
    if args.schema_registry:
        forwarded += ["--schema-registry", args.schema_registry]
        forwarded += [f"--schema-registry-option={k}={v}" for k, v in args.registry_options]
    with log_path.open("a") as log_file:
        processor = subprocess.Popen(
            [sys.executable, "-m", "processor", "run", *forwarded],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    log.info("processor started (pid %d), logging to %s", processor.pid, log_path)
    try:
        console = Console(stderr=True, quiet=args.no_progress)
        result = simulate(_simulation_config(args), console)
    finally:
        processor.send_signal(signal.SIGTERM)
        code = processor.wait(60)
    report(result, Console())
    if code != 0:
        log.error("the processor exited with %d; see %s", code, log_path)
        return 1
    return 0 if result.ok else 1


def cmd_schemas_register(args: argparse.Namespace) -> int:
    # Imported here: the registry client's HTTP stack is not needed by the other commands.
    from processor import registry
    from processor.codec import DEFAULT_SCHEMA_DIR

    if not args.schema_registry:
        log.error("no registry: pass --schema-registry URL or set SCHEMA_REGISTRY_URL")
        return 2
    try:
        client = registry.make_client(args.schema_registry, args.registry_options)
        found = registry.load_writer_schemas(args.schema_dir or DEFAULT_SCHEMA_DIR)
        schemas = registry.processor_topic_schemas(_topics(args), found, inputs=args.inputs)
        if args.compatibility:
            for topic in schemas:
                registry.set_compatibility(client, args.compatibility, topic)
        if args.check:
            refused = [t for t, s in schemas.items() if not registry.is_compatible(client, t, s)]
            for topic in schemas:
                verdict = "REFUSED" if topic in refused else "compatible"
                print(f"{verdict:<10} {registry.subject_for(topic)}")
            return 2 if refused else 0
        ids = registry.register_schemas(client, schemas)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        # Bad options, an unknown compatibility level, a missing schema folder;
        # IncompatibleSchema is a ValueError too.
        log.error("%s", exc)
        return 2
    except registry.RegistryUnavailable as exc:
        log.error("registry %s: %s", args.schema_registry, exc)
        return 1
    for topic, schema_id in ids.items():
        print(f"id {schema_id:<6} {registry.subject_for(topic)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except KafkaUnreachable as exc:
        log.error("%s", exc)
        return 2
    except TopologyError as exc:
        log.error("%s", exc)
        return 2
    except KafkaException as exc:
        log.error("Kafka: %s", exc.args[0])
        return 1


if __name__ == "__main__":
    sys.exit(main())
