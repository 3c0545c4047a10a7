"""docker-compose.yml against the code: no Docker and no broker needed (the registry's
healthcheck is tried on the local registry).

Every service that runs the processor image runs a command the CLI's own parser accepts (so
every flag exists), every env var it sets is one the package reads, the two processor instances
are distinct, the broker has the single-node settings of the local broker, and the registry is
the local registry's Apicurio, in memory, with a healthcheck that works.
"""

from __future__ import annotations

import argparse
import ast
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import localregistry
from processor.cli import build_parser, duration
from processor.localkafka import kafka_version, render_server_properties

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "processor" / "Dockerfile"
PACKAGE = ROOT / "processor"
BROKER = "kafka"
REGISTRY = "schema-registry"

# Broker settings a single node needs (replicas of internal topics, transactions, group joins,
# no auto-created topics): the compose broker must match the local broker's.
SINGLE_NODE = (
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
    "default.replication.factor",
    "min.insync.replicas",
    "group.initial.rebalance.delay.ms",
    "auto.create.topics.enable",
)


# ---------------------------------------------------------------------------- helpers


def _is_environ(node: ast.expr) -> bool:
    """`os.environ` or a bare `environ`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _is_getenv(func: ast.expr) -> bool:
    """`os.environ.get`, `os.getenv` or a bare `getenv`."""
    if isinstance(func, ast.Attribute):
        if func.attr == "get":
            return _is_environ(func.value)
        return func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os"
    return isinstance(func, ast.Name) and func.id == "getenv"


def env_vars_read(package: Path) -> set[str]:
    """Names the package reads from the environment: os.environ.get(X), os.getenv(X) and
    os.environ[X], with X a string literal or a module constant bound to one."""
    names: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = {
            target.id: node.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            key: ast.expr | None = None
            if isinstance(node, ast.Call) and _is_getenv(node.func) and node.args:
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
            elif isinstance(key, ast.Name) and key.id in constants:
                names.add(constants[key.id])
    return names


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in mapping or list form, values as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, in short or long syntax."""
    result: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            result[rest.split(":")[0]] = source
        else:
            result[volume["target"]] = volume.get("source", "")
    return result


def kafka_properties(env: dict[str, str]) -> dict[str, str]:
    """The apache/kafka image's rule: KAFKA_FOO_BAR -> foo.bar, `__` -> `-`, `___` -> `_`."""
    return {
        name.removeprefix("KAFKA_")
        .lower()
        .replace("___", "\0")
        .replace("__", "-")
        .replace("_", ".")
        .replace("\0", "_"): value
        for name, value in env.items()
        if name.startswith("KAFKA_")
    }


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """dependency -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), f"{COMPOSE.name} is missing at the repository root"
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def processor_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the processor image: those that build it, and those that use the
    image one of them builds."""
    built = {s["image"] for s in services.values() if "build" in s and s.get("image")}
    found = {name: s for name, s in services.items() if "build" in s or s.get("image") in built}
    assert found, "no service runs the processor image"
    for name, service in found.items():
        if "build" in service:
            build = service["build"]
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else ""
            context = build.get("context", ".") if isinstance(build, dict) else build
            assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, name
    return found


@pytest.fixture(scope="module")
def parsed(processor_services: dict[str, dict[str, Any]]) -> dict[str, argparse.Namespace]:
    """Each processor service's command parsed by the real CLI parser, under the service's env
    (the parser reads its env-backed defaults when it is built)."""
    result = {}
    for name, service in processor_services.items():
        command = service.get("command")
        assert isinstance(command, list), f"{name}: give `command` in list form"
        assert all(isinstance(arg, str) for arg in command), f"{name}: quote every argument"
        assert command[:1] == ["processor"], f"{name}: the command must start with `processor`"
        with pytest.MonkeyPatch.context() as patch:
            for key, value in environment(service).items():
                patch.setenv(key, value)
            try:
                result[name] = build_parser().parse_args(command[1:])
            except SystemExit:
                pytest.fail(f"{name}: the CLI rejects {' '.join(command)} (see stderr)")
    return result


