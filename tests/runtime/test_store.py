"""The RocksDB partition store."""

from __future__ import annotations

from pathlib import Path

from processor.runtime.store import PartitionStore


def test_changes_and_changelog_offset_are_written_together_and_survive_reopen(
    tmp_path: Path,
) -> None:
    store = PartitionStore(tmp_path / "p0")
    assert store.changelog_offset is None
    store.write({b"a": b"1", b"b": b"2"}, changelog_offset=3)
    store.write({b"a": None}, changelog_offset=5)
    store.close()

    reopened = PartitionStore(tmp_path / "p0")
    assert reopened.changelog_offset == 5
    assert dict(reopened.items()) == {b"b": b"2"}
    reopened.close()


def test_a_corrupt_store_opens_empty_so_it_is_rebuilt(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.write({b"a": b"1"}, changelog_offset=1)
    store.close()
    (tmp_path / "p0" / "CURRENT").write_text("not a manifest\n")

    rebuilt = PartitionStore(tmp_path / "p0")
    assert rebuilt.changelog_offset is None
    assert list(rebuilt.items()) == []
    rebuilt.close()


def test_wipe_forgets_everything(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.write({b"a": b"1"}, changelog_offset=1)
    store.wipe()
    assert store.changelog_offset is None
    assert store.get(b"a") is None
    store.close()
