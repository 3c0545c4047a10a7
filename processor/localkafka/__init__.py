"""A genuine Apache Kafka broker for local runs and tests, without Docker.

The broker jars come from Maven Central through ``mvn`` (see ``pom.xml`` beside this file) and are
cached under ``<repo>/.local/kafka/libs/``; the broker runs as a detached single-node KRaft JVM
(combined broker + controller) on 127.0.0.1. Everything it writes stays under ``.local/kafka/``
(override with ``VIP_LOCAL_KAFKA_DIR``). CLI: ``python -m processor.localkafka --help``.

Beside it: ``cluster`` (three nodes, replication factor 3) and ``container`` (the broker the
tests use: ``KAFKA_BOOTSTRAP_SERVERS``, a Docker container, or this one).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processor.localkafka.jvm import (
    HOST,
    QUIET,
    STOP_TIMEOUT_S,
    LocalKafkaError,
    NodeFiles,
    accepts,
    alive,
    cluster_id,
    configured_port,
    format_storage,
    locked,
    port_free,
    render_properties,
    report_logs,
    running_pid,
    say,
    spawn,
    terminate,
    wait_ready,
)

__all__ = [
    "DIR_ENV",
    "PORT_ENV",
    "LocalKafkaError",
    "Paths",
    "Status",
    "bootstrap",
    "down",
    "ensure_bootstrap",
    "fetch",
    "get_paths",
    "kafka_version",
    "kraft_settings",
    "render_server_properties",
    "status",
    "up",
]

DIR_ENV = "VIP_LOCAL_KAFKA_DIR"
PORT_ENV = "VIP_LOCAL_KAFKA_PORT"

DEFAULT_PORT = 9092
START_TIMEOUT_S = 90.0
HEAP = "1g"

PACKAGE_DIR = Path(__file__).resolve().parent
POM = PACKAGE_DIR / "pom.xml"
REPO_ROOT = PACKAGE_DIR.parent.parent


@dataclass(frozen=True)
class Paths(NodeFiles):
    """Every file the local broker uses, all under one home folder (the jar cache too)."""

    @property
    def libs_root(self) -> Path:
        return self.home / "libs"

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    @property
    def lock_file(self) -> Path:
        return self.home / ".lock"

    @property
    def libs(self) -> Path:
        """The jar folder for the current pom.xml: any change to it means a new folder."""
        digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
        return self.libs_root / f"kafka-{kafka_version()}-{digest}"


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    bootstrap: str | None
    answers: bool
    kafka_version: str
    jars_cached: bool
    home: Path


def get_paths() -> Paths:
    override = os.environ.get(DIR_ENV)
    home = Path(override).expanduser().resolve() if override else REPO_ROOT / ".local" / "kafka"
    return Paths(home)


def parse_port(name: str, default: int) -> int:
    """A port number from environment variable `name`; `default` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LocalKafkaError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65534:
        raise LocalKafkaError(f"{name}={value} is out of range (1..65534)")
    return value


def port() -> int:
    """The broker port; the controller listens on the next one."""
    return parse_port(PORT_ENV, DEFAULT_PORT)


def bootstrap() -> str:
    return f"{HOST}:{port()}"


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if match is None:
        raise LocalKafkaError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


def kraft_settings(
    *,
    node_id: int,
    voters: Mapping[int, int],
    broker_port: int,
    data_dir: Path,
    replicas: int,
    min_isr: int,
    internal_partitions: int,
) -> dict[str, str]:
    """server.properties of one combined broker + controller node on 127.0.0.1.

    `voters` maps every controller's node id to its controller port; `replicas` and `min_isr`
    apply to new topics and to the internal ones alike.
    """
    controller_port = voters[node_id]
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        # Static voters: the storage must then be formatted WITHOUT --standalone.
        "controller.quorum.voters": ",".join(
            f"{voter}@{HOST}:{number}" for voter, number in sorted(voters.items())
        ),
        "listeners": f"PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # Internal topics: as replicated as the data; few partitions, so they start fast.
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": str(internal_partitions),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": str(internal_partitions),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        # Tests join groups often; the default 3 s delay would slow every one of them.
        "group.initial.rebalance.delay.ms": "0",
        # The cleaner allocates this on the heap at start (128 MiB by default).
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        # Topics are created on purpose, never by a typo in a producer.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }


def render_server_properties(*, broker_port: int, data_dir: Path) -> str:
    """A single-node KRaft server.properties (combined broker + controller on 127.0.0.1)."""
    settings = kraft_settings(
        node_id=1,
        voters={1: broker_port + 1},
        broker_port=broker_port,
        data_dir=data_dir,
        replicas=1,
        min_isr=1,
        internal_partitions=1,
    )
    return render_properties(settings)


