"""The CLI against brokers that never answer, as a new user meets it; and against one that does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from processor.connect import wait_for_kafka
from processor.logs import translator


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processor(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "processor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    return done, time.monotonic() - started


def test_run_against_a_closed_port_says_so_clearly_and_exits_2(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    done, elapsed = processor(
        "run", "--bootstrap-servers", address, "--connect-timeout", "3s",
        "--http", "off", "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert 3 <= elapsed < 10
    lines = done.stderr.splitlines()
    retrying = [line for line in lines if "retrying" in line]
    # One line at once, then at most one per 5 s: librdkafka tried every 50 ms meanwhile.
    assert len(retrying) == 1, lines
    assert retrying[0].endswith(
        f"WARNING processor.kafka: cannot reach Kafka at {address} (connection refused); retrying"
    )
    assert lines[-1].endswith(
        f"ERROR   processor: cannot reach Kafka at {address} (connection refused); "
        "gave up after 3s (--connect-timeout)"
    )
    assert len(lines) == 2, lines  # nothing else: no raw %3|...|FAIL| lines, no traceback
    assert not (tmp_path / "vip-bundle-process-manager").exists()  # gave up before any state


def test_json_lines_and_the_timeout_from_the_environment(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    done, elapsed = processor(
        "topics", "create", "--bootstrap-servers", address, "--log-format", "json",
        env={"VIP_CONNECT_TIMEOUT": "1500ms"},
    )  # fmt: skip
    assert done.returncode == 2
    assert elapsed < 8
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["level"], e["logger"]) for e in entries] == [
        ("WARNING", "processor.kafka"),
        ("ERROR", "processor"),
    ]
    assert entries[0]["kafka_broker"] == address
    assert entries[-1]["message"] == (
        f"cannot reach Kafka at {address} (connection refused); "
        "gave up after 1.5s (--connect-timeout)"
    )


@pytest.mark.parametrize(
    "command",
    [["reset"], ["simulate", "--bundles", "1"], ["demo", "--bundles", "1", "--http", "off"]],
    ids=lambda c: c[0],
)
def test_every_command_checks_the_brokers_before_it_starts(
    command: list[str], tmp_path: Path
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    state = ["--state-dir", str(tmp_path)] if command[0] != "simulate" else []
    done, _ = processor(
        *command, *state, "--bootstrap-servers", address, "--connect-timeout", "1s", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot reach Kafka at {address} (connection refused); gave up" in done.stderr
    assert "|FAIL|" not in done.stderr


def test_an_unknown_host_is_named_as_such() -> None:
    done, _ = processor(
        "topics", "create", "--bootstrap-servers", "nosuchhost.invalid:9092",
        "--connect-timeout", "1s",
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot reach Kafka at nosuchhost.invalid:9092 (cannot resolve host:" in done.stderr


def test_version_names_the_package_and_the_kafka_client() -> None:
    done, _ = processor("--version")
    assert done.returncode == 0
    ours = metadata.version("vip-bundle-process-manager")
    kafka = metadata.version("confluent-kafka")
    assert done.stdout.startswith(f"processor {ours} (confluent-kafka {kafka}, librdkafka 2.")


@pytest.mark.integration
def test_brokers_that_answer_pass_at_once(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    admin = wait_for_kafka(kafka_bootstrap, timeout_s=30)
    assert time.monotonic() - started < 5
    assert admin.list_topics(timeout=10).brokers
    assert translator().failures_since(started) == {}
