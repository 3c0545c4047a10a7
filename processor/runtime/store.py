"""RocksDB stores for one partition each, under one memory budget.

Data and the changelog offset it reflects are written in one WriteBatch, only
after the Kafka transaction that produced the matching changelog records
committed: the local store is never ahead of Kafka, so a crash needs no wipe,
only a restore of the tail. The offset lives in a `meta` column family, out of
the data's keyspace.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from processor.runtime.handler import StateSerde

log = logging.getLogger(__name__)

_META = "meta"
_OFFSET_KEY = b"changelog-offset"
NO_WAL = WriteOptions()
NO_WAL.disable_wal = True
MiB = 1 << 20


class StateMemory:
    """One block cache and one write-buffer manager for every store of an instance,
    as Kafka Streams' bounded-memory RocksDBConfigSetter does: memtables are
    charged to the cache, so `total_bytes` caps both together."""

    def __init__(self, total_bytes: int = 64 * MiB, direct_writes: bool = False) -> None:
        if total_bytes < 8 * MiB:
            raise ValueError(f"state memory of {total_bytes} bytes is below the 8 MiB minimum")
        self.total_bytes = total_bytes
        self.cache = Cache(total_bytes)
        # Up to half of it for memtables: restores write in bulk, and small memtables
        # flushed all the time make RocksDB stall writes (measured: a third slower).
        memtables = total_bytes // 2
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            memtables, False, self.cache
        )
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        # Index and filter blocks count against the budget too, not beside it.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        # 4 MiB memtables: a restore writes every store at once, and their active
        # memtables together (6 x 4 MiB) fit a 32 MiB L3 cache (this machine's), so a
        # skiplist insert of a random key misses it less. Measured on a 1M-record
        # restore (snappy tables then): 0.47-0.69 s in writes against 0.69-0.85 s.
        options.set_write_buffer_size(min(4 * MiB, memtables // 4))
        options.set_max_write_buffer_number(2)
        # No compression, as in Kafka Streams' stores: the state is rebuilt from Kafka,
        # and snappy on every flush and compaction took CPU from the restore itself
        # (1M records, medians of 3: 607k records/s with snappy, 785k without).
        options.set_compression_type(DBCompressionType.none())
        options.set_max_open_files(256)
        if direct_writes:
            # Flushes and compactions write SST files with O_DIRECT. Buffered, the
            # kernel's copy into the page cache was half the flush thread's CPU in a
            # restore (perf: copy_folio_from_iter_atomic), and its cost swung with the
            # page cache's state. Reads stay buffered and cached.
            options.set_use_direct_io_for_flush_and_compaction(True)
        self.direct_writes = direct_writes
        # Atomic flushes keep the data and the `meta` offset on disk together: a write
        # without the WAL (restores, the index) is lost with its offset on a crash, so
        # the store is only older, and its restore reads the tail again.
        options.set_atomic_flush(True)
        self.options = options

    def usage(self) -> int:
        return int(self.cache.get_usage())


def direct_writes_supported(directory: Path) -> bool:
    """Whether files under `directory` can be written with O_DIRECT (tmpfs, some
    overlay and network filesystems refuse it): probed with a real file."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False  # not on this platform (macOS)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".direct-io-probe-{uuid.uuid4().hex}"
    page = mmap.mmap(-1, 4096)  # O_DIRECT needs an aligned buffer: a page is
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | direct, 0o600)
        try:
            os.write(fd, page)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        log.info("%s does not take O_DIRECT writes (%s); RocksDB writes buffered", directory, exc)
        return False
    finally:
        page.close()
        probe.unlink(missing_ok=True)
    return True