# --------------------------------------------------------------------------- jars


def _jars_cached(libs: Path) -> bool:
    marker = libs / ".complete"
    if not marker.is_file():
        return False
    names = marker.read_text().split()
    return bool(names) and all((libs / name).is_file() for name in names)


def fetch() -> Path:
    """Download the broker jars from Maven Central (once); return the jar folder."""
    paths = get_paths()
    with locked(paths.lock_file):
        return _fetch(paths)


def _fetch(paths: Paths) -> Path:
    libs = paths.libs
    if _jars_cached(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("`mvn` (Apache Maven) is not on PATH; it fetches the Kafka jars")
    say(f"fetching Apache Kafka {kafka_version()} jars from Maven Central into {libs} ...")
    started = time.monotonic()
    # Copy into a staging folder and rename at the end: an interrupted fetch leaves no half cache.
    staging = paths.libs_root / f".{libs.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dlocalkafka.libs.dir={staging}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if result.returncode != 0 or not jars:
        shutil.rmtree(staging, ignore_errors=True)
        output = (result.stdout + result.stderr).strip()
        raise LocalKafkaError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{output}")
    (staging / ".complete").write_text("\n".join(jars) + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    say(f"fetched {len(jars)} jars in {time.monotonic() - started:.1f} s")
    return libs


# -------------------------------------------------------------------------- API


def up(timeout: float = START_TIMEOUT_S) -> str:
    """Start the local broker unless it already runs; return its bootstrap address."""
    return _up(timeout)[0]


def _up(timeout: float) -> tuple[str, bool]:
    """Like up(); the flag says whether this call started the broker."""
    paths = get_paths()
    number = port()
    address = f"{HOST}:{number}"
    with locked(paths.lock_file):
        pid = running_pid(paths)
        if pid is not None:
            running_port = configured_port(paths)
            if running_port != number:
                raise LocalKafkaError(
                    f"the local broker (pid {pid}) runs on port {running_port}, not {number}; "
                    f"stop it with `python -m processor.localkafka down` or set "
                    f"{PORT_ENV}={running_port}"
                )
            try:
                wait_ready(address, [number], time.monotonic() + timeout, lambda: alive(pid))
            except LocalKafkaError:
                report_logs(paths)
                raise
            return address, False

        for taken in (number, number + 1):
            if not port_free(taken):
                raise LocalKafkaError(
                    f"port {taken} on {HOST} is already in use by another process (not this "
                    f"project's broker); free it or pick another broker port with "
                    f"{PORT_ENV}=<port> (the controller uses port+1)"
                )

        libs = _fetch(paths)
        paths.server_properties.write_text(
            render_server_properties(broker_port=number, data_dir=paths.data)
        )
        format_storage([paths], libs, cluster_id(paths.cluster_id_file))

        say(f"starting Apache Kafka {kafka_version()} on {address} (logs in {paths.logs})")
        started = time.monotonic()
        proc = spawn(paths, libs, HEAP)
        try:
            wait_ready(address, [number], started + timeout, lambda: proc.poll() is None)
        except BaseException:
            # Also on Ctrl-C: never leave a half-started broker behind.
            report_logs(paths)
            terminate(proc.pid, STOP_TIMEOUT_S)
            paths.pid_file.unlink(missing_ok=True)
            raise
        say(f"broker ready (metadata + transactions) in {time.monotonic() - started:.1f} s")
        return address, True


def down(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local broker; True if one was running. Never fails when none runs."""
    paths = get_paths()
    if not paths.home.exists():
        return False
    with locked(paths.lock_file):
        pid = running_pid(paths)
        if pid is None:
            return False
        terminate(pid, timeout)
        paths.pid_file.unlink(missing_ok=True)
        return True


def status() -> Status:
    paths = get_paths()
    pid = running_pid(paths) if paths.home.exists() else None
    running_port = configured_port(paths) if pid is not None else None
    address = f"{HOST}:{running_port}" if running_port is not None else None
    answers = False
    if address is not None and running_port is not None and accepts(running_port):
        with contextlib.suppress(KafkaException):
            AdminClient({"bootstrap.servers": address, "logger": QUIET}).list_topics(timeout=3.0)
            answers = True
    return Status(
        running=pid is not None,
        pid=pid,
        bootstrap=address,
        answers=answers,
        kafka_version=kafka_version(),
        jars_cached=_jars_cached(paths.libs),
        home=paths.home,
    )


def ensure_bootstrap() -> tuple[str, Callable[[], None]]:
    """A broker for tests: (bootstrap address, stop). See container.choose_broker()."""
    from processor.localkafka.container import choose_broker

    choice = choose_broker()
    return choice.bootstrap, choice.stop
