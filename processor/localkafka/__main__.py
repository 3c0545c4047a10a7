"""CLI: python -m processor.localkafka {fetch,up,down,status,bootstrap}."""

from __future__ import annotations

import argparse
import sys

from processor import localkafka


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processor.localkafka",
        description=(
            "Run a genuine single-node Apache Kafka broker (KRaft) on 127.0.0.1 from jars that "
            "Maven fetches from Maven Central. No Docker needed; needs Java 17+ and mvn."
        ),
        epilog=(
            f"Files live under <repo>/.local/kafka (override: {localkafka.DIR_ENV}). "
            f"Broker port 9092, controller port+1 (override: {localkafka.PORT_ENV})."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fetch", help="download the broker jars into the cache (no-op when cached)")
    up = sub.add_parser("up", help="start the broker unless it runs; print its bootstrap address")
    up.add_argument(
        "--timeout",
        type=float,
        default=localkafka.START_TIMEOUT_S,
        help="seconds to wait until it serves transactions (default %(default)s)",
    )
    down = sub.add_parser("down", help="stop the broker (no error if it is not running)")
    down.add_argument(
        "--timeout",
        type=float,
        default=localkafka.STOP_TIMEOUT_S,
        help="seconds to wait after SIGTERM before SIGKILL (default %(default)s)",
    )
    sub.add_parser("status", help="say whether the broker runs and answers")
    sub.add_parser("bootstrap", help="print the bootstrap address (127.0.0.1:<port>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            print(localkafka.fetch())
        elif args.command == "up":
            print(localkafka.up(timeout=args.timeout))
        elif args.command == "down":
            print("stopped" if localkafka.down(timeout=args.timeout) else "not running")
        elif args.command == "status":
            st = localkafka.status()
            state = "running" if st.running else "stopped"
            if st.running:
                state += f" (pid {st.pid}, {st.bootstrap}, "
                state += "answers)" if st.answers else "NOT answering)"
            print(f"broker:  {state}")
            jars = "cached" if st.jars_cached else "not fetched"
            print(f"kafka:   {st.kafka_version} (jars {jars})")
            print(f"home:    {st.home}")
        elif args.command == "bootstrap":
            print(localkafka.bootstrap())
    except localkafka.LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
