"""A genuine Apache Kafka broker for local runs and tests, without Docker.

The broker jars come from Maven Central through ``mvn`` (see ``pom.xml`` beside this file) and are
cached under ``<repo>/.local/kafka/libs/``; the broker runs as a detached single-node KRaft JVM
(combined broker + controller) on 127.0.0.1. Everything it writes stays under ``.local/kafka/``
(override with ``VIP_LOCAL_KAFKA_DIR``). CLI: ``python -m processor.localkafka --help``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

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
    "render_server_properties",
    "status",
    "up",
]

DIR_ENV = "VIP_LOCAL_KAFKA_DIR"
PORT_ENV = "VIP_LOCAL_KAFKA_PORT"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

PACKAGE_DIR = Path(__file__).resolve().parent
POM = PACKAGE_DIR / "pom.xml"
LOG4J_CONFIG = PACKAGE_DIR / "log4j2.properties"
REPO_ROOT = PACKAGE_DIR.parent.parent

# Topic and transactional id used only by the start-up probe.
READY_TOPIC = "localkafka.ready"
READY_TRANSACTIONAL_ID = "localkafka.ready"

# Image for the Docker path of ensure_bootstrap(); a 7.x cp-kafka matches testcontainers' scripts.
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.9.0"

# JVM flags of Kafka's kafka-run-class.sh / kafka-server-start.sh, with a smaller heap.
_JVM_FLAGS = (
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)

# librdkafka logs every refused connection while the broker boots; the probe does not want them.
_QUIET = logging.getLogger(f"{__name__}.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


@dataclass(frozen=True)
class Paths:
    """Every file the local broker uses, all under one home folder."""

    home: Path

    @property
    def libs_root(self) -> Path:
        return self.home / "libs"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def server_properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

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


def port() -> int:
    """The broker port; the controller listens on the next one."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        value = int(raw)
    except ValueError:
        raise LocalKafkaError(f"{PORT_ENV}={raw!r} is not a port number") from None
    if not 1 <= value <= 65534:
        raise LocalKafkaError(f"{PORT_ENV}={value} is out of range (1..65534)")
    return value


def bootstrap() -> str:
    return f"{HOST}:{port()}"


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if match is None:
        raise LocalKafkaError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


