"""Broker faults: stop the node that coordinates the group (or a transaction), let the
processors work against the other two, start it again.

The node is named by the cluster API (`group_coordinator`, `transaction_coordinator`),
not guessed; the move is confirmed by asking again while it is down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from processor.localkafka import LocalKafkaError
from processor.localkafka.cluster import LocalCluster

log = logging.getLogger(__name__)


@dataclass
class CoordinatorMove:
    role: str  # "group" or "transaction"
    of: str  # the group id or the transactional id
    node: int  # the coordinator that was stopped
    signal: str  # SIGTERM (controlled shutdown) or SIGKILL
    stopped_at: float  # monotonic
    moved_to: int | None = None  # the coordinator while it was down
    moved_after_s: float | None = None
    restarted_at: float | None = None
    healthy_after_s: float | None = None  # from the restart until fully replicated
    error: str | None = None

    def describe(self) -> str:
        where = f"node {self.node} -> {self.moved_to}" if self.moved_to else f"node {self.node}"
        return f"{self.role} coordinator of {self.of}: {where} ({self.signal})"


def coordinator(cluster: LocalCluster, role: str, of: str) -> int:
    if role == "group":
        return cluster.group_coordinator(of)
    return cluster.transaction_coordinator(of)


def move_coordinator(
    cluster: LocalCluster, role: str, of: str, down_s: float, kill: bool = False
) -> CoordinatorMove:
    """Stops the coordinator of `of`, keeps it down `down_s` (at least until another
    node took over), starts it again and waits until every partition is in sync."""
    node = coordinator(cluster, role, of)
    move = CoordinatorMove(role, of, node, "SIGKILL" if kill else "SIGTERM", time.monotonic())
    log.info("stopping node %d, the %s coordinator of %s (%s)", node, role, of, move.signal)
    cluster.stop_node(node, kill=kill)
    try:
        # After SIGKILL the move waits for the controller to fence the node (~10 s).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                now_on = coordinator(cluster, role, of)
            except LocalKafkaError:
                now_on = node
            if now_on != node:
                move.moved_to = now_on
                move.moved_after_s = time.monotonic() - move.stopped_at
                break
            time.sleep(0.2)
        else:
            move.error = f"no other node took over within 60s of stopping node {node}"
        rest = move.stopped_at + down_s - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    finally:
        move.restarted_at = time.monotonic()
        cluster.start_node(node)
        move.healthy_after_s = time.monotonic() - move.restarted_at
        log.info("node %d back, healthy after %.1fs", node, move.healthy_after_s)
    return move
