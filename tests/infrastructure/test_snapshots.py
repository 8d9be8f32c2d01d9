"""The SnapshotStore contract on every store, and what each store adds of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrix.infrastructure.file import FileEventStore, FileSnapshotStore
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemorySnapshotStore
from orchestrix.testing import NotRegistered, SnapshotStoreContract, snapshot_contract_serializer
from orchestrix.testing.snapshot_contract import SnapshotStores, _snap


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
