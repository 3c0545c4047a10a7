"""A local three-node Kafka cluster on 127.0.0.1, for tests that need coordinators to move.

Three combined broker + controller nodes (ids 1, 2, 3) with a three-voter KRaft quorum, from the
same jars as the single broker (``processor.localkafka``). Why combined rather than one controller
and three brokers: it takes three JVMs instead of four, and stopping any one node keeps both a
controller majority (2 of 3) and ``min.insync.replicas`` (2 of 3), so "stop a node" is one fault,
never a whole-cluster outage; and stopping the active controller is itself a realistic fault.

Every topic, and the internal ``__consumer_offsets`` and ``__transaction_state``, has three
replicas and ``min.insync.replicas`` 2. The internal topics have three partitions each, so
coordinators are spread over the nodes (``transaction_coordinator``, ``group_coordinator``).

Node n listens on ``base + 2(n-1)`` (clients) and the next port (controller); the base is 19192
(override: ``VIP_LOCAL_KAFKA_CLUSTER_PORT``), clear of the single broker (9092) and of
docker-compose's broker (19092). Files live under ``<repo>/.local/kafka-cluster/node-<n>``
(override: ``VIP_LOCAL_KAFKA_CLUSTER_DIR``), so it can run beside the single broker. State is on
disk (pid files), so any process can stop or start a node of a cluster another one started.

    cluster = get_cluster()
    cluster.up()                              # idempotent; returns the bootstrap string
    cluster.stop_node(cluster.transaction_coordinator("my-app-1"))
    cluster.start_node(2)                     # waits until no partition is under-replicated
    assert cluster.health().healthy
    cluster.down()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processor import localkafka
from processor.localkafka.jvm import (
    HOST,
    QUIET,
    STOP_TIMEOUT_S,
    LocalKafkaError,
    NodeFiles,
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
    "CLUSTER_DIR_ENV",
    "CLUSTER_PORT_ENV",
    "Health",
    "LocalCluster",
    "Node",
    "coordinator_partition",
    "get_cluster",
    "java_string_hash",
]

CLUSTER_DIR_ENV = "VIP_LOCAL_KAFKA_CLUSTER_DIR"
CLUSTER_PORT_ENV = "VIP_LOCAL_KAFKA_CLUSTER_PORT"
DEFAULT_BASE_PORT = 19192

SIZE = 3
REPLICAS = 3
MIN_ISR = 2
INTERNAL_PARTITIONS = 3
HEAP = "512m"
# C1 only: three JVMs starting at once on a small machine spend most of their start in the C2
# compiler; without it a node starts in about a third of the time (measured 7 s vs 19 s for
# all three on 2 busy cores), and test loads never need C2's peak speed.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1",)
START_TIMEOUT_S = 120.0
# A port taken by a transient socket (see LocalCluster._start): how long to wait for it,
# and how often to start a node that lost it during start-up.
PORT_WAIT_S = 30.0
BIND_ATTEMPTS = 3

TRANSACTION_TOPIC = "__transaction_state"
OFFSETS_TOPIC = "__consumer_offsets"
# Looked up once at start so that __consumer_offsets exists while every node is up.
READY_GROUP = "localkafka.ready"

_INT_MIN = -(2**31)


def java_string_hash(text: str) -> int:
    """Java's String.hashCode(): over UTF-16 code units, 32-bit signed overflow."""
    units = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for i in range(0, len(units), 2):
        value = (31 * value + int.from_bytes(units[i : i + 2], "big")) & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def coordinator_partition(key: str, partitions: int) -> int:
    """The partition of __transaction_state (or __consumer_offsets) that owns `key`.

    Kafka's partitionFor: ``Utils.abs(key.hashCode) % partitionCount``, where Utils.abs maps
    Integer.MIN_VALUE to 0 (Math.abs would leave it negative).
    """
    value = java_string_hash(key)
    return (0 if value == _INT_MIN else abs(value)) % partitions


