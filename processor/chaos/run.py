"""A whole chaos run: set up, run the timeline beside the simulation, check, report."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from processor.admin import TopicSpec, create_topics, ensure_internal_topics
from processor.chaos.fuzz import NEAR_MAX, Fuzzer, Generator, fuzz_producer
from processor.chaos.recovery import (
    Kill,
    Outputs,
    Percentiles,
    percentiles,
    ready_percentiles,
    recover,
)
from processor.chaos.supervisor import Exit, Supervisor, run_command
from processor.chaos.timeline import Conductor, Schedule
from processor.chaos.verdict import DeadLetters, check_dead_letters, check_outputs, read_all
from processor.localkafka.cluster import LocalCluster, get_cluster
from processor.logs import client_logging
from processor.simulation.check import summary
from processor.simulation.runner import Simulation, SimulationConfig
from processor.simulation.services import Knobs
from processor.topology import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChaosConfig:
    bootstrap_servers: str | None = None  # None: the local three-node cluster
    bundles: int = 300
    traffic_s: float = 60.0  # bundles start evenly over this window
    drain_s: float = 90.0  # after it, the longest to wait for every bundle to finish
    fuzz: int = 1000
    near_max: int = 6  # of the fuzzed records, this many near the maximum size
    partitions: int = 6  # internal (tasks)
    input_partitions: tuple[int, ...] = (3, 2, 4)  # cycled over the six inputs
    output_partitions: int = 3
    schedule: Schedule = field(default_factory=lambda: Schedule(traffic_s=60.0))
    knobs: Knobs = field(default_factory=lambda: Knobs(null_key_rate=0.05))
    session_timeout_ms: int = 10_000
    client_config: dict[str, str] = field(default_factory=dict)
    processor_args: tuple[str, ...] = ()
    seed: int = 0
    work_dir: Path = Path(".local/chaos")
    keep_topics: bool = False
    max_unexpected_exits: int = 10  # past it the run gives up: an instance crash-loops
    ready_timeout_s: float = 120.0


@dataclass
class ChaosResult:
    application_id: str
    bootstrap: str
    problems: list[str]
    figures: dict[str, Any]
    summary_rows: list[tuple[str, str, str]]
    kills: list[Kill]
    exits: list[Exit]
    work_dir: Path

    @property
    def ok(self) -> bool:
        return not self.problems


def _topics(app: str) -> Topics:
    """The run's own input and output topics: a fresh application id would otherwise
    replay every earlier run's inputs, and their outputs would mix with ours."""
    defaults = Topics()
    return Topics(app, {name: f"{app}.{name}" for name in (*defaults.inputs, *defaults.outputs)})


def _max_message_bytes(admin: AdminClient, topic: str) -> int:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return int(configs["max.message.bytes"].value)


def _create_topics(admin: AdminClient, topics: Topics, config: ChaosConfig) -> None:
    sizes = itertools.cycle(config.input_partitions)
    create_topics(admin, [TopicSpec(t, next(sizes)) for t in topics.inputs])
    create_topics(admin, [TopicSpec(t, config.output_partitions) for t in topics.outputs])
    ensure_internal_topics(admin, topics, config.partitions)


def _delete_topics(admin: AdminClient, topics: Topics) -> None:
    names = [*topics.inputs, *topics.outputs, *topics.repartitions, topics.changelog, topics.dlq]
    for future in admin.delete_topics(names, operation_timeout=60).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=60)


def _cluster_for(bootstrap: str | None, console: Console) -> tuple[str, LocalCluster | None]:
    """The bootstrap to use, and the local cluster when the run may stop its nodes."""
    local = get_cluster()
    if bootstrap is None:
        if not local.running():
            console.print("[bold]starting the local three-node cluster[/]")
        return local.up(), local
    if bootstrap == local.bootstrap and local.running():
        return bootstrap, local
    console.print(
        f"[yellow]{bootstrap} is not the local cluster: no coordinator moves (the run can "
        "only stop nodes it runs)[/]"
    )
    return bootstrap, None


