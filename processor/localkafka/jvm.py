"""One KRaft node as a detached JVM: its files, start, stop, readiness.

Shared by the single broker (``processor.localkafka``) and the three-node cluster
(``processor.localkafka.cluster``). Every node keeps its pid in a file so that any process (the
CLI, a test, a second test session) can find, stop or wait for it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"

# Topic and transactional id used only by the start-up probe.
READY_TOPIC = "localkafka.ready"
READY_TRANSACTIONAL_ID = "localkafka.ready"

# JVM flags of Kafka's kafka-run-class.sh / kafka-server-start.sh; the heap is set per node.
_JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)

# librdkafka logs every refused connection while a broker boots; probes do not want them.
QUIET = logging.getLogger("processor.localkafka.librdkafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


class LocalKafkaError(RuntimeError):
    """A local broker could not be fetched, started or stopped."""


@dataclass(frozen=True)
class NodeFiles:
    """The files of one node, all under one home folder."""

    home: Path

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


def render_properties(settings: Mapping[str, str]) -> str:
    lines = ["# Written by processor.localkafka on every `up`; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    print(f"[localkafka] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- processes


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Serialise up/down/fetch across processes (e.g. two test sessions starting at once)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alive(pid: int) -> bool:
    """Whether the process still exists and may still hold its ports and files."""
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
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError, IndexError):
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            return True
        # A zombie main thread while the JVM's other threads still exit: the last of them
        # closes the sockets, so the ports are not free until it is the only one left.
        return len(list((proc / "task").iterdir())) > 1
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


def running_pid(files: NodeFiles) -> int | None:
    """The pid of THIS node if it runs; a stale pid file (dead or reused pid) is removed."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if alive(pid):
        cmdline = _command_line(pid)
        if "kafka.Kafka" in cmdline and str(files.server_properties) in cmdline:
            return pid
    files.pid_file.unlink(missing_ok=True)
    return None


def configured_port(files: NodeFiles) -> int | None:
    """The broker port in the node's server.properties (what a running node listens on)."""
    with contextlib.suppress(OSError):
        text = files.server_properties.read_text()
        match = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def port_free(number: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the JVM's listener, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, number))
        except OSError:
            return False
    return True


def accepts(number: int) -> bool:
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


def jvm_command(
    files: NodeFiles,
    libs: Path,
    heap: str,
    main_class: str,
    *args: str,
    extra_flags: Sequence[str] = (),
) -> list[str]:
    return [
        _java(),
        f"-Xmx{heap}",
        *_JVM_FLAGS,
        *extra_flags,
        f"-Dkafka.logs.dir={files.logs}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        # zstd-jni and snappy unpack native code into a temp dir; /tmp may be noexec.
        f"-DZstdTempFolder={files.tmp}",
        f"-Dorg.xerial.snappy.tempdir={files.tmp}",
        f"-Djava.io.tmpdir={files.tmp}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def new_cluster_id() -> str:
    """What `StorageTool random-uuid` prints (a base64url Kafka Uuid), minus a JVM start."""
    value = "-"
    while value.startswith("-"):
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return value


def cluster_id(file: Path) -> str:
    """The KRaft cluster id kept in `file`, made on first use."""
    if file.is_file():
        return file.read_text().strip()
    value = new_cluster_id()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(value + "\n")
    return value


def format_storage(nodes: Iterable[NodeFiles], libs: Path, cluster: str) -> None:
    """Format the nodes whose data folder is not formatted yet, in parallel (one JVM each)."""
    pending: list[tuple[NodeFiles, subprocess.Popen[str]]] = []
    for files in nodes:
        if (files.data / "meta.properties").is_file():
            continue
        files.data.mkdir(parents=True, exist_ok=True)
        files.tmp.mkdir(parents=True, exist_ok=True)
        cmd = jvm_command(
            files, libs, "256m", "kafka.tools.StorageTool",
            "format", "--ignore-formatted", "-t", cluster, "-c", str(files.server_properties),
        )  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pending.append((files, proc))
    failures = []
    for files, proc in pending:
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"formatting {files.data} failed (exit {proc.returncode}):\n{output}")
    if failures:
        raise LocalKafkaError("\n".join(failures))


def spawn(
    files: NodeFiles, libs: Path, heap: str, extra_flags: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    files.logs.mkdir(parents=True, exist_ok=True)
    files.tmp.mkdir(parents=True, exist_ok=True)
    cmd = jvm_command(
        files, libs, heap, "kafka.Kafka", str(files.server_properties), extra_flags=extra_flags
    )
    with (files.logs / "stdout.log").open("wb") as out:
        # A new session: the broker outlives this Python process and ignores its Ctrl-C.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=files.home,
            start_new_session=True,
        )
    files.pid_file.write_text(f"{proc.pid}\n")
    return proc


def terminate(pid: int, timeout: float, *, kill: bool = False) -> None:
    """SIGTERM (Kafka's controlled shutdown) and wait; SIGKILL if `kill` or after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


# ---------------------------------------------------------------------- readiness


def probe(address: str, timeout: float, replicas: int = 1) -> None:
    """Raise unless the broker(s) serve metadata AND commit a transaction."""
    common = {"bootstrap.servers": address, "logger": QUIET}
    admin = AdminClient(common)
    metadata = admin.list_topics(timeout=min(timeout, 5.0))
    if READY_TOPIC not in metadata.topics:
        spec = NewTopic(READY_TOPIC, 1, replicas)
        future = admin.create_topics([spec], operation_timeout=timeout)
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


def wait_ready(
    address: str,
    ports: Iterable[int],
    deadline: float,
    running: Callable[[], bool],
    replicas: int = 1,
) -> None:
    """Wait until every port accepts and probe() passes; raise if `running` turns false."""
    ports = tuple(ports)
    last_error: Exception | None = None
    while True:
        if not running():
            raise LocalKafkaError("a broker process exited during start-up")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f" (last error: {last_error})" if last_error else ""
            raise LocalKafkaError(f"the broker did not get ready in time{detail}")
        if not all(accepts(number) for number in ports):
            time.sleep(0.2)
            continue
        try:
            probe(address, max(remaining, 1.0), replicas)
            return
        except KafkaException as exc:
            last_error = exc
            time.sleep(0.5)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def report_logs(files: NodeFiles) -> None:
    for log in (files.logs / "stdout.log", files.logs / "server.log"):
        text = _tail(log)
        if text:
            say(f"----- last lines of {log} -----\n{text}\n----- end of {log} -----")
    say(f"broker logs: {files.logs / 'server.log'}")