@dataclass(frozen=True)
class Node:
    node_id: int
    broker_port: int
    controller_port: int
    files: NodeFiles

    @property
    def address(self) -> str:
        return f"{HOST}:{self.broker_port}"


@dataclass(frozen=True)
class Health:
    """A snapshot: which nodes are down and which partitions lack replicas."""

    down: tuple[int, ...]  # node process not running
    unregistered: tuple[int, ...]  # running, but not (yet) a live broker in the metadata
    under_replicated: tuple[str, ...]  # "topic[p]": no leader, or fewer in-sync replicas

    @property
    def healthy(self) -> bool:
        return not (self.down or self.unregistered or self.under_replicated)

    def __str__(self) -> str:
        if self.healthy:
            return "healthy: every node up, every partition fully replicated"
        parts = []
        if self.down:
            parts.append(f"nodes down: {list(self.down)}")
        if self.unregistered:
            parts.append(f"nodes not registered: {list(self.unregistered)}")
        if self.under_replicated:
            shown = ", ".join(self.under_replicated[:5])
            more = len(self.under_replicated) - 5
            parts.append(f"under-replicated: {shown}" + (f" (+{more} more)" if more > 0 else ""))
        return "; ".join(parts)


@dataclass(frozen=True)
class LocalCluster:
    home: Path
    base_port: int

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(
            Node(
                node_id=n,
                broker_port=self.base_port + 2 * (n - 1),
                controller_port=self.base_port + 2 * (n - 1) + 1,
                files=NodeFiles(self.home / f"node-{n}"),
            )
            for n in range(1, SIZE + 1)
        )

    def node(self, node_id: int) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        ids = ", ".join(str(node.node_id) for node in self.nodes)
        raise LocalKafkaError(f"no node {node_id} in the local cluster (nodes: {ids})")

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def _lock_file(self) -> Path:
        return self.home / ".lock"

    @property
    def _cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    def settings(self, node_id: int) -> dict[str, str]:
        """The server.properties of one node."""
        node = self.node(node_id)
        return localkafka.kraft_settings(
            node_id=node.node_id,
            voters={other.node_id: other.controller_port for other in self.nodes},
            broker_port=node.broker_port,
            data_dir=node.files.data,
            replicas=REPLICAS,
            min_isr=MIN_ISR,
            internal_partitions=INTERNAL_PARTITIONS,
        )

    def _admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "logger": QUIET})

    # ------------------------------------------------------------------ processes

    def pid(self, node_id: int) -> int | None:
        """The node's pid if it runs."""
        return running_pid(self.node(node_id).files)

    def running(self) -> list[int]:
        """Ids of the nodes whose process runs."""
        return [node.node_id for node in self.nodes if running_pid(node.files) is not None]

    def up(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start every node that is not running; return when the cluster is healthy."""
        return self._up(timeout)[0]

    def _up(self, timeout: float) -> tuple[str, bool]:
        """Like up(); the flag says whether this call started any node."""
        deadline = time.monotonic() + timeout
        with locked(self._lock_file):
            self._check_running_ports()
            stopped = [node for node in self.nodes if running_pid(node.files) is None]
            if stopped:
                started = time.monotonic()
                names = ", ".join(node.address for node in stopped)
                say(f"starting {len(stopped)} of {SIZE} cluster nodes on {names} (in {self.home})")
                if ephemeral := _ephemeral_overlap(self.base_port, self.base_port + 2 * SIZE - 1):
                    say(
                        f"ports {self.base_port}-{self.base_port + 2 * SIZE - 1} lie in the "
                        f"ephemeral port range {ephemeral}: a node stopped and started again "
                        f"may find its port taken by a client connected to itself for a while "
                        f"(see LocalCluster._start); a base below it, e.g. the default "
                        f"{DEFAULT_BASE_PORT}, avoids that"
                    )
                self._start(stopped, lambda _procs: self._wait_up(deadline))
                say(f"cluster ready in {time.monotonic() - started:.1f} s ({self.bootstrap})")
            else:
                self._wait_up(deadline)
            return self.bootstrap, bool(stopped)

    def down(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop every node; True if any was running. Never fails when none runs."""
        if not self.home.exists():
            return False
        with locked(self._lock_file):
            pids = {node: pid for node in self.nodes if (pid := running_pid(node.files))}
            # SIGTERM all first: they shut down together instead of each waiting for a quorum
            # that the previous one's exit just took away. Then wait for those very pids: an
            # exiting JVM's /proc cmdline goes empty, so running_pid() would miss it.
            for pid in pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for node, pid in pids.items():
                terminate(pid, timeout)
                node.files.pid_file.unlink(missing_ok=True)
            for node in self.nodes:
                _release_ports(node)
            return bool(pids)

    def stop_node(
        self, node_id: int, *, kill: bool = False, timeout: float = STOP_TIMEOUT_S
    ) -> bool:
        """Stop one node: SIGTERM (controlled shutdown: its leaderships move first) or, with
        `kill`, SIGKILL (the controller fences it after broker.session.timeout.ms, 9 s).
        True if it was running."""
        node = self.node(node_id)
        with locked(self._lock_file):
            pid = running_pid(node.files)
            if pid is None:
                return False
            terminate(pid, timeout, kill=kill)
            node.files.pid_file.unlink(missing_ok=True)
            _hold_ports(node)
            return True

    def start_node(
        self, node_id: int, *, timeout: float = START_TIMEOUT_S, wait_healthy: bool = True
    ) -> bool:
        """Start one stopped node; return once it is a live broker again and, with
        `wait_healthy`, once its replicas have caught up. True if it was not running."""
        node = self.node(node_id)
        deadline = time.monotonic() + timeout
        with locked(self._lock_file):
            if running_pid(node.files) is not None:
                return False
            self._check_running_ports()
            log_end = _server_log_size(node)
            self._start(
                [node], lambda procs: self._wait_registered(node, deadline, procs[0].poll, log_end)
            )
        if wait_healthy:
            self.wait_healthy(max(deadline - time.monotonic(), 1.0))
        return True

    def _check_running_ports(self) -> None:
        for node in self.nodes:
            pid = running_pid(node.files)
            if pid is not None and configured_port(node.files) != node.broker_port:
                raise LocalKafkaError(
                    f"cluster node {node.node_id} (pid {pid}) runs on port "
                    f"{configured_port(node.files)}, not {node.broker_port}; stop the cluster "
                    f"with `python -m processor.localkafka down --brokers {SIZE}` or set "
                    f"{CLUSTER_PORT_ENV} to the base port it was started with"
                )

    def _start(
        self, nodes: list[Node], wait: Callable[[list[subprocess.Popen[bytes]]], None]
    ) -> None:
        """Spawn `nodes`, then `wait` for them; if that fails, stop them again.

        A node that lost its port while starting is started again: while a node is down,
        clients keep reconnecting to it, and when its port lies in the ephemeral range
        (32768-60999 on Linux) one of those connects can be given that very port as its
        own source port and connect to itself (a TCP self-connect), holding it until the
        client notices. That is transient, so the port is waited for and the start retried.
        (While it is down, `stop_node` keeps its ports bound in this process; see
        `_hold_ports`: what is left is the few seconds the JVM takes to bind.)
        """
        libs = localkafka.fetch()
        for attempt in range(1, BIND_ATTEMPTS + 1):
            for node in nodes:
                _release_ports(node)
            self._wait_ports_free(nodes, PORT_WAIT_S)
            for node in nodes:
                node.files.home.mkdir(parents=True, exist_ok=True)
                properties = render_properties(self.settings(node.node_id))
                node.files.server_properties.write_text(properties)
            format_storage([node.files for node in nodes], libs, cluster_id(self._cluster_id_file))
            procs = [spawn(node.files, libs, HEAP, JVM_FLAGS) for node in nodes]
            try:
                wait(procs)
                return
            except BaseException as exc:
                # Also on Ctrl-C: never leave a half-started node behind.
                retry = (
                    isinstance(exc, LocalKafkaError)
                    and attempt < BIND_ATTEMPTS
                    and any(_lost_port(node) for node in nodes)
                )
                for node, proc in zip(nodes, procs, strict=True):
                    if not retry:
                        report_logs(node.files)
                    terminate(proc.pid, STOP_TIMEOUT_S)
                    node.files.pid_file.unlink(missing_ok=True)
                if not retry:
                    raise
                say(f"a node lost its port to another socket while starting; again ({exc})")

    def _wait_ports_free(self, nodes: list[Node], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            for number in (node.broker_port, node.controller_port):
                while not port_free(number):
                    if time.monotonic() > deadline:
                        raise LocalKafkaError(
                            f"port {number} on {HOST} (cluster node {node.node_id}) is in use by "
                            f"another process; pick another base port with "
                            f"{CLUSTER_PORT_ENV}=<port> (nodes use base..base+{2 * SIZE - 1})"
                        )
                    time.sleep(0.2)

    def _wait_up(self, deadline: float) -> None:
        """Every node serves metadata and transactions, both internal topics exist with all
        their replicas (they can only be created while three brokers are up), all healthy."""
        pids = [pid for node in self.nodes if (pid := running_pid(node.files)) is not None]

        def running() -> bool:
            return len(pids) == SIZE and all(alive(pid) for pid in pids)

        ports = [node.broker_port for node in self.nodes]
        wait_ready(self.bootstrap, ports, deadline, running, replicas=REPLICAS)
        self.group_coordinator(READY_GROUP, timeout=max(deadline - time.monotonic(), 1.0))
        self.wait_healthy(max(deadline - time.monotonic(), 1.0))

    def _wait_registered(
        self, node: Node, deadline: float, poll: Callable[[], int | None], log_end: int
    ) -> None:
        """Until the node's new JVM says it started and the brokers list it. Neither an
        accepting port (another socket may hold it) nor a registration (a broker registers
        before binding its listener, and may then die of a taken port) says so alone."""
        while True:
            if poll() is not None:
                raise LocalKafkaError(f"cluster node {node.node_id} exited during start-up")
            if _started_since(node, log_end) and node.node_id in self._live_brokers():
                return
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"cluster node {node.node_id} did not rejoin in time")
            time.sleep(0.2)

    def _live_brokers(self) -> set[int]:
        try:
            return set(self._admin().list_topics(timeout=2.0).brokers)
        except KafkaException:
            return set()

    # -------------------------------------------------------------------- health

    def health(self, timeout: float = 5.0) -> Health:
        down = tuple(node.node_id for node in self.nodes if running_pid(node.files) is None)
        try:
            metadata = self._admin().list_topics(timeout=timeout)
        except KafkaException as exc:
            up = tuple(node.node_id for node in self.nodes if node.node_id not in down)
            return Health(down, up, (f"no metadata: {exc}",))
        unregistered = tuple(
            node.node_id
            for node in self.nodes
            if node.node_id not in down and node.node_id not in metadata.brokers
        )
        under = tuple(
            f"{name}[{partition.id}]"
            for name, topic in sorted(metadata.topics.items())
            for partition in topic.partitions.values()
            if partition.leader < 0 or len(partition.isrs) < len(partition.replicas)
        )
        return Health(down, unregistered, under)

    def wait_healthy(self, timeout: float = 60.0) -> Health:
        """Poll health() until healthy; raise LocalKafkaError with the last snapshot if not."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health(timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
            if health.healthy:
                return health
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"the cluster did not get healthy in time: {health}")
            time.sleep(0.5)

    # -------------------------------------------------------------- coordinators

    def group_coordinator(self, group_id: str, timeout: float = 30.0) -> int:
        """The node id of the group coordinator of consumer group `group_id`, as the cluster
        answers FindCoordinator (the group need not exist)."""
        admin = self._admin()
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 1.0)
            future = admin.describe_consumer_groups([group_id], request_timeout=remaining)
            try:
                return int(future[group_id].result().coordinator.id)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise LocalKafkaError(
                        f"no group coordinator for {group_id!r} in {timeout:.0f} s: {exc}"
                    ) from exc
                time.sleep(0.5)

    def transaction_coordinator(self, transactional_id: str, timeout: float = 30.0) -> int:
        """The node id of the transaction coordinator of `transactional_id`: the leader of its
        __transaction_state partition (see coordinator_partition)."""
        return self._partition_leader(TRANSACTION_TOPIC, transactional_id, timeout)

    def _partition_leader(self, topic: str, key: str, timeout: float) -> int:
        admin = self._admin()
        deadline = time.monotonic() + timeout
        last = "no metadata"
        while time.monotonic() < deadline:
            try:
                metadata = admin.list_topics(topic=topic, timeout=5.0).topics[topic]
            except KafkaException as exc:
                last = str(exc)
            else:
                if metadata.error is not None or not metadata.partitions:
                    last = f"{topic}: {metadata.error or 'no partitions'}"
                else:
                    partition = coordinator_partition(key, len(metadata.partitions))
                    leader = metadata.partitions[partition].leader
                    if leader >= 0:
                        return leader
                    last = f"{topic}[{partition}] has no leader"
            time.sleep(0.5)
        raise LocalKafkaError(f"no coordinator for {key!r} in {timeout:.0f} s: {last}")


# Ports of nodes this process stopped, bound (never listening) until it starts them again.
_HELD: dict[int, list[socket.socket]] = {}  # by the node's broker port


def _hold_ports(node: Node) -> None:
    """Keeps a stopped node's ports bound, so that no client's reconnect gets one of them as
    its source port (Linux never picks a port some socket bound for an outgoing connection);
    clients still find nothing listening and are refused, as with any stopped broker."""
    _release_ports(node)
    held = []
    for number in (node.broker_port, node.controller_port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        try:
            sock.bind((HOST, number))
        except OSError:  # taken already: the start will wait for it
            sock.close()
            continue
        held.append(sock)
    _HELD[node.broker_port] = held


def _release_ports(node: Node) -> None:
    for sock in _HELD.pop(node.broker_port, []):
        sock.close()


def _ephemeral_overlap(low: int, high: int) -> str | None:
    """The kernel's ephemeral port range ("32768-60999") if [low, high] overlaps it."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return f"{first}-{last}" if low <= last and high >= first else None


STARTED = "Kafka Server started"  # KafkaRaftServer, once every listener is bound


def _server_log_size(node: Node) -> int:
    try:
        return (node.files.logs / "server.log").stat().st_size
    except OSError:
        return 0


def _started_since(node: Node, offset: int) -> bool:
    """Has server.log said STARTED past `offset` (from its start if it was rolled since)?"""
    try:
        with (node.files.logs / "server.log").open("rb") as log:
            if log.seek(0, 2) < offset:
                offset = 0
            log.seek(offset)
            return STARTED.encode() in log.read()
    except OSError:
        return False


def _lost_port(node: Node) -> bool:
    """Did the node's JVM fail to bind its port (its stdout has the exception)?"""
    try:
        out = (node.files.logs / "stdout.log").read_text(errors="replace")
    except OSError:
        return False
    return "BindException: Address already in use" in out


def get_cluster() -> LocalCluster:
    """The cluster configured by the environment (home and base port)."""
    override = os.environ.get(CLUSTER_DIR_ENV)
    home = (
        Path(override).expanduser().resolve()
        if override
        else localkafka.REPO_ROOT / ".local" / "kafka-cluster"
    )
    base = localkafka.parse_port(CLUSTER_PORT_ENV, DEFAULT_BASE_PORT)
    if base + 2 * SIZE - 1 > 65535:
        raise LocalKafkaError(f"{CLUSTER_PORT_ENV}={base} leaves no room for {SIZE} nodes")
    return LocalCluster(home, base)
