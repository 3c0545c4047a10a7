"""CLI: python -m processor.localkafka {fetch,up,down,status,bootstrap,stop-node,start-node,
coordinators}."""

from __future__ import annotations

import argparse
import sys

from processor import localkafka
from processor.localkafka import cluster


def _brokers(parser: argparse.ArgumentParser, default: int | None, what: str) -> None:
    parser.add_argument(
        "--brokers",
        type=int,
        choices=(1, cluster.SIZE),
        default=default,
        help=f"1: the single broker; {cluster.SIZE}: the three-node cluster ({what})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processor.localkafka",
        description=(
            "Run a genuine Apache Kafka broker (KRaft) on 127.0.0.1 from jars that Maven fetches "
            "from Maven Central: one node, or a three-node cluster with replication factor 3. "
            "No Docker needed; needs Java 17+ and mvn."
        ),
        epilog=(
            f"Single broker: files under <repo>/.local/kafka (override: {localkafka.DIR_ENV}), "
            f"port 9092, controller port+1 (override: {localkafka.PORT_ENV}). Cluster: files "
            f"under <repo>/.local/kafka-cluster (override: {cluster.CLUSTER_DIR_ENV}), node n on "
            f"port base+2(n-1), controller the next one, base {cluster.DEFAULT_BASE_PORT} "
            f"(override: {cluster.CLUSTER_PORT_ENV})."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fetch", help="download the broker jars into the cache (no-op when cached)")
    up = sub.add_parser("up", help="start the broker(s) unless running; print the bootstrap")
    _brokers(up, 1, "default 1")
    up.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait until it serves transactions (default 90, cluster 120)",
    )
    down = sub.add_parser("down", help="stop the broker(s) (no error if none runs)")
    _brokers(down, None, "default: both")
    down.add_argument(
        "--timeout",
        type=float,
        default=localkafka.STOP_TIMEOUT_S,
        help="seconds to wait after SIGTERM before SIGKILL (default %(default)s)",
    )
    status = sub.add_parser("status", help="say whether the broker(s) run and answer")
    _brokers(status, None, "default: both")
    bootstrap = sub.add_parser("bootstrap", help="print the bootstrap address")
    _brokers(bootstrap, 1, "default 1")

    stop = sub.add_parser("stop-node", help="stop one cluster node (SIGTERM: controlled shutdown)")
    stop.add_argument("node_id", type=int, metavar="ID")
    stop.add_argument("--kill", action="store_true", help="SIGKILL instead: a crash")
    start = sub.add_parser("start-node", help="start one cluster node; wait until it caught up")
    start.add_argument("node_id", type=int, metavar="ID")
    coordinators = sub.add_parser(
        "coordinators", help="which cluster node coordinates a consumer group / transactional id"
    )
    coordinators.add_argument("--group-id", action="append", default=[], metavar="ID")
    coordinators.add_argument("--transactional-id", action="append", default=[], metavar="ID")
    return parser


def _single_status() -> None:
    st = localkafka.status()
    state = "running" if st.running else "stopped"
    if st.running:
        state += f" (pid {st.pid}, {st.bootstrap}, "
        state += "answers)" if st.answers else "NOT answering)"
    print(f"broker:  {state}")
    jars = "cached" if st.jars_cached else "not fetched"
    print(f"kafka:   {st.kafka_version} (jars {jars})")
    print(f"home:    {st.home}")


def _cluster_status() -> None:
    local = cluster.get_cluster()
    running = local.running()
    summary = str(local.health()) if running else "stopped"
    print(f"cluster: {summary}")
    for node in local.nodes:
        pid = local.pid(node.node_id)
        state = f"running (pid {pid})" if pid is not None else "stopped"
        print(f"  node {node.node_id}: {state}, {node.address}")
    print(f"home:    {local.home}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    many = getattr(args, "brokers", None) == cluster.SIZE
    try:
        if args.command == "fetch":
            print(localkafka.fetch())
        elif args.command == "up":
            if many:
                print(cluster.get_cluster().up(timeout=args.timeout or cluster.START_TIMEOUT_S))
            else:
                print(localkafka.up(timeout=args.timeout or localkafka.START_TIMEOUT_S))
        elif args.command == "down":
            if args.brokers in (None, 1):
                stopped = localkafka.down(timeout=args.timeout)
                print(f"broker:  {'stopped' if stopped else 'not running'}")
            if args.brokers in (None, cluster.SIZE):
                stopped = cluster.get_cluster().down(timeout=args.timeout)
                print(f"cluster: {'stopped' if stopped else 'not running'}")
        elif args.command == "status":
            if args.brokers in (None, 1):
                _single_status()
            if args.brokers in (None, cluster.SIZE):
                _cluster_status()
        elif args.command == "bootstrap":
            print(cluster.get_cluster().bootstrap if many else localkafka.bootstrap())
        elif args.command == "stop-node":
            stopped = cluster.get_cluster().stop_node(args.node_id, kill=args.kill)
            print(f"node {args.node_id}: {'stopped' if stopped else 'not running'}")
        elif args.command == "start-node":
            started = cluster.get_cluster().start_node(args.node_id)
            print(f"node {args.node_id}: {'started' if started else 'already running'}")
        elif args.command == "coordinators":
            if not (args.group_id or args.transactional_id):
                parser.error("coordinators needs --group-id and/or --transactional-id")
            local = cluster.get_cluster()
            if not local.running():
                raise localkafka.LocalKafkaError("the cluster is not running (up --brokers 3)")
            for group in args.group_id:
                print(f"group {group}: node {local.group_coordinator(group)}")
            for txn in args.transactional_id:
                print(f"transactional id {txn}: node {local.transaction_coordinator(txn)}")
    except localkafka.LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
