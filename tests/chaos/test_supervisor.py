"""The chaos run's supervisor on real `processor run` processes (no broker needed: they
are pointed at a port where nothing listens)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from processor.chaos.supervisor import Supervisor, run_command

NOWHERE = "127.0.0.1:1"


def _supervisor(tmp_path: Path, connect_timeout: str) -> Supervisor:
    command = run_command(
        NOWHERE, "app", 3, {}, {}, ["--connect-timeout", connect_timeout, "--log-level", "INFO"]
    )
    return Supervisor(command, tmp_path)


def _wait(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_instance_that_exits_on_its_own_is_reported_with_its_code_and_log(
    tmp_path: Path,
) -> None:
    supervisor = _supervisor(tmp_path, "1s")
    supervisor.start("p1")
    assert supervisor.running() == ["p1"]

    _wait(lambda: supervisor.reap())

    [exit] = supervisor.exits
    assert (exit.instance, exit.code, exit.what) == ("p1", 2, "exited on its own")
    assert "gave up after 1s (--connect-timeout)" in exit.log_tail
    assert supervisor.running() == []
    assert (tmp_path / "p1" / "processor.log").exists()


def test_kills_and_stops_asked_for_are_no_findings(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, "60s")  # waits for the broker all along
    supervisor.start("p1")
    supervisor.start("p2")
    time.sleep(0.5)

    assert supervisor.kill("p1") is True
    assert supervisor.kill("p1") is False  # not running any more
    # Still starting: Python's default SIGTERM ends it (-15); it had joined nothing.
    assert supervisor.stop("p2") == 0
    supervisor.start("p1")
    assert supervisor.instance("p1").starts == 2

    supervisor.shutdown()

    assert supervisor.reap() == []
    assert supervisor.exits == []
    assert supervisor.running() == []
