"""The local Schema Registry (processor.localregistry): Java discovery, its command line, and the
real Apicurio Registry it starts: loopback only, ready, BACKWARD, idempotent, clear failures."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from processor import localregistry
from processor.localregistry import LocalRegistryError, Paths

# --------------------------------------------------------------------- Java search


def fake_jdk(root: Path, name: str, version: str) -> Path:
    """A JDK folder as find_java sees it: bin/java and a `release` file."""
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    return home


def test_find_java_takes_the_newest_jdk_21_or_later(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm, "java-17-openjdk-amd64", "17.0.15")
    fake_jdk(jvm, "java-21-openjdk-amd64", "21.0.7")
    newest = fake_jdk(jvm, "temurin-25-jdk-amd64", "25.0.3")
    java = localregistry.find_java(java_home="", jvm_dirs=(jvm,), path="")
    assert (java.executable, java.version) == (newest / "bin" / "java", 25)


def test_find_java_prefers_java_home_when_recent_enough(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm, "temurin-25", "25.0.3")
    chosen = fake_jdk(tmp_path, "jdk21", "21.0.1")
    java = localregistry.find_java(java_home=str(chosen), jvm_dirs=(jvm,), path="")
    assert java.version == 21 and java.executable == chosen / "bin" / "java"


def test_find_java_skips_a_java_home_that_is_too_old(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    newer = fake_jdk(jvm, "temurin-25", "25.0.3")
    old = fake_jdk(tmp_path, "jdk17", "17.0.15")
    java = localregistry.find_java(java_home=str(old), jvm_dirs=(jvm,), path="")
    assert java.executable == newer / "bin" / "java"


def test_find_java_falls_back_to_java_on_path(tmp_path: Path) -> None:
    home = fake_jdk(tmp_path, "somewhere/jdk", "22.0.2")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(home / "bin" / "java")
    java = localregistry.find_java(java_home="", jvm_dirs=(tmp_path / "none",), path=str(bin_dir))
    assert java.version == 22


def test_find_java_without_java_21_says_what_it_found(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm, "java-17-openjdk-amd64", "17.0.15")
    fake_jdk(jvm, "java-8", "1.8.0_392")
    with pytest.raises(LocalRegistryError) as caught:
        localregistry.find_java(java_home="", jvm_dirs=(jvm,), path="")
    message = str(caught.value)
    assert "needs Java 21 or newer" in message
    assert "java-17-openjdk-amd64/bin/java (17)" in message and "java-8/bin/java (8)" in message


def test_this_machine_has_a_java_for_the_registry() -> None:
    java = localregistry.find_java()
    assert java.version >= localregistry.MIN_JAVA and java.executable.is_file()


# ------------------------------------------------------------------- command line


def test_command_binds_api_and_management_to_loopback_with_memory_storage(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    cmd = localregistry.render_command(Path("/jdk/bin/java"), tmp_path / "app", paths, 31000)
    props = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("-D"))
    assert props["quarkus.http.host"] == props["quarkus.management.host"] == "127.0.0.1"
    assert (props["quarkus.http.port"], props["quarkus.management.port"]) == ("31000", "31001")
    assert props["apicurio.storage.kind"] == "sql"
    assert props["apicurio.datasource.url"].startswith("jdbc:h2:mem:")
    assert props["apicurio.rules.global.compatibility"] == "BACKWARD"
    assert props["java.io.tmpdir"] == str(paths.tmp)
    assert cmd[0] == "/jdk/bin/java"
    assert cmd[-2:] == ["-jar", str(tmp_path / "app" / "quarkus-run.jar")]


def test_port_and_url_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(localregistry.PORT_ENV, raising=False)
    assert localregistry.url() == "http://127.0.0.1:28081/apis/ccompat/v7"
    monkeypatch.setenv(localregistry.PORT_ENV, "31081")
    assert localregistry.port() == 31081
    assert localregistry.url() == "http://127.0.0.1:31081/apis/ccompat/v7"
    for bad in ("http", "0", "65535"):
        monkeypatch.setenv(localregistry.PORT_ENV, bad)
        with pytest.raises(LocalRegistryError, match=localregistry.PORT_ENV):
            localregistry.port()


def test_ensure_registry_uses_schema_registry_url_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(localregistry.URL_ENV, "https://registry.example:8081")
    monkeypatch.setenv(localregistry.DIR_ENV, str(tmp_path / "home"))
    url, stop = localregistry.ensure_registry()
    stop()
    assert url == "https://registry.example:8081"
    assert not (tmp_path / "home").exists()


# ------------------------------------------------------------------- real registry


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            number = sock.getsockname()[1]
        if (
            number < 65535
            and localregistry._port_free(number)
            and localregistry._port_free(number + 1)
        ):
            return number
    raise AssertionError("no two free consecutive ports")


def _listening_addresses(number: int) -> set[str]:
    """Local addresses with a LISTEN socket on `number`, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == number:  # 0A: LISTEN
                assert len(address) == width
                found.add(address)
    return found


