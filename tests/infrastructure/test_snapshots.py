"""The SnapshotStore contract on every store, and what each store adds of its own."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from orchestrix.core.errors import StoreFormatError, UnknownEventTypeError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.eventsourcing.snapshot import Snapshot
from orchestrix.infrastructure.file import FileEventStore, FileSnapshotStore
from orchestrix.infrastructure.file.snapshot import SNAPSHOT_DIR
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemorySnapshotStore
from orchestrix.testing import (
    ContractTally,
    NotRegistered,
    SnapshotStoreContract,
    SnapshotStores,
    snapshot_contract_serializer,
)
from orchestrix.testing.snapshot_contract import _snap


class TestInMemorySnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    def stores(self) -> SnapshotStores:
        events = InMemoryEventStore(snapshot_contract_serializer())
        return events, events.snapshots()


class TestInMemorySnapshotStoreWithoutSerializer(SnapshotStoreContract):
    """Without a serializer the memory store keeps copies, after the same checks."""

    @pytest.fixture
    def stores(self) -> SnapshotStores:
        return InMemoryEventStore(), InMemorySnapshotStore()

    def test_a_state_of_an_unregistered_class_is_refused(self, stores: SnapshotStores) -> None:
        """Without a registry there is no list to check against: like the memory event store,
        this one checks the class's fields only, and keeps it."""
        stores[1].save(_snap(state=NotRegistered(1)))
        assert stores[1].load("s") == _snap(state=NotRegistered(1))

    def test_a_loaded_state_shares_nothing_with_the_saved_one(self, stores: SnapshotStores) -> None:
        state = {"items": [1, 2]}
        stores[1].save(_snap(state=state))
        state["items"].append(3)
        loaded = stores[1].load("s")
        assert loaded is not None and loaded.state == {"items": [1, 2]}
        loaded.state["items"].append(4)
        assert stores[1].load("s").state == {"items": [1, 2]}  # type: ignore[union-attr]


class TestFileSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[SnapshotStores]:
        self.opened = [FileEventStore(tmp_path / "store", snapshot_contract_serializer(), sync=False)]
        yield self.opened[0], self.opened[0].snapshots()
        for store in self.opened:
            store.close()

    def reopen(self, stores: SnapshotStores) -> SnapshotStores:
        assert isinstance(stores[0], FileEventStore)
        stores[0].close()
        again = FileEventStore(stores[0].path, snapshot_contract_serializer(), sync=False)
        self.opened.append(again)
        return again, again.snapshots()


class TestDurableFileSnapshotStore(TestFileSnapshotStore):
    """The same promises with every fsync made."""

    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[SnapshotStores]:
        self.opened = [FileEventStore(tmp_path / "store", snapshot_contract_serializer())]
        yield self.opened[0], FileSnapshotStore(tmp_path / "snaps", snapshot_contract_serializer())
        for store in self.opened:
            store.close()

    def reopen(self, stores: SnapshotStores) -> SnapshotStores:
        assert isinstance(stores[0], FileEventStore) and isinstance(stores[1], FileSnapshotStore)
        stores[0].close()
        again = FileEventStore(stores[0].path, snapshot_contract_serializer())
        self.opened.append(again)
        return again, FileSnapshotStore(stores[1].path, snapshot_contract_serializer())


def _file_store(tmp_path: Path) -> FileEventStore:
    return FileEventStore(tmp_path / "store", snapshot_contract_serializer(), sync=False)