def options_of(command: list[str]) -> set[str]:
    """The option strings of the (sub)command that `command` names, e.g. `topics create`."""
    parser = build_parser()
    for token in command:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or token not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[token]
    return {option for action in parser._actions for option in action.option_strings}


def by_command(parsed: dict[str, argparse.Namespace], command: str) -> dict[str, Any]:
    return {name: args for name, args in parsed.items() if args.command == command}


# ---------------------------------------------------------------------------- tests


def test_every_processor_command_parses(parsed: dict[str, argparse.Namespace]) -> None:
    commands = sorted(args.command for args in parsed.values())
    assert commands == ["run", "run", "simulate", "topics"]
    for name, args in by_command(parsed, "topics").items():
        assert args.topics_command == "create" and args.all, name


def test_every_flag_is_spelt_out(processor_services: dict[str, dict[str, Any]]) -> None:
    # argparse also takes unambiguous prefixes (--no-prog): the compose file must not rely on it.
    for name, service in processor_services.items():
        command = service["command"][1:]
        options = options_of(command)
        for token in command:
            if token.startswith("--"):
                assert token.partition("=")[0] in options, f"{name}: {token} is not a flag"
            elif token.startswith("-") and len(token) > 1:
                assert token[:2] in options, f"{name}: {token} is not a flag"


def test_the_scan_for_env_vars_finds_what_the_package_reads() -> None:
    read = env_vars_read(PACKAGE)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "VIP_SCHEMA_DIR"} <= read


def test_every_env_var_of_a_processor_service_is_read_by_the_package(
    processor_services: dict[str, dict[str, Any]],
) -> None:
    read = env_vars_read(PACKAGE)
    for name, service in processor_services.items():
        unread = sorted(set(environment(service)) - read)
        assert not unread, f"{name} sets env vars nothing in processor/ reads: {unread}"


def test_processors_reach_the_broker_through_its_internal_listener(
    services: dict[str, dict[str, Any]], parsed: dict[str, argparse.Namespace]
) -> None:
    advertised = environment(services[BROKER])["KAFKA_ADVERTISED_LISTENERS"]
    internal = {
        address
        for listener in advertised.split(",")
        for address in [listener.partition("://")[2]]
        if address.rpartition(":")[0] in services
    }
    assert internal, "the broker advertises no listener under a service name"
    for name, args in parsed.items():
        assert args.bootstrap_servers in internal, f"{name}: {args.bootstrap_servers}"


def test_two_processor_instances_with_their_own_id_and_state(
    compose: dict[str, Any],
    processor_services: dict[str, dict[str, Any]],
    parsed: dict[str, argparse.Namespace],
) -> None:
    runs = by_command(parsed, "run")
    assert len(runs) == 2
    ids = [args.instance_id for args in runs.values()]
    assert all(ids) and len(set(ids)) == len(ids), f"instance ids must be set and distinct: {ids}"
    sources = []
    for name, args in runs.items():
        source = mounts(processor_services[name]).get(str(args.state_dir))
        assert source, f"{name}: no volume on its --state-dir {args.state_dir}"
        assert source in (compose.get("volumes") or {}), f"{name}: {source} is not a named volume"
        sources.append(source)
    assert len(set(sources)) == len(sources), f"state volumes must be distinct: {sources}"


def test_processors_stop_cleanly_restart_and_serve_http(
    processor_services: dict[str, dict[str, Any]], parsed: dict[str, argparse.Namespace]
) -> None:
    for name, args in by_command(parsed, "run").items():
        service = processor_services[name]
        assert service.get("restart") == "unless-stopped", name
        assert duration(str(service.get("stop_grace_period", "10s"))) >= 30, name
        assert args.http is not None and args.http[0] == "0.0.0.0", f"{name}: --http {args.http}"
        assert "healthcheck" in service, name


def test_start_order_broker_topics_processors_simulator(
    services: dict[str, dict[str, Any]], parsed: dict[str, argparse.Namespace]
) -> None:
    assert "healthcheck" in services[BROKER]
    (topics,) = by_command(parsed, "topics")
    assert depends_on(services[topics]) == {BROKER: "service_healthy"}
    runs = by_command(parsed, "run")
    for name in runs:
        assert depends_on(services[name]) == {topics: "service_completed_successfully"}, name
    for name in by_command(parsed, "simulate"):
        assert set(depends_on(services[name])) == set(runs), name


