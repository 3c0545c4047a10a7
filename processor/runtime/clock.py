"""Time, injectable: parked records wait by wall clock (it survives restarts) and
retry by a monotonic one; tests move both."""

from __future__ import annotations

import time


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)