def _loopback(address: str) -> bool:
    # Little-endian words: 127.0.0.1 is 0100007F; as IPv4-mapped IPv6 ::ffff:127.0.0.1 it is
    # 0000000000000000FFFF00000100007F; ::1 is 00000000000000000000000001000000.
    return address in {
        "0100007F",
        "0000000000000000FFFF00000100007F",
        "00000000000000000000000001000000",
    }


@pytest.mark.integration
def test_local_registry_listens_on_loopback_only(local_registry_url: str) -> None:
    st = localregistry.status()
    assert st.running and st.ready and st.url == local_registry_url
    number = localregistry.port()
    for each in (number, number + 1):  # the API, then the management interface
        addresses = _listening_addresses(each)
        assert addresses, f"nothing listens on port {each}"
        assert all(_loopback(a) for a in addresses), f"port {each} listens on {addresses}"


@pytest.mark.integration
def test_local_registry_starts_with_global_compatibility_backward(local_registry_url: str) -> None:
    client = SchemaRegistryClient({"url": local_registry_url})
    assert client.get_compatibility() == "BACKWARD"


@pytest.mark.integration
def test_up_is_idempotent(local_registry_url: str) -> None:
    pid = localregistry.status().pid
    assert localregistry.up() == local_registry_url
    assert localregistry.status().pid == pid


@pytest.mark.integration
def test_cli_status_and_url(local_registry_url: str) -> None:
    run = [sys.executable, "-m", "processor.localregistry"]
    status = subprocess.run([*run, "status"], capture_output=True, text=True, check=True)
    pid = localregistry.status().pid
    assert f"running (pid {pid}, {local_registry_url}, ready)" in status.stdout
    url = subprocess.run([*run, "url"], capture_output=True, text=True, check=True)
    assert url.stdout.strip() == local_registry_url


def test_up_refuses_a_port_in_use_by_something_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setenv(localregistry.DIR_ENV, str(tmp_path))
        monkeypatch.setenv(localregistry.PORT_ENV, str(taken))
        in_use = f"port {taken} on 127.0.0.1 is already in use"
        with pytest.raises(LocalRegistryError, match=in_use):
            localregistry.up()
    assert not (tmp_path / "registry.pid").exists()


def test_a_registry_that_dies_at_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cached app whose jar is not a jar: the real JVM starts and exits at once.
    monkeypatch.setenv(localregistry.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(localregistry.PORT_ENV, str(_free_port_pair()))
    app = localregistry.get_paths().app
    app.mkdir(parents=True)
    (app / "quarkus-run.jar").write_text("not a jar")
    (app / ".complete").write_text("test\n")
    with pytest.raises(LocalRegistryError, match="exited during start-up"):
        localregistry.up(timeout=60)
    err = capsys.readouterr().err
    assert "last lines of" in err and "quarkus-run.jar" in err  # the JVM's own complaint
    assert not (tmp_path / "registry.pid").exists()
    assert localregistry.down() is False