def test_one_application_id_and_partition_count(parsed: dict[str, argparse.Namespace]) -> None:
    assert len({args.application_id for args in parsed.values()}) == 1
    # `run` creates missing internal topics with its --partitions: the same as the topics service.
    counts = {args.partitions for args in parsed.values() if hasattr(args, "partitions")}
    assert len(counts) == 1, counts


def test_broker_is_a_single_kraft_node_set_up_like_the_local_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    broker = services[BROKER]
    assert broker["image"] == f"apache/kafka:{kafka_version()}", "same Kafka as the local broker"
    env = environment(broker)
    assert env.get("CLUSTER_ID"), "the apache/kafka image needs CLUSTER_ID in KRaft mode"
    properties = kafka_properties(env)
    assert properties["process.roles"] == "broker,controller"
    local = dict(
        line.split("=", 1)
        for line in render_server_properties(broker_port=9092, data_dir=Path("/data")).splitlines()
        if "=" in line and not line.startswith("#")
    )
    for key in SINGLE_NODE:
        assert properties.get(key) == local[key], f"{key}: {properties.get(key)} != {local[key]}"
    assert mounts(broker).get(properties["log.dirs"]), "the broker's log.dirs is not on a volume"


def test_image_builds_its_wheel_with_the_schemas() -> None:
    # pyproject.toml maps the package processor_schemas onto schemas/: without it in the
    # build directory, `pip install .` fails.
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines()]
    copies = {line[1].rstrip("/"): i for i, line in enumerate(lines) if line[:1] == ["COPY"]}
    install = next(i for i, line in enumerate(lines) if line[:4] == ["RUN", "pip", "install", "."])
    assert "schemas" in copies, "the image does not COPY schemas/"
    assert copies["schemas"] < install, "schemas/ is copied after the package is installed"


def test_image_points_vip_schema_dir_at_the_copied_schemas() -> None:
    text = DOCKERFILE.read_text()
    schema_dir = re.search(r"\bVIP_SCHEMA_DIR=(\S+)", text)
    copied = re.search(r"^COPY\s+schemas/?\s+(\S+)", text, re.MULTILINE)
    assert schema_dir and copied
    assert schema_dir[1].rstrip("/") == copied[1].rstrip("/")


def test_registry_is_the_local_registrys_apicurio_in_memory_with_backward(
    services: dict[str, dict[str, Any]],
) -> None:
    registry = services[REGISTRY]
    version = localregistry.apicurio_version()
    assert registry["image"] == f"apicurio/apicurio-registry:{version}", "same as the local one"
    env = environment(registry)
    assert (env["APICURIO_STORAGE_KIND"], env["APICURIO_STORAGE_SQL_KIND"]) == ("sql", "h2")
    assert env["APICURIO_DATASOURCE_URL"].startswith("jdbc:h2:mem:")
    assert env["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == localregistry.COMPATIBILITY
    # Only the API is published, and only on the host's loopback.
    published = [str(p) for p in registry.get("ports") or []]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert {p.rsplit(":", 1)[1] for p in published} == {env["QUARKUS_HTTP_PORT"]}
    assert "healthcheck" in registry


def _healthcheck_on(services: dict[str, dict[str, Any]], port: int) -> int:
    """Run the registry's healthcheck here with bash, aimed at `port`; its exit code."""
    registry = services[REGISTRY]
    test = registry["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    management = environment(registry)["QUARKUS_MANAGEMENT_PORT"]
    target = f"/dev/tcp/127.0.0.1/{management}"
    assert target in test[3]
    # `$$` is compose's escape for a literal `$`.
    script = test[3].replace(target, f"/dev/tcp/127.0.0.1/{port}").replace("$$", "$")
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=30).returncode


@pytest.mark.integration
def test_registry_healthcheck_tells_ready_from_not(
    services: dict[str, dict[str, Any]], local_registry_url: str
) -> None:
    api = localregistry.port()
    assert _healthcheck_on(services, api + 1) == 0  # the management port: ready
    assert _healthcheck_on(services, api) != 0  # the API port has no /health/ready: 404
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert _healthcheck_on(services, closed) != 0
