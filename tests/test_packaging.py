"""The package as users install it: a wheel, built from what the image copies, installed into
a fresh venv outside the repository, runs and finds its Avro schemas; and the development
(editable) install reads the repository's own schemas/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from processor.codec import Codec
from processor.domain.messages import MessageHeader, Money, TicketBookingConfirmedV1

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"

MESSAGE = TicketBookingConfirmedV1(  # nested named types (header, Money) from other files
    header=MessageHeader(
        id="7b4a3c5e-2f43-4f0a-9a53-3f4f8f6d2a11",
        published_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        idempotency_key="0d8b1f0e-5d7c-4f6b-8e1a-2c3d4e5f6a7b",
    ),
    ticket_id="5f0c6f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a",
    customer_email="vip@example.com",
    price=Money("120.00", "EUR"),
    booking_id="9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
)

# Run by the wheel's Python: encode the message, decode it back, report where the code and
# the schemas came from.
PROBE = f"""
import processor, sys
from processor.codec import DEFAULT_SCHEMA_DIR, Codec
from processor.domain.messages import MessageHeader, Money, TicketBookingConfirmedV1
import datetime
message = {MESSAGE!r}
codec = Codec()
data = codec.encode(message)
assert codec.decode(data) == message, codec.decode(data)
print(processor.__file__)
print(DEFAULT_SCHEMA_DIR)
print(data.hex())
"""


def _clean_env() -> dict[str, str]:
    """No VIP_SCHEMA_DIR, PYTHONPATH or active venv leaking in from the test run."""
    drop = {"VIP_SCHEMA_DIR", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_every_package_under_processor_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.relative_to(ROOT).parent.parts)
        for init in (ROOT / "processor").rglob("__init__.py")
    }
    assert found - set(setuptools["packages"]) == set(), "add them to [tool.setuptools] packages"
    assert "processor_schemas" in setuptools["packages"]
    assert setuptools["package-dir"]["processor_schemas"] == "schemas"


def test_the_development_install_reads_the_repository_schemas(tmp_path: Path) -> None:
    probe = "from processor.codec import DEFAULT_SCHEMA_DIR; print(DEFAULT_SCHEMA_DIR)"
    env = _clean_env()
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == SCHEMAS
    # VIP_SCHEMA_DIR still overrides it.
    overridden = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "VIP_SCHEMA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert Path(overridden.stdout.strip()) == tmp_path


def test_the_wheel_works_outside_the_repository(tmp_path: Path) -> None:
    # The sources the image build copies (processor/Dockerfile), not the working tree, so
    # neither a stale build/ nor anything else lying around can make the wheel.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("processor", "schemas"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    env = _clean_env()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        env=env,
        check=True,
        timeout=120,
    )
    [wheel] = dist.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    for schema in SCHEMAS.rglob("*.avsc"):
        assert f"processor_schemas/{schema.relative_to(SCHEMAS).as_posix()}" in packaged

    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    subprocess.run(
        [
            home / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        env=env,
        check=True,
        timeout=180,
    )
    shutil.rmtree(source)  # nothing of the sources is left to fall back on

    version = subprocess.run(
        [home / "bin" / "processor", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith(f"processor {metadata.version('vip-bundle-process-manager')} ")
    assert "librdkafka" in version.stdout

    probe = subprocess.run(
        [home / "bin" / "python", "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    code, schemas, encoded = probe.stdout.split()
    assert Path(code).is_relative_to(home) and Path(schemas).is_relative_to(home)
    # Same schemas, same fingerprints: the installed codec writes what the repository's does.
    assert bytes.fromhex(encoded) == Codec().encode(MESSAGE)
