"""A genuine Schema Registry for local runs and tests, without Docker: Apicurio Registry.

Apicurio Registry speaks the Confluent Schema Registry API at ``/apis/ccompat/v7``, which is
what ``confluent_kafka.schema_registry`` talks to. Its ready-built Quarkus application comes
from Maven Central through ``mvn`` (see ``pom.xml`` beside this file; Confluent's registry is
not served there) and is cached under ``<repo>/.local/registry/app/``. It runs as a detached JVM
(Java 21 or newer) on 127.0.0.1 with in-memory storage: every start begins empty, with global
compatibility BACKWARD. Everything it writes stays under ``.local/registry/`` (override with
``VIP_LOCAL_REGISTRY_DIR``). CLI: ``python -m processor.localregistry --help``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPATIBILITY",
    "DIR_ENV",
    "MIN_JAVA",
    "PORT_ENV",
    "URL_ENV",
    "Java",
    "LocalRegistryError",
    "Paths",
    "Status",
    "apicurio_version",
    "down",
    "ensure_registry",
    "fetch",
    "find_java",
    "get_paths",
    "port",
    "render_command",
    "status",
    "up",
    "url",
]

DIR_ENV = "VIP_LOCAL_REGISTRY_DIR"
PORT_ENV = "VIP_LOCAL_REGISTRY_PORT"
URL_ENV = "SCHEMA_REGISTRY_URL"

HOST = "127.0.0.1"
# Far from the usual 8081 (Confluent) and 8080/9000 (Apicurio), so nothing else is in the way.
DEFAULT_PORT = 28081
CCOMPAT_PATH = "/apis/ccompat/v7"
READY_PATH = "/health/ready"
COMPATIBILITY = "BACKWARD"
MIN_JAVA = 21
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

PACKAGE_DIR = Path(__file__).resolve().parent
POM = PACKAGE_DIR / "pom.xml"
REPO_ROOT = PACKAGE_DIR.parent.parent
APP_JAR = "quarkus-run.jar"

# Where JDKs live besides JAVA_HOME: Debian/Ubuntu packages and Temurin's, then macOS.
JVM_DIRS = (Path("/usr/lib/jvm"), Path("/Library/Java/JavaVirtualMachines"))

# A few dozen schemas and requests, not a throughput server: a small heap, and only the C1
# JIT, which halves start-up CPU (measured on 2 busy cores: ready in ~3 s instead of ~7 s,
# ~4 s of CPU instead of ~8, 221 instead of 255 MiB RSS).
_JVM_FLAGS = (
    "-Xmx128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


class LocalRegistryError(RuntimeError):
    """The local registry could not be fetched, started or stopped."""


@dataclass(frozen=True)
class Paths:
    """Every file the local registry uses, all under one home folder."""

    home: Path

    @property
    def app_root(self) -> Path:
        return self.home / "app"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs / "registry.log"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def pid_file(self) -> Path:
        return self.home / "registry.pid"

    @property
    def lock_file(self) -> Path:
        return self.home / ".lock"

    @property
    def app(self) -> Path:
        """The application folder for the current pom.xml: any change to it means a new one."""
        digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
        return self.app_root / f"apicurio-registry-{apicurio_version()}-{digest}"


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    url: str | None
    ready: bool
    apicurio_version: str
    app_cached: bool
    home: Path


@dataclass(frozen=True)
class Java:
    executable: Path
    version: int  # the feature release: 17, 21, 25, ...


def get_paths() -> Paths:
    override = os.environ.get(DIR_ENV)
    home = Path(override).expanduser().resolve() if override else REPO_ROOT / ".local" / "registry"
    return Paths(home)


def port() -> int:
    """The HTTP port of the registry's API; its management interface (health) is on the next."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        value = int(raw)
    except ValueError:
        raise LocalRegistryError(f"{PORT_ENV}={raw!r} is not a port number") from None
    if not 1 <= value <= 65534:
        raise LocalRegistryError(f"{PORT_ENV}={value} is out of range (1..65534)")
    return value


def url(number: int | None = None) -> str:
    """The Confluent-compatible API of the local registry: what SCHEMA_REGISTRY_URL takes."""
    return f"http://{HOST}:{port() if number is None else number}{CCOMPAT_PATH}"


