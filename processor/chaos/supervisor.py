"""The processor instances of a chaos run: `processor run` subprocesses with stable ids.

Each instance has its own state dir and log under the run's folder, and its HTTP
endpoints on a free port (``--http 127.0.0.1:0``; the port is read back from its
log). The supervisor signals them (SIGKILL, SIGTERM) and tells apart the exits
it caused from the ones it did not: an instance that exits on its own is a
finding, and is restarted so the run can go on.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_HTTP_LINE = re.compile(rb"HTTP on http://[\d.]+:(\d+) ")
_JOINED_LINE = re.compile(rb"instance \S+ joined group ")
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Exit:
    """An instance that exited without being told to (or failed a graceful stop)."""

    instance: str
    code: int | None
    at: float  # monotonic
    what: str  # "exited on its own" / "exited with 1 after SIGTERM" / ...
    log_tail: str


@dataclass
class Instance:
    name: str
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log_offset: int = 0  # where this start's lines begin
    http_port: int | None = None
    starts: int = 0
    partitions: tuple[int, ...] = ()  # as its /readyz last said
    stopping: bool = False  # SIGTERM sent, exit awaited

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    """`command` is `processor run` with everything but the per-instance flags."""

    command: Sequence[str]
    root: Path
    instances: dict[str, Instance] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def instance(self, name: str) -> Instance:
        with self._lock:
            if name not in self.instances:
                home = self.root / name
                self.instances[name] = Instance(name, home / "state", home / "processor.log")
            return self.instances[name]

    def running(self) -> list[str]:
        with self._lock:
            return sorted(n for n, i in self.instances.items() if i.running)

    def start(self, name: str) -> None:
        with self._lock:
            instance = self.instance(name)
            if instance.running:
                return
            instance.log_path.parent.mkdir(parents=True, exist_ok=True)
            instance.log_offset = (
                instance.log_path.stat().st_size if instance.log_path.exists() else 0
            )
            args = [
                *self.command,
                "--instance-id", name,
                "--state-dir", str(instance.state_dir),
                "--http", "127.0.0.1:0",
            ]  # fmt: skip
            with instance.log_path.open("ab") as out:
                # A session of its own: a Ctrl-C of the run reaches the run, which stops
                # the instances itself, not every instance at once behind its back.
                instance.process = subprocess.Popen(
                    args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            instance.started_at = time.monotonic()
            instance.http_port = None
            instance.starts += 1
            log.info("started %s (pid %d)", name, instance.process.pid)

    def kill(self, name: str) -> bool:
        """SIGKILL; True if it was running. The caller restarts it."""
        with self._lock:
            instance = self.instance(name)
            if not instance.running:
                return False
            assert instance.process is not None
            instance.process.send_signal(signal.SIGKILL)
            instance.process.wait()
            instance.process = None
            return True

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait: a graceful stop commits, leaves the group and exits 0.
        Anything else is recorded as an exit the run did not ask for."""
        with self._lock:
            instance = self.instance(name)
            process = instance.process
            if process is None:
                return None
            if process.poll() is not None:  # before we asked
                instance.process = None
                self._record(instance, process.returncode, "exited on its own")
                return process.returncode
            instance.stopping = True  # not reap()'s: this exit is asked for
            process.send_signal(signal.SIGTERM)
        try:
            code: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        with self._lock:
            instance.process = None
            instance.stopping = False
            if code == -signal.SIGTERM and not self._joined(instance):
                code = 0  # still starting: Python's default SIGTERM ended it, nothing to leave
            if code != 0:
                what = (
                    f"did not stop within {timeout:.0f}s of SIGTERM (killed)"
                    if code is None
                    else f"exited with {code} after SIGTERM"
                )
                self._record(instance, code, what)
        return code

    def reap(self) -> list[Exit]:
        """Instances that exited on their own since the last call (they are not restarted
        here)."""
        found = []
        with self._lock:
            for instance in self.instances.values():
                process = instance.process
                if process is not None and not instance.stopping and process.poll() is not None:
                    instance.process = None
                    found.append(self._record(instance, process.returncode, "exited on its own"))
        return found

    def _record(self, instance: Instance, code: int | None, what: str) -> Exit:
        exit = Exit(instance.name, code, time.monotonic(), what, self.log_tail(instance.name))
        self.exits.append(exit)
        log.error("instance %s %s (code %s)", instance.name, what, code)
        return exit

    def _joined(self, instance: Instance) -> bool:
        """Has this start of the instance joined the group (and so its handler for SIGTERM
        been installed, which happens before)?"""
        if not instance.log_path.exists():
            return False
        with instance.log_path.open("rb") as f:
            f.seek(instance.log_offset)
            return _JOINED_LINE.search(f.read()) is not None

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.instance(name).log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- what an instance says about itself ---------------------------------------------

    def port(self, name: str) -> int | None:
        """The HTTP port this start of the instance logged, once it did."""
        instance = self.instance(name)
        if instance.http_port is None and instance.log_path.exists():
            with instance.log_path.open("rb") as f:
                f.seek(instance.log_offset)
                match = _HTTP_LINE.search(f.read())
            if match:
                instance.http_port = int(match[1])
        return instance.http_port

    def readiness(self, name: str, timeout: float = 1.0) -> dict[str, object] | None:
        """Its /readyz body (200 or 503 alike), or None when it does not answer."""
        port = self.port(name)
        if port is None:
            return None
        request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503: not ready, same body
            return json.loads(exc.read())
        except (OSError, ValueError):
            return None

    def refresh_partitions(self, name: str) -> tuple[int, ...]:
        """The stateful partitions it owns now, or as it last said."""
        instance = self.instance(name)
        body = self.readiness(name, timeout=0.5)
        if body is not None and isinstance(body.get("partitions"), list):
            instance.partitions = tuple(int(p) for p in body["partitions"])  # type: ignore[union-attr]
        return instance.partitions

    def wait_ready(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.readiness(name)
            if body is not None and body.get("ready"):
                return True
            if not self.instance(name).running:
                return False
            time.sleep(0.2)
        return False

    def shutdown(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stops every instance still running, each gracefully (see `stop`)."""
        for name in self.running():
            self.stop(name, timeout)


def run_command(
    bootstrap: str,
    application_id: str,
    partitions: int,
    topic_overrides: dict[str, str],
    client_config: dict[str, str],
    extra: Sequence[str] = (),
) -> list[str]:
    """`processor run` for every instance of the run, without the per-instance flags."""
    args = [sys.executable, "-m", "processor", "run", "--bootstrap-servers", bootstrap]
    args += ["--application-id", application_id, "--partitions", str(partitions)]
    for default, name in topic_overrides.items():
        args += ["--topic", f"{default}={name}"]
    for key, value in client_config.items():
        args += ["-X", f"{key}={value}"]
    return [*args, *extra]