def render_server_properties(*, broker_port: int, data_dir: Path) -> str:
    """A single-node KRaft server.properties (combined broker + controller on 127.0.0.1)."""
    controller_port = broker_port + 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Static voters: the storage must then be formatted WITHOUT --standalone.
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One broker: every internal topic must fit on one replica, and small ones start faster.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Tests join groups often; the default 3 s delay would slow every one of them.
        "group.initial.rebalance.delay.ms": "0",
        # The cleaner allocates this on the heap at start (128 MiB by default).
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        # Topics are created on purpose, never by a typo in a producer.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }
    lines = ["# Written by processor.localkafka on every `up`; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


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
    with _locked(paths):
        return _fetch(paths)


def _fetch(paths: Paths) -> Path:
    libs = paths.libs
    if _jars_cached(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("`mvn` (Apache Maven) is not on PATH; it fetches the Kafka jars")
    _say(f"fetching Apache Kafka {kafka_version()} jars from Maven Central into {libs} ...")
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
    _say(f"fetched {len(jars)} jars in {time.monotonic() - started:.1f} s")
    return libs


# ----------------------------------------------------------------------- processes


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    """Serialise up/down/fetch across processes (e.g. two test sessions starting at once)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our own child: an unreaped zombie would look alive to kill(0).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_line(pid: int) -> list[str]:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.exists():
        with contextlib.suppress(OSError):
            return proc.read_bytes().decode(errors="replace").split("\0")
        return []
    # No /proc (macOS): ask ps.
    result = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    return result.stdout.split()


def _running_pid(paths: Paths) -> int | None:
    """The pid of OUR broker if it runs; a stale pid file (dead or reused pid) is removed."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid):
        cmdline = _command_line(pid)
        if "kafka.Kafka" in cmdline and str(paths.server_properties) in cmdline:
            return pid
    paths.pid_file.unlink(missing_ok=True)
    return None


def _configured_port(paths: Paths) -> int | None:
    with contextlib.suppress(OSError):
        text = paths.server_properties.read_text()
        match = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def _port_free(number: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the JVM's listener, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, number))
        except OSError:
            return False
    return True


def _accepts(number: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, number), timeout=1.0):
        return True
    return False


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError("`java` (17 or newer) is not on PATH and JAVA_HOME is not set")
    return found


def _jvm_command(paths: Paths, libs: Path, main_class: str, *args: str) -> list[str]:
    return [
        _java(),
        *_JVM_FLAGS,
        f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        # zstd-jni and snappy unpack native code into a temp dir; /tmp may be noexec.
        f"-DZstdTempFolder={paths.tmp}",
        f"-Dorg.xerial.snappy.tempdir={paths.tmp}",
        f"-Djava.io.tmpdir={paths.tmp}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def _format_storage(paths: Paths, libs: Path) -> None:
    if (paths.data / "meta.properties").is_file():
        return
    if paths.cluster_id_file.is_file():
        cluster_id = paths.cluster_id_file.read_text().strip()
    else:
        # What `StorageTool random-uuid` prints (a base64url Kafka Uuid), minus a JVM start.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        paths.cluster_id_file.write_text(cluster_id + "\n")
    paths.data.mkdir(parents=True, exist_ok=True)
    cmd = _jvm_command(
        paths, libs, "kafka.tools.StorageTool",
        "format", "--ignore-formatted", "-t", cluster_id, "-c", str(paths.server_properties),
    )  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise LocalKafkaError(
            f"formatting {paths.data} failed (exit {result.returncode}):\n{output}"
        )


def _spawn(paths: Paths, libs: Path) -> subprocess.Popen[bytes]:
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    cmd = _jvm_command(paths, libs, "kafka.Kafka", str(paths.server_properties))
    with (paths.logs / "stdout.log").open("wb") as out:
        # A new session: the broker outlives this Python process and ignores its Ctrl-C.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.home,
            start_new_session=True,
        )
    paths.pid_file.write_text(f"{proc.pid}\n")
    return proc


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        _say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


# ---------------------------------------------------------------------- readiness


def _probe(address: str, timeout: float) -> None:
    """Raise unless the broker serves metadata AND commits a transaction."""
    common = {"bootstrap.servers": address, "logger": _QUIET}
    admin = AdminClient(common)
    metadata = admin.list_topics(timeout=min(timeout, 5.0))
    if READY_TOPIC not in metadata.topics:
        future = admin.create_topics([NewTopic(READY_TOPIC, 1, 1)], operation_timeout=timeout)
        try:
            future[READY_TOPIC].result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # The first init_transactions() creates __transaction_state and waits for its coordinator.
    producer = Producer({**common, "transactional.id": READY_TRANSACTIONAL_ID})
    producer.init_transactions(timeout)
    producer.begin_transaction()
    producer.produce(READY_TOPIC, value=b"ready")
    producer.commit_transaction(timeout)


def _wait_ready(number: int, deadline: float, alive: Callable[[], bool]) -> None:
    address = f"{HOST}:{number}"
    last_error: Exception | None = None
    while True:
        if not alive():
            raise LocalKafkaError("the broker process exited during start-up")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f" (last error: {last_error})" if last_error else ""
            raise LocalKafkaError(f"the broker did not get ready in time{detail}")
        if not _accepts(number):
            time.sleep(0.2)
            continue
        try:
            _probe(address, max(remaining, 1.0))
            return
        except KafkaException as exc:
            last_error = exc
            time.sleep(0.5)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _report_logs(paths: Paths) -> None:
    for log in (paths.logs / "stdout.log", paths.logs / "server.log"):
        text = _tail(log)
        if text:
            _say(f"----- last lines of {log} -----\n{text}\n----- end of {log} -----")
    _say(f"broker logs: {paths.logs / 'server.log'}")


def _say(message: str) -> None:
    print(f"[localkafka] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------- API


def up(timeout: float = START_TIMEOUT_S) -> str:
    """Start the local broker unless it already runs; return its bootstrap address."""
    return _up(timeout)[0]


def _up(timeout: float) -> tuple[str, bool]:
    """Like up(); the flag says whether this call started the broker."""
    paths = get_paths()
    number = port()
    address = f"{HOST}:{number}"
    with _locked(paths):
        pid = _running_pid(paths)
        if pid is not None:
            running_port = _configured_port(paths)
            if running_port != number:
                raise LocalKafkaError(
                    f"the local broker (pid {pid}) runs on port {running_port}, not {number}; "
                    f"stop it with `python -m processor.localkafka down` or set "
                    f"{PORT_ENV}={running_port}"
                )
            try:
                _wait_ready(number, time.monotonic() + timeout, lambda: _alive(pid))
            except LocalKafkaError:
                _report_logs(paths)
                raise
            return address, False

        for taken in (number, number + 1):
            if not _port_free(taken):
                raise LocalKafkaError(
                    f"port {taken} on {HOST} is already in use by another process (not this "
                    f"project's broker); free it or pick another broker port with "
                    f"{PORT_ENV}=<port> (the controller uses port+1)"
                )

        libs = _fetch(paths)
        paths.server_properties.write_text(
            render_server_properties(broker_port=number, data_dir=paths.data)
        )
        _format_storage(paths, libs)

        _say(f"starting Apache Kafka {kafka_version()} on {address} (logs in {paths.logs})")
        started = time.monotonic()
        proc = _spawn(paths, libs)
        try:
            _wait_ready(number, started + timeout, lambda: proc.poll() is None)
        except BaseException:
            # Also on Ctrl-C: never leave a half-started broker behind.
            _report_logs(paths)
            _terminate(proc.pid, STOP_TIMEOUT_S)
            paths.pid_file.unlink(missing_ok=True)
            raise
        _say(f"broker ready (metadata + transactions) in {time.monotonic() - started:.1f} s")
        return address, True


def down(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local broker; True if one was running. Never fails when none runs."""
    paths = get_paths()
    if not paths.home.exists():
        return False
    with _locked(paths):
        pid = _running_pid(paths)
        if pid is None:
            return False
        _terminate(pid, timeout)
        paths.pid_file.unlink(missing_ok=True)
        return True


def status() -> Status:
    paths = get_paths()
    pid = _running_pid(paths) if paths.home.exists() else None
    running_port = _configured_port(paths) if pid is not None else None
    address = f"{HOST}:{running_port}" if running_port is not None else None
    answers = False
    if address is not None and running_port is not None and _accepts(running_port):
        with contextlib.suppress(KafkaException):
            AdminClient({"bootstrap.servers": address, "logger": _QUIET}).list_topics(timeout=3.0)
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


# ------------------------------------------------------------------ test helper


def _docker_available(timeout: float = 5.0) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _start_container() -> tuple[str, Callable[[], None]]:
    # Imported lazily: testcontainers pulls in the docker SDK, useless without an engine.
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14 only has the old module path
        from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(CONTAINER_IMAGE).with_kraft()
    # Same single-broker settings as the local broker; cp-kafka defaults assume three brokers.
    for key, value in {
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_NUM_PARTITIONS": "1",
    }.items():
        container.with_env(key, value)
    container.start(timeout=120)
    return container.get_bootstrap_server(), container.stop


def ensure_bootstrap() -> tuple[str, Callable[[], None]]:
    """A broker for tests: (bootstrap address, stop).

    Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set (nothing is started); a testcontainers Kafka if a
    Docker engine answers; else the local broker, which ``stop`` stops only if this call started it.
    """
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        return configured, lambda: None
    if _docker_available():
        return _start_container()
    address, started = _up(START_TIMEOUT_S)
    if not started:
        return address, lambda: None

    def stop() -> None:
        down()

    return address, stop
