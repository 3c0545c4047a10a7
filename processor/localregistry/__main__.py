"""CLI: python -m processor.localregistry {fetch,up,down,status,url}."""

from __future__ import annotations

import argparse
import sys

from processor import localregistry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m processor.localregistry",
        description=(
            "Run a genuine Schema Registry (Apicurio Registry, Confluent-compatible API) on "
            "127.0.0.1 with in-memory storage, from the application Maven fetches from Maven "
            f"Central. No Docker needed; needs Java {localregistry.MIN_JAVA}+ (JAVA_HOME, or "
            "the newest JDK in /usr/lib/jvm) and mvn."
        ),
        epilog=(
            f"Files live under <repo>/.local/registry (override: {localregistry.DIR_ENV}). "
            f"API port {localregistry.DEFAULT_PORT}, management (health) port+1 (override: "
            f"{localregistry.PORT_ENV}). Every start begins empty, with global compatibility "
            f"{localregistry.COMPATIBILITY}. The project uses {localregistry.URL_ENV} instead "
            "when it is set."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fetch", help="download and unpack the registry (no-op when cached)")
    up = sub.add_parser("up", help="start the registry unless it runs; print its URL")
    up.add_argument(
        "--timeout",
        type=float,
        default=localregistry.START_TIMEOUT_S,
        help="seconds to wait until it is ready (default %(default)s)",
    )
    down = sub.add_parser("down", help="stop the registry (no error if it is not running)")
    down.add_argument(
        "--timeout",
        type=float,
        default=localregistry.STOP_TIMEOUT_S,
        help="seconds to wait after SIGTERM before SIGKILL (default %(default)s)",
    )
    sub.add_parser("status", help="say whether the registry runs and is ready")
    sub.add_parser(
        "url", help=f"print the URL of its Confluent-compatible API (for {localregistry.URL_ENV})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            print(localregistry.fetch())
        elif args.command == "up":
            print(localregistry.up(timeout=args.timeout))
        elif args.command == "down":
            print("stopped" if localregistry.down(timeout=args.timeout) else "not running")
        elif args.command == "status":
            st = localregistry.status()
            state = "running" if st.running else "stopped"
            if st.running:
                state += f" (pid {st.pid}, {st.url}, "
                state += "ready)" if st.ready else "NOT ready)"
            print(f"registry: {state}")
            app = "cached" if st.app_cached else "not fetched"
            print(f"apicurio: {st.apicurio_version} ({app})")
            print(f"home:     {st.home}")
        elif args.command == "url":
            print(localregistry.url())
    except localregistry.LocalRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