def test_the_file_store_keeps_snapshots_in_their_own_directory_and_destroy_removes_them(
    tmp_path: Path,
) -> None:
    with _file_store(tmp_path) as store:
        store.snapshots().save(_snap("../../escape", 1))
        files = os.listdir(tmp_path / "store" / SNAPSHOT_DIR)
    assert sorted(name.endswith(".json") for name in files) == [False, True]  # the snapshot and LOCK
    assert os.listdir(tmp_path) == ["store"]
    FileEventStore.destroy(tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_snapshot_is_saved_while_another_writer_holds_the_logs_lock(tmp_path: Path) -> None:
    with _file_store(tmp_path) as store, open(tmp_path / "store" / "LOCK", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (store.snapshots().save(_snap()), done.set()))
        worker.start()
        assert done.wait(10), "a snapshot save waited for the log's writer lock"
        worker.join()


def test_a_temporary_file_left_by_a_crash_is_ignored_and_replaced(tmp_path: Path) -> None:
    with _file_store(tmp_path) as store:
        snapshots = store.snapshots()
        snapshots.save(_snap(version=1))
        target = next(p for p in Path(snapshots.path).iterdir() if p.suffix == ".json")
        target.with_suffix(".tmp").write_bytes(b'{"format": "orchestrix-snap')  # torn, never renamed
        assert snapshots.load("s") == _snap(version=1)
        snapshots.save(_snap(version=2))
        assert snapshots.load("s") == _snap(version=2)
        assert not target.with_suffix(".tmp").exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda data: b"{not json", "not JSON"),
        (lambda data: data.replace(b"orchestrix-snapshot", b"something-else"), "not an orchestrix snapshot"),
        (lambda data: data.replace(b'"format_version": 1', b'"format_version": 9'), "newer format version 9"),
        (lambda data: data.replace(b'"version": 3', b'"version": "3"'), "field 'version'"),
    ],
)
def test_a_damaged_snapshot_file_is_an_error_naming_it(tmp_path: Path, change: Any, reason: str) -> None:
    snapshots = FileSnapshotStore(tmp_path / "snaps", snapshot_contract_serializer(), sync=False)
    snapshots.save(_snap(version=3))
    target = next(p for p in (tmp_path / "snaps").iterdir() if p.suffix == ".json")
    target.write_bytes(change(target.read_bytes()))
    with pytest.raises(StoreFormatError, match=reason) as raised:
        snapshots.load("s")
    assert raised.value.path == str(target)


def test_a_snapshot_directory_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "snaps").write_text("")
    with pytest.raises(StoreFormatError, match="not a snapshot directory"):
        FileSnapshotStore(tmp_path / "snaps", snapshot_contract_serializer())


def test_snapshot_files_are_json_a_person_can_read(tmp_path: Path) -> None:
    snapshots = FileSnapshotStore(tmp_path / "snaps", snapshot_contract_serializer(), sync=False)
    snapshots.save(_snap(version=3))
    target = next(p for p in (tmp_path / "snaps").iterdir() if p.suffix == ".json")
    data = json.loads(target.read_text())
    assert (data["stream"], data["version"], data["state_type"]) == ("s", 3, "ContractTallyState")
    assert json.loads(data["state"]) == {"count": 5, "total": "0.10", "notes": ["a", "b"]}


@attrs.frozen
class OldState:
    """A snapshot state class an older version of the program had."""

    text: str


def test_a_snapshot_of_another_version_is_ignored_without_decoding_a_class_that_is_gone(
    tmp_path: Path,
) -> None:
    old_serializer = snapshot_contract_serializer()
    old_serializer.register(OldState)
    with FileEventStore(tmp_path / "store", snapshot_contract_serializer(), sync=False) as store:
        repo = AggregateRepository(store, snapshots=store.snapshots())
        tally = ContractTally("t")
        for n in range(4):
            tally.add(n)
        AggregateRepository(store).save(tally)
        event_id = next(iter(store.read_stream("ContractTally-t", 3))).event_id
        old = FileSnapshotStore(store.snapshots().path, old_serializer, sync=False)
        old.save(Snapshot("ContractTally-t", 3, event_id, 0, OldState("from an older program")))
        assert repo.load(ContractTally, "t").count == 4  # ignored: a replay
        with pytest.raises(UnknownEventTypeError, match="OldState"):
            store.snapshots().load("ContractTally-t")  # asked for whatever is kept, it cannot be decoded
