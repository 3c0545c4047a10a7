"""`processor run` as a process of its own, watched as an operator would: over its
HTTP endpoints (/readyz, /metrics) and /proc, its log kept in a file."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from processor.bench.config import BenchError
from processor.topology import Topics

_METRIC = re.compile(r"^(vip_bundle_\w+?)(?:_total)? ([-+\deE.na]+)$", re.MULTILINE)
_CAUGHT_UP = re.compile(r"global tables caught up in ([\d.]+)s \((\d+) records\)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    """Memory lines of /proc/<pid>/status (VmHWM, VmRSS, ...), in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0])
    return values


class ProcessorRun:
    """One `processor run` process with the bench's topics; `start()` again after
    `kill()` is a restart with the same instance id and state dir."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int,
        state_dir: Path,
        log_path: Path,
        instance_id: str = "bench",
    ) -> None:
        self.log_path = log_path
        self._args = [
            sys.executable, "-m", "processor", "run",
            "--bootstrap-servers", bootstrap,
            "--application-id", topics.application_id,
            "--state-dir", str(state_dir),
            "--instance-id", instance_id,
            "--partitions", str(partitions),
            "--log-level", "INFO",
        ]  # fmt: skip
        for default, name in topics.overrides.items():
            self._args += ["--topic", f"{default}={name}"]
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started_at = 0.0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        # Served as in production, on a free port: runs may overlap on this machine.
        self.port = _free_port()
        with self.log_path.open("a") as log_file:
            self._process = subprocess.Popen(
                [*self._args, "--http", f"127.0.0.1:{self.port}"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()

    def check(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            tail = "\n".join(self.log_path.read_text().splitlines()[-30:])
            raise BenchError(f"processor exited with {self._process.returncode}:\n{tail}")

    def _get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body), or None while it does not answer yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def readiness(self) -> dict[str, Any] | None:
        """/readyz's JSON, or None while the server is not up."""
        answer = self._get("/readyz")
        return None if answer is None else json.loads(answer[1])

    def metrics(self) -> dict[str, float]:
        """The processor's own series from /metrics (counters without `_total`)."""
        answer = self._get("/metrics")
        if answer is None:
            return {}
        return {name: float(v) for name, v in _METRIC.findall(answer[1].decode())}

    def index_caught_up(self) -> tuple[float, int] | None:
        """(seconds, records) of the booking index's first catch-up, as it logged it."""
        found = _CAUGHT_UP.findall(self.log_path.read_text())
        return (float(found[-1][0]), int(found[-1][1])) if found else None

    def kill(self) -> float:
        """SIGKILL; returns when it was sent (monotonic)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        at = time.monotonic()
        self._process.wait()
        return at

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it; SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