def run_chaos(config: ChaosConfig, console: Console, progress_console: Console) -> ChaosResult:
    bootstrap, cluster = _cluster_for(config.bootstrap_servers, console)
    app = f"chaos-{time.strftime('%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    topics = _topics(app)
    work = config.work_dir / app
    common = {"bootstrap.servers": bootstrap, **config.client_config, **client_logging()}
    admin = AdminClient(common)
    _create_topics(admin, topics, config)
    max_bytes = _max_message_bytes(admin, topics.inputs[0])
    client = {
        "session.timeout.ms": str(config.session_timeout_ms),
        "heartbeat.interval.ms": str(max(config.session_timeout_ms // 10, 500)),
        **config.client_config,
    }
    command = run_command(
        bootstrap, app, config.partitions, dict(topics.overrides), client, config.processor_args
    )
    supervisor = Supervisor(command, work)
    metadata = admin.list_topics(timeout=30).topics
    output_tps = [(t, p) for t in topics.outputs for p in metadata[t].partitions]
    conductor = Conductor(config.schedule, supervisor, cluster, app, output_tps, admin, config.seed)
    console.print(
        f"chaos run [bold]{app}[/] on {bootstrap}: {config.bundles} bundles over "
        f"{config.traffic_s:.0f}s, {config.fuzz} fuzzed records, "
        f"{config.schedule.instances} instances; logs in {work}"
    )
    seen = Outputs(config.partitions)
    fuzzer = Fuzzer(
        fuzz_producer(bootstrap, max_bytes, config.client_config),
        Generator(topics, max_bytes, config.seed).stream(config.fuzz, config.near_max),
        config.fuzz,
        config.traffic_s * 0.9,
    )
    problems: list[str] = []
    simulation: Simulation | None = None
    started = time.monotonic()
    try:
        if not conductor.start_first(config.ready_timeout_s):
            problems.append(f"p1 was not ready within {config.ready_timeout_s:.0f}s")
        simulation = Simulation(
            SimulationConfig(
                bootstrap,
                topics,
                bundles=config.bundles,
                rate=config.bundles / config.traffic_s,
                knobs=config.knobs,
                timeout_s=config.traffic_s + config.drain_s,
                settle_s=3.0,
                seed=config.seed,
                client_config=dict(config.client_config),
            ),
            on_output=lambda msg, _m, bundle, at: seen.saw(
                bundle, msg.topic(), msg.partition(), msg.offset(), at
            ),
        )
        conductor.begin()
        _drive(simulation, fuzzer, conductor, supervisor, config, progress_console)
    finally:
        conductor.stop()
        fuzzer.flush()
        sim_result = simulation.close() if simulation is not None else None
        supervisor.shutdown()
        if cluster is not None:
            cluster.up()  # every node back, whatever happened
    elapsed = time.monotonic() - started
    if len(supervisor.exits) > config.max_unexpected_exits:
        problems.append(f"gave up after {len(supervisor.exits)} unexpected instance exits")
    assert sim_result is not None

    console.print("reading every output and dead letter back (read_committed) ...")
    read_started = time.monotonic()
    outputs = read_all(bootstrap, topics.outputs, config.client_config)
    letters = read_all(bootstrap, [topics.dlq], config.client_config)
    read_s = time.monotonic() - read_started
    references = {f.reference for f in fuzzer.ledger if f.reference}
    checked = check_outputs(outputs, sim_result.plans, sim_result.ordinary_references, references)
    dead = check_dead_letters(fuzzer.ledger, letters)
    recover(conductor.kills, seen)
    recovery = percentiles(conductor.kills)

    problems += checked.problems + dead.problems()
    if sim_result.timed_out:
        problems.append(
            f"not every bundle finished within {config.traffic_s + config.drain_s:.0f}s"
        )
    problems += [f"fuzzed #{f.seq} ({f.kind}) refused by the broker: {f.error}"
                 for f in fuzzer.ledger if f.error]  # fmt: skip
    problems += [f"instance {e.instance} {e.what} (code {e.code})" for e in supervisor.exits]
    problems += [f"fault not injected: {failure}" for failure in conductor.failures]
    problems += [f"{m.describe()}: {m.error}" for m in conductor.moves if m.error]
    if cluster is not None and len(conductor.moves) < _planned_moves(config.schedule):
        problems.append(
            f"{len(conductor.moves)} coordinator moves of {_planned_moves(config.schedule)} planned"
        )

    figures = _figures(
        config, sim_result, fuzzer, conductor, supervisor, dead, recovery, len(outputs),
        len(letters), elapsed, read_s,
    )  # fmt: skip
    figures["coordinator_moves_planned"] = (
        _planned_moves(config.schedule) if cluster is not None else 0
    )
    result = ChaosResult(
        app,
        bootstrap,
        problems,
        figures,
        summary(sim_result.plans, checked.observed),
        conductor.kills,
        supervisor.exits,
        work,
    )
    work.mkdir(parents=True, exist_ok=True)
    (work / "result.json").write_text(json.dumps({"problems": problems, **figures}, indent=2))
    if not config.keep_topics:
        _delete_topics(admin, topics)
    if result.ok:
        for name in supervisor.instances:  # the stores; the logs stay
            shutil.rmtree(supervisor.instance(name).state_dir, ignore_errors=True)
    return result


def _planned_moves(schedule: Schedule) -> int:
    return sum(at is not None for at in (schedule.group_move_at, schedule.transaction_move_at))


def _drive(
    simulation: Simulation,
    fuzzer: Fuzzer,
    conductor: Conductor,
    supervisor: Supervisor,
    config: ChaosConfig,
    console: Console,
) -> None:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    said: dict[str, int] = {"kills": 0, "moves": 0, "exits": 0, "scale": 0}

    def tell(what: str, items: list[Any], line: Callable[[Any], str]) -> None:
        for item in items[said[what] :]:
            progress.console.log(line(item))
        said[what] = len(items)

    with progress:
        bar = progress.add_task("bundles finalized", total=config.bundles, detail="")
        while not simulation.finished:
            simulation.step()
            fuzzer.step(time.monotonic() - conductor.started_at)
            conductor.tend()
            tell("kills", conductor.kills, lambda k: f"SIGKILL {k.instance} {list(k.partitions)}")
            tell("moves", conductor.moves, lambda m: m.describe())
            tell("scale", conductor.scale_events, lambda e: f"{e[1]}: {e[2]} instances")
            tell("exits", supervisor.exits, lambda e: f"[red]{e.instance} {e.what}[/]")
            progress.update(
                bar,
                completed=simulation.finalized,
                detail=(
                    f"{len(supervisor.running())} up · {len(conductor.kills)} kills · "
                    f"{len(conductor.moves)} moves · fuzz {fuzzer.sent}/{fuzzer.total} · "
                    f"{simulation.sent} events · {simulation.observed.records} outputs"
                ),
            )
            if len(supervisor.exits) > config.max_unexpected_exits:
                progress.console.log("[red]too many unexpected exits: giving up[/]")
                return


def _figures(
    config: ChaosConfig,
    sim: Any,
    fuzzer: Fuzzer,
    conductor: Conductor,
    supervisor: Supervisor,
    dead: DeadLetters,
    recovery: Percentiles,
    outputs: int,
    letters: int,
    elapsed: float,
    read_s: float,
) -> dict[str, Any]:
    kinds = fuzzer.kinds()
    return {
        "bundles": len(sim.plans),
        "bundles_finalized": sum(1 for b in sim.plans if sim.observed.finals.get(b)),
        "events_sent": sim.events_sent,
        "ordinary_bookings": sim.ordinary_bookings,
        "fuzzed": fuzzer.sent,
        "fuzzed_null_keys": sum(1 for f in fuzzer.ledger if f.key is None),
        "fuzzed_near_max": kinds[NEAR_MAX],
        "fuzzed_kinds": dict(sorted(kinds.items())),
        "fuzzed_for_dlq": dead.expected,
        "fuzzed_in_dlq_once": dead.found,
        "dlq_exceptions": dict(dead.exceptions),
        "records_in": sim.events_sent + fuzzer.sent,
        "outputs": outputs,
        "dead_letters": letters,
        "kills": len(conductor.kills),
        "restarts": conductor.restarts,
        "graceful_stops": sum(1 for e in conductor.scale_events if e[1].startswith("stop")),
        "instance_starts": sum(i.starts for i in supervisor.instances.values()),
        "unexpected_exits": len(supervisor.exits),
        "coordinator_moves": [
            {
                "role": m.role,
                "of": m.of,
                "node": m.node,
                "moved_to": m.moved_to,
                "moved_after_s": m.moved_after_s,
                "signal": m.signal,
                "down_s": (m.restarted_at or m.stopped_at) - m.stopped_at,
            }
            for m in conductor.moves
        ],
        "recovery_s": asdict(recovery),
        "ready_after_kill_s": asdict(ready_percentiles(conductor.kills)),
        "kills_detail": [
            {
                "instance": k.instance,
                "at_s": k.at - conductor.started_at,
                "partitions": list(k.partitions),
                "restarted_after_s": k.restarted_at - k.at if k.restarted_at else None,
                "ready_after_s": k.ready_at - k.at if k.ready_at else None,
                "outputs_again_after_s": k.recovery_s,
            }
            for k in conductor.kills
        ],
        "elapsed_s": elapsed,
        "final_read_s": read_s,
        "seed": config.seed,
    }


def report(result: ChaosResult, console: Console) -> None:
    f = result.figures
    table = Table(title=f"Chaos run {result.application_id}", title_justify="left")
    table.add_column("")
    table.add_column("expected", justify="right")
    table.add_column("observed", justify="right")
    for row in result.summary_rows:
        table.add_row(*row)
    table.add_row("events sent (good)", "", str(f["events_sent"]))
    table.add_row(
        "fuzzed records", "", f"{f['fuzzed']} ({f['fuzzed_null_keys']} null keys, "
        f"{f['fuzzed_near_max']} near max size)"
    )  # fmt: skip
    table.add_row(
        "fuzzed -> DLQ exactly once", str(f["fuzzed_for_dlq"]), str(f["fuzzed_in_dlq_once"])
    )
    table.add_row(
        "fuzzed, not of a bundle (skipped)", str(f["fuzzed_kinds"].get("unknown-bundle", 0)), "-"
    )
    table.add_row("outputs / dead letters read", "", f"{f['outputs']} / {f['dead_letters']}")
    table.add_row("SIGKILLs / restarts", "", f"{f['kills']} / {f['restarts']}")
    table.add_row("graceful stops (scale 3 -> 1)", "", str(f["graceful_stops"]))
    table.add_row("instances that exited on their own", "0", str(f["unexpected_exits"]))
    if not f["coordinator_moves_planned"]:
        table.add_row("coordinator moves", "", "none (not asked for, or not the local cluster)")
    for move in f["coordinator_moves"]:
        table.add_row(
            f"{move['role']} coordinator stopped ({move['signal']})",
            "",
            f"node {move['node']} -> {move['moved_to']} in {move['moved_after_s'] or 0:.1f}s, "
            f"down {move['down_s']:.0f}s",
        )
    ready = f["ready_after_kill_s"]
    if ready["count"]:
        table.add_row(
            "SIGKILL -> restarted instance ready (p50 / max)",
            "",
            f"{ready['p50']:.2f}s / {ready['max']:.2f}s",
        )
    rec = f["recovery_s"]
    if rec["count"]:
        table.add_row(
            "SIGKILL -> outputs again (p50 / max)",
            "",
            f"{rec['p50']:.2f}s / {rec['max']:.2f}s (of {rec['count']} kills)",
        )
    table.add_row("time", "", f"{f['elapsed_s']:.0f}s (+{f['final_read_s']:.0f}s final read)")
    console.print(table)
    if result.ok:
        console.print(
            "[bold green]PASS[/]: every bundle finalized once, refunds exactly right, no output "
            "twice, every bad record dead-lettered once, no instance died on its own"
        )
        return
    console.print(f"[bold red]FAIL[/]: {len(result.problems)} violation(s)")
    for problem in result.problems[:30]:
        console.print(f"  - {problem}")
    if len(result.problems) > 30:
        console.print(f"  ... and {len(result.problems) - 30} more")
    for exit in result.exits[:3]:
        console.print(f"[bold]{exit.instance}[/] {exit.what}; its log ended:\n{exit.log_tail}")
    console.print(f"logs: {result.work_dir}")