def apicurio_version() -> str:
    match = re.search(r"<apicurio\.version>([^<]+)</apicurio\.version>", POM.read_text())
    if match is None:
        raise LocalRegistryError(f"no <apicurio.version> property in {POM}")
    return match.group(1).strip()


# --------------------------------------------------------------------------- Java


def _release_version(home: Path) -> int | None:
    """The feature version in a JDK's `release` file (JAVA_VERSION="25.0.3" -> 25)."""
    with contextlib.suppress(OSError):
        match = re.search(r'^JAVA_VERSION="([^"]+)"', (home / "release").read_text(), re.M)
        if match:
            return _feature(match.group(1))
    return None


def _feature(version: str) -> int | None:
    # Java 8 and older call themselves 1.8.
    match = re.match(r"(?:1\.)?(\d+)", version)
    return int(match.group(1)) if match else None


def _java_at(home: Path) -> Java | None:
    executable = home / "bin" / "java"
    if not executable.is_file():
        return None
    version = _release_version(home)
    if version is None:
        version = _version_from_running(executable)
    return Java(executable, version) if version is not None else None


def _version_from_running(executable: Path) -> int | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        result = subprocess.run(
            [str(executable), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        match = re.search(r'version "([^"]+)"', result.stderr + result.stdout)
        if match:
            return _feature(match.group(1))
    return None


def find_java(
    java_home: str | None = None, jvm_dirs: tuple[Path, ...] = JVM_DIRS, path: str | None = None
) -> Java:
    """A Java 21+ to run Apicurio 3: JAVA_HOME if it is one, else the newest JDK installed in
    /usr/lib/jvm (or macOS's folder), else `java` on PATH. The machine's default Java is often
    17, which Apicurio 3 rejects (UnsupportedClassVersionError), hence the search."""
    java_home = os.environ.get("JAVA_HOME") if java_home is None else java_home
    seen: list[str] = []
    if java_home:
        found = _java_at(Path(java_home))
        if found is not None and found.version >= MIN_JAVA:
            return found
        seen.append(f"JAVA_HOME={java_home} ({found.version if found else 'no bin/java'})")
    installed: list[Java] = []
    for root in jvm_dirs:
        with contextlib.suppress(OSError):
            for home in sorted(root.iterdir()):
                # macOS bundles keep the JDK under Contents/Home.
                found = _java_at(home) or _java_at(home / "Contents" / "Home")
                if found is not None and found.executable.resolve() not in {
                    j.executable.resolve() for j in installed
                }:
                    installed.append(found)
    eligible = [j for j in installed if j.version >= MIN_JAVA]
    if eligible:
        return max(eligible, key=lambda j: j.version)
    seen += [f"{j.executable} ({j.version})" for j in installed]
    on_path = shutil.which("java", path=path)
    if on_path is not None:
        real = Path(on_path).resolve()
        found = _java_at(real.parent.parent)
        if found is not None and found.version >= MIN_JAVA:
            return found
        seen.append(f"{on_path} ({found.version if found else 'unknown version'})")
    raise LocalRegistryError(
        f"Apicurio Registry {apicurio_version()} needs Java {MIN_JAVA} or newer; found "
        f"{', '.join(seen) or 'no Java at all'}. Install a JDK {MIN_JAVA}+ (e.g. `apt-get "
        f"install openjdk-{MIN_JAVA}-jdk-headless`) or point JAVA_HOME at one."
    )


# ---------------------------------------------------------------------- the app


def _app_cached(app: Path) -> bool:
    return (app / ".complete").is_file() and (app / APP_JAR).is_file()


def fetch() -> Path:
    """Unpack Apicurio Registry from Maven Central (once); return the application folder."""
    paths = get_paths()
    with _locked(paths):
        return _fetch(paths)


def _fetch(paths: Paths) -> Path:
    app = paths.app
    if _app_cached(app):
        return app
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalRegistryError("`mvn` (Apache Maven) is not on PATH; it fetches the registry")
    _say(f"fetching Apicurio Registry {apicurio_version()} from Maven Central into {app} ...")
    started = time.monotonic()
    # Unpack into a staging folder and rename at the end: an interrupted fetch leaves no half app.
    staging = paths.app_root / f".{app.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:unpack",
        f"-Dlocalregistry.app.dir={staging}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (staging / APP_JAR).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        output = (result.stdout + result.stderr).strip() or f"no {APP_JAR} in the unpacked archive"
        raise LocalRegistryError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{output}")
    shutil.rmtree(staging / ".maven", ignore_errors=True)  # the plugin's unpack markers
    (staging / ".complete").write_text(f"apicurio-registry-app {apicurio_version()}\n")
    shutil.rmtree(app, ignore_errors=True)
    staging.rename(app)
    _say(f"fetched in {time.monotonic() - started:.1f} s")
    return app


def render_command(java: Path, app: Path, paths: Paths, http_port: int) -> list[str]:
    """The JVM command line: loopback only, in-memory storage, scratch files under home."""
    settings = {
        "quarkus.http.host": HOST,
        "quarkus.http.port": http_port,
        # The management interface (health, metrics) listens on 0.0.0.0:9000 unless told.
        "quarkus.management.host": HOST,
        "quarkus.management.port": http_port + 1,
        # In-memory H2 (also Apicurio's default, said here so no default change can alter it).
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        "apicurio.datasource.url": "jdbc:h2:mem:registry",
        # Apicurio's default global rule is NONE; Confluent's, which clients expect, BACKWARD.
        # Set from the start (no window without it); _set_compatibility() checks it.
        "apicurio.rules.global.compatibility": COMPATIBILITY,
        # Both default to /tmp, shared with everything else on the machine.
        "apicurio.storage.snapshot.location": paths.tmp,
        "apicurio.import.work-dir": paths.tmp,
        "java.io.tmpdir": paths.tmp,
    }
    return [
        str(java),
        *_JVM_FLAGS,
        *(f"-D{key}={value}" for key, value in settings.items()),
        "-jar",
        str(app / APP_JAR),
    ]


# ----------------------------------------------------------------------- processes


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    """Serialise up/down/fetch across processes (e.g. two test sessions starting at once)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our own child: an unreaped zombie would look alive to kill(0).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_line(pid: int) -> list[str]:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.exists():
        with contextlib.suppress(OSError):
            return proc.read_bytes().decode(errors="replace").split("\0")
        return []
    # No /proc (macOS): ask ps.
    result = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    return result.stdout.split()


def _ours(cmdline: list[str], paths: Paths) -> bool:
    root = f"{paths.app_root}{os.sep}"
    return any(arg.startswith(root) and arg.endswith(APP_JAR) for arg in cmdline)


def _running(paths: Paths) -> tuple[int, int] | None:
    """(pid, HTTP port) of OUR registry if it runs; a stale pid file is removed."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid):
        cmdline = _command_line(pid)
        if _ours(cmdline, paths):
            for arg in cmdline:
                if arg.startswith("-Dquarkus.http.port="):
                    return pid, int(arg.partition("=")[2])
    paths.pid_file.unlink(missing_ok=True)
    return None


def _port_free(number: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the JVM's listener, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, number))
        except OSError:
            return False
    return True


def _spawn(command: list[str], paths: Paths) -> subprocess.Popen[bytes]:
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    with paths.log_file.open("wb") as out:
        # A new session: the registry outlives this Python process and ignores its Ctrl-C.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.home,
            start_new_session=True,
        )
    paths.pid_file.write_text(f"{proc.pid}\n")
    return proc


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        _say(f"registry pid {pid} ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


# ---------------------------------------------------------------------- readiness


def _ready(http_port: int, timeout: float = 2.0) -> bool:
    """Quarkus' readiness check on the management port (storage and API up)."""
    probe = f"http://{HOST}:{http_port + 1}{READY_PATH}"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_ready(http_port: int, deadline: float, alive: Callable[[], bool]) -> None:
    while not _ready(http_port):
        if not alive():
            raise LocalRegistryError("the registry process exited during start-up")
        if time.monotonic() >= deadline:
            raise LocalRegistryError(f"the registry was not ready at {READY_PATH} in time")
        time.sleep(0.2)


def _set_compatibility(address: str) -> None:
    # Imported here: its HTTP stack costs ~0.5 s to import, needed only after a start.
    from confluent_kafka.schema_registry import SchemaRegistryClient

    # Also through the API, so a start that ignored the property cannot go unnoticed.
    client = SchemaRegistryClient({"url": address})
    client.set_compatibility(level=COMPATIBILITY)
    level = client.get_compatibility()
    if level != COMPATIBILITY:
        raise LocalRegistryError(f"global compatibility is {level} after setting {COMPATIBILITY}")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _report_log(paths: Paths) -> None:
    text = _tail(paths.log_file)
    if text:
        _say(f"----- last lines of {paths.log_file} -----\n{text}\n----- end -----")
    _say(f"registry log: {paths.log_file}")


def _say(message: str) -> None:
    print(f"[localregistry] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------- API


def up(timeout: float = START_TIMEOUT_S) -> str:
    """Start the local registry unless it already runs; return its URL (the ccompat API)."""
    return _up(timeout)[0]


def _up(timeout: float) -> tuple[str, bool]:
    """Like up(); the flag says whether this call started the registry."""
    paths = get_paths()
    number = port()
    with _locked(paths):
        running = _running(paths)
        if running is not None:
            pid, running_port = running
            if running_port != number:
                raise LocalRegistryError(
                    f"the local registry (pid {pid}) runs on port {running_port}, not {number}; "
                    f"stop it with `python -m processor.localregistry down` or set "
                    f"{PORT_ENV}={running_port}"
                )
            try:
                _wait_ready(number, time.monotonic() + timeout, lambda: _alive(pid))
            except LocalRegistryError:
                _report_log(paths)
                raise
            return url(number), False

        for taken in (number, number + 1):
            if not _port_free(taken):
                raise LocalRegistryError(
                    f"port {taken} on {HOST} is already in use by another process (not this "
                    f"project's registry); free it or pick another registry port with "
                    f"{PORT_ENV}=<port> (its management interface uses port+1)"
                )

        java = find_java()
        app = _fetch(paths)
        address = url(number)
        _say(
            f"starting Apicurio Registry {apicurio_version()} on {address} "
            f"(Java {java.version}, log in {paths.log_file})"
        )
        started = time.monotonic()
        proc = _spawn(render_command(java.executable, app, paths, number), paths)
        try:
            _wait_ready(number, started + timeout, lambda: proc.poll() is None)
            _set_compatibility(address)
        except BaseException:
            # Also on Ctrl-C: never leave a half-started registry behind.
            _report_log(paths)
            _terminate(proc.pid, STOP_TIMEOUT_S)
            paths.pid_file.unlink(missing_ok=True)
            raise
        elapsed = time.monotonic() - started
        _say(f"registry ready in {elapsed:.1f} s (global compatibility {COMPATIBILITY})")
        return address, True


def down(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local registry; True if one was running. Never fails when none runs."""
    paths = get_paths()
    if not paths.home.exists():
        return False
    with _locked(paths):
        running = _running(paths)
        if running is None:
            return False
        _terminate(running[0], timeout)
        paths.pid_file.unlink(missing_ok=True)
        return True


def status() -> Status:
    paths = get_paths()
    running = _running(paths) if paths.home.exists() else None
    return Status(
        running=running is not None,
        pid=running[0] if running else None,
        url=url(running[1]) if running else None,
        ready=running is not None and _ready(running[1]),
        apicurio_version=apicurio_version(),
        app_cached=_app_cached(paths.app),
        home=paths.home,
    )


def ensure_registry() -> tuple[str, Callable[[], None]]:
    """A registry for tests and the demo: (URL, stop).

    ``SCHEMA_REGISTRY_URL`` if set (nothing is started); else the local registry, which ``stop``
    stops only if this call started it.
    """
    configured = os.environ.get(URL_ENV, "").strip()
    if configured:
        return configured, lambda: None
    address, started = _up(START_TIMEOUT_S)
    if not started:
        return address, lambda: None

    def stop() -> None:
        down()

    return address, stop