def open_rocksdb(path: Path, memory: StateMemory) -> Rdict:
    """Opens (creating) a raw-bytes RocksDB with a `meta` column family; an
    unreadable one is replaced by an empty one: every store here can be rebuilt
    from Kafka."""
    path.parent.mkdir(parents=True, exist_ok=True)
    families = {_META: memory.options}
    try:
        return Rdict(str(path), options=memory.options, column_families=families)
    except Exception as exc:  # rocksdict raises a bare Exception on corruption
        log.warning("store %s is unreadable (%s); rebuilding it from Kafka", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return Rdict(str(path), options=memory.options, column_families=families)


def read_only(path: Path) -> Iterator[tuple[str, Rdict]]:
    """Every partition store under `path` (a changelog's folder), opened read-only:
    for tools, beside or after a running instance. Yields (partition, store)."""
    if not path.is_dir():
        return
    for store in sorted(p for p in path.iterdir() if (p / "CURRENT").exists()):
        options = Options(raw_mode=True)
        db = Rdict(
            str(store),
            options=options,
            column_families={_META: options},
            access_type=AccessType.read_only(),
        )
        try:
            yield store.name, db
        finally:
            db.close()


class PartitionStore:
    def __init__(self, path: Path, memory: StateMemory) -> None:
        self.path = path
        self._memory = memory
        self._open()

    def _open(self) -> None:
        self._unlogged = False  # written without the WAL since the last flush
        self._db = open_rocksdb(self.path, self._memory)
        self._meta_handle = self._db.get_column_family_handle(_META)
        self._meta = self._db.get_column_family(_META)

    @property
    def changelog_offset(self) -> int | None:
        """The next changelog offset to restore from, or None for an empty store."""
        raw = self._meta.get(_OFFSET_KEY)
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
        self.write_batch(batch, changelog_offset)

    def write_batch(self, batch: WriteBatch, changelog_offset: int, wal: bool = True) -> None:
        """`wal=False` for restores (twice as fast). Before the next write with the WAL,
        what was written without it is flushed to disk first: a crash must not replay
        a logged write over a restore it lost."""
        batch.put(_OFFSET_KEY, str(changelog_offset).encode(), self._meta_handle)
        if not wal:
            self._db.write(batch, NO_WAL)
            self._unlogged = True
            return
        if self._unlogged:
            self._db.flush(True)  # returns at once if `persist()` already got it there
            self._unlogged = False
        self._db.write(batch)

    def persist(self) -> None:
        """Starts flushing the memtables to disk (atomically: data and offset together),
        e.g. once a restore is done, without waiting for it."""
        self._db.flush(False)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self._db.items()

    def count(self, label: Callable[[bytes], str]) -> Counter[str]:
        """Stored states by label: one pass over the store (about 1 s a million)."""
        return Counter(label(value) for value in self._db.values())

    def estimated_keys(self) -> int:
        return self._db.property_int_value("rocksdb.estimate-num-keys") or 0

    def wipe(self) -> None:
        """Drop everything, e.g. when the changelog no longer matches the store."""
        self.close()
        Rdict.destroy(str(self.path))
        self._open()

    def close(self) -> None:
        # Column-family handles keep the database open: drop them first.
        del self._meta, self._meta_handle
        self._db.close()


class StoreTransaction:
    """A task's state between commits: reads see its own writes; `prepare` encodes
    each changed key once, `flush` writes them after the Kafka commit.

    Decoded committed states are kept in a small LRU, so the next event of a
    bundle does not decode what the previous one encoded.
    """

    def __init__(self, store: PartitionStore, serde: StateSerde, cache_size: int = 4096) -> None:
        self.store = store
        self._serde = serde
        self._staged: dict[bytes, Any] = {}
        self._prepared: dict[bytes, bytes | None] = {}
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self._cache_size = cache_size
        self.labels: Counter[str] = Counter()  # stored states by serde.label, once counted

    def get(self, key: bytes) -> Any:
        if key in self._staged:
            return self._staged[key]
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        raw = self.store.get(key)
        if raw is None:
            return None
        state = self._serde.loads(raw)
        self._remember(key, state)
        return state

    def set(self, key: bytes, state: Any) -> None:
        self._staged[key] = state

    @property
    def changed(self) -> int:
        return len(self._staged)

    def prepare(self) -> dict[bytes, bytes | None]:
        """Encodes every changed key once: the changelog records of this commit."""
        dumps = self._serde.dumps
        self._prepared = {k: None if s is None else dumps(s) for k, s in self._staged.items()}
        return self._prepared

    def flush(self, changelog_offset: int) -> None:
        """The transaction committed: make its state the store's."""
        if self._prepared:
            label, get = self._serde.label, self.store.get
            for key, raw in self._prepared.items():
                old = get(key)
                if old is not None:
                    self.labels[label(old)] -= 1
                if raw is not None:
                    self.labels[label(raw)] += 1
            self.store.write(self._prepared, changelog_offset)
        for key, state in self._staged.items():
            if state is None:
                self._cache.pop(key, None)
            else:
                self._remember(key, state)
        self._staged.clear()
        self._prepared = {}

    def abort(self) -> None:
        self._staged.clear()
        self._prepared = {}

    def forget(self) -> None:
        """Drop the decoded-state cache too: the store is about to change under it."""
        self.abort()
        self._cache.clear()

    def _remember(self, key: bytes, state: Any) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
