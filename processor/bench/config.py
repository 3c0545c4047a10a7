"""The bench's sizes and places: one value every phase reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class BenchError(RuntimeError):
    """A measurement could not complete; the message says where it stopped."""


@dataclass(frozen=True)
class BenchConfig:
    bootstrap_servers: str
    state_dir: Path  # scratch: the stores of every phase, removed at the end
    log_dir: Path = Path(".local/bench")  # the `processor run` logs
    bundles: int = 20_000  # pre-produced for the throughput run (~5.5 events each)
    partitions: int = 6  # internal and output topics
    input_partitions: int = 3
    ceiling_records: int = 600_000  # the pass-throughs read copies of the backlog, this many
    ceiling_s: float = 6.0  # ... or stop reading after this long
    latency_samples: int = 300
    latency_rate: float = 25.0  # flight failures per second
    rss_bundles: tuple[int, ...] = (1_000_000,)  # an empty-state baseline is added
    recovery_rate: float = 80.0  # bundles per second fed while the processor is killed
    recovery_before_s: float = 5.0  # fed before the SIGKILL
    recovery_after_s: float = 10.0  # fed after it
    sample_every_s: float = 0.1  # progress samples: the stall figures' resolution
    timeout_s: float = 300.0
    seed: int = 1
