"""The RocksDB partition store, its transaction and the shared memory budget."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from processor.runtime.store import (
    MiB,
    PartitionStore,
    StateMemory,
    StoreTransaction,
    direct_writes_supported,
)
from tests.runtime.toyapp import IntSerde

memory = StateMemory(16 * MiB)


def test_changes_and_changelog_offset_are_written_together_and_survive_reopen(
    tmp_path: Path,
) -> None:
    store = PartitionStore(tmp_path / "p0", memory)
    assert store.changelog_offset is None
    store.write({b"a": b"1", b"b": b"2"}, changelog_offset=3)
    store.write({b"a": None}, changelog_offset=5)
    store.close()

    reopened = PartitionStore(tmp_path / "p0", memory)
    assert reopened.changelog_offset == 5
    assert dict(reopened.items()) == {b"b": b"2"}  # the offset is not in the data
    reopened.close()


def test_a_corrupt_store_opens_empty_so_it_is_rebuilt(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", memory)
    store.write({b"a": b"1"}, changelog_offset=1)
    store.close()
    (tmp_path / "p0" / "CURRENT").write_text("not a manifest\n")

    rebuilt = PartitionStore(tmp_path / "p0", memory)
    assert rebuilt.changelog_offset is None
    assert list(rebuilt.items()) == []
    rebuilt.close()


def test_wipe_forgets_everything(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", memory)
    store.write({b"a": b"1"}, changelog_offset=1)
    store.wipe()
    assert store.changelog_offset is None
    assert store.get(b"a") is None
    store.close()


def test_a_transaction_reads_its_own_writes_encodes_once_and_writes_only_on_flush(
    tmp_path: Path,
) -> None:
    store = PartitionStore(tmp_path / "p0", memory)
    txn = StoreTransaction(store, IntSerde())
    txn.set(b"k", 1)
    txn.set(b"k", 2)
    assert txn.get(b"k") == 2
    assert store.get(b"k") is None
    assert txn.prepare() == {b"k": b"2"}  # one record per key, its last state
    txn.flush(changelog_offset=9)
    assert store.get(b"k") == b"2" and store.changelog_offset == 9

    txn.set(b"k", 3)
    txn.abort()
    assert txn.get(b"k") == 2
    store.close()


def test_stores_share_one_budget_that_has_a_floor(tmp_path: Path) -> None:
    shared = StateMemory(32 * MiB)
    stores = [PartitionStore(tmp_path / str(p), shared) for p in range(3)]
    for p, store in enumerate(stores):
        store.write({f"{p}-{i}".encode(): b"x" * 100 for i in range(1000)}, changelog_offset=1)
    assert 0 < shared.usage() <= 32 * MiB
    for store in stores:
        store.close()
    with pytest.raises(ValueError, match="below the 8 MiB minimum"):
        StateMemory(1 * MiB)


def test_a_store_written_with_direct_io_reads_back_after_a_flush_and_a_reopen(
    tmp_path: Path,
) -> None:
    assert direct_writes_supported(tmp_path)  # pytest's tmp_path is on a disk here
    direct = StateMemory(16 * MiB, direct_writes=True)
    store = PartitionStore(tmp_path / "p0", direct)
    store.write({f"k{i}".encode(): b"v" * 300 for i in range(20_000)}, changelog_offset=7)
    store.persist()
    store.close()  # the SST files written with O_DIRECT are what reopens

    options = max((tmp_path / "p0").glob("OPTIONS-*")).read_text()
    assert "use_direct_io_for_flush_and_compaction=true" in options

    reopened = PartitionStore(tmp_path / "p0", direct)
    assert reopened.changelog_offset == 7
    assert reopened.get(b"k19999") == b"v" * 300
    assert sum(1 for _ in reopened.items()) == 20_000
    reopened.close()
    assert not list(tmp_path.glob(".direct-io-probe-*"))


def test_a_filesystem_refusing_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    assert direct_writes_supported(tmp_path) is False
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
