"""Counters of one engine, read by the metrics endpoint at scrape time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Stats:
    processed: int = 0
    skipped: int = 0
    replayed: int = 0
    forwarded: int = 0
    not_routed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    restored: int = 0
    transactions: int = 0
    aborted: int = 0
