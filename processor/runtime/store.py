"""A RocksDB key-value store for one partition, with the changelog offset it reflects.

Data and offset are written in one WriteBatch, only after the Kafka transaction
that produced the matching changelog records committed: the local store is
never ahead of Kafka, so a crash needs no wipe, only a restore of the tail.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

log = logging.getLogger(__name__)

# Keys are the application's (vip_bundle_id strings); a NUL prefix cannot clash.
_OFFSET_KEY = b"\x00changelog-offset"


def open_rocksdb(path: Path) -> Rdict:
    """Opens (creating) a raw-bytes RocksDB; an unreadable one is replaced by an
    empty one: every store here can be rebuilt from Kafka."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    try:
        return Rdict(str(path), options=options)
    except Exception as exc:  # rocksdict raises a bare Exception on corruption
        log.warning("store %s is unreadable (%s); rebuilding it from Kafka", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return Rdict(str(path), options=options)


class PartitionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_rocksdb(path)

    @property
    def changelog_offset(self) -> int | None:
        """The next changelog offset to restore from, or None for an empty store."""
        raw = self._db.get(_OFFSET_KEY)
        return None if raw is None else int(raw)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def write(self, changes: Mapping[bytes, bytes | None], changelog_offset: int) -> None:
        """Apply `changes` (None deletes) and record `changelog_offset`, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(_OFFSET_KEY, str(changelog_offset).encode())
        self._db.write(batch)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if key != _OFFSET_KEY:
                yield key, value

    def wipe(self) -> None:
        """Drop everything, e.g. when the changelog no longer matches the store."""
        self._db.close()
        Rdict.destroy(str(self.path))
        self._db = open_rocksdb(self.path)

    def close(self) -> None:
        self._db.close()
