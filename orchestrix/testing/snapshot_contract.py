"""The SnapshotStore contract suite: subclass it once per snapshot store.

The ``stores`` fixture returns an event store and the snapshot store that goes with it, both
encoding with :func:`snapshot_contract_serializer`; the suite checks the snapshot store's own
promises, and those the repository makes when it loads and saves through the pair. Example::

    from orchestrix.testing import SnapshotStoreContract, snapshot_contract_serializer

    class TestMySnapshots(SnapshotStoreContract):
        @pytest.fixture
        def stores(self, tmp_path):
            events = MyEventStore(tmp_path, serializer=snapshot_contract_serializer())
            yield events, events.snapshots()
            events.close()

Durable stores should also override :meth:`SnapshotStoreContract.reopen`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import pytest

from orchestrix.core.errors import (
    InvalidArgumentError,
    InvalidStreamNameError,
    SerializationError,
    SnapshotAheadError,
    SnapshotError,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRepository, AggregateRoot, applies
from orchestrix.core.eventsourcing.keys import KEY_EVENTS, KeyRefused
from orchestrix.core.eventsourcing.snapshot import Snapshot, SnapshotStore
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.testing.contract import ContractEvent, NotRegistered

__all__ = [
    "ContractTally",
    "ContractTallyState",
    "SnapshotStoreContract",
    "SnapshotStores",
    "snapshot_contract_serializer",
]

SnapshotStores = tuple[EventStore, SnapshotStore]
"""What the ``stores`` fixture returns: an event store and its snapshot store."""


@attrs.frozen
class ContractTallyState:
    """The snapshot state of :class:`ContractTally`: a registered attrs class with exact amounts."""

    count: int
    total: Decimal
    notes: tuple[str, ...]


class ContractTally(AggregateRoot):
    """An aggregate of :class:`~orchestrix.testing.contract.ContractEvent` s, snapshotted every 3."""

    snapshot_every = 3

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.count: int = 0
        self.total: Decimal = Decimal(0)
        self.notes: list[str] = []

    def add(self, n: int, note: str = "") -> None:
        """Record ``n``."""
        self.raise_event(ContractEvent(n, note))

    @applies(ContractEvent)
    def _added(self, event: ContractEvent) -> None:
        self.count += 1
        self.total += Decimal(event.n) / 100
        self.notes.append(event.note)

    def snapshot(self) -> ContractTallyState:
        """The state, as a registered attrs instance."""
        return ContractTallyState(self.count, self.total, tuple(self.notes))

    def restore(self, state: ContractTallyState) -> None:
        """Take the state of a snapshot."""
        self.count, self.total, self.notes = state.count, state.total, list(state.notes)


def snapshot_contract_serializer() -> Serializer:
    """A serializer that knows the suite's events, its snapshot state and the key records."""
    return Serializer(types=[ContractEvent, ContractTallyState, *KEY_EVENTS])


def _snap(stream: str = "s", version: int = 4, state: Any = None, schema_version: int = 1) -> Snapshot:
    if state is None:
        state = ContractTallyState(5, Decimal("0.10"), ("a", "b"))
    return Snapshot(
        stream, version, uuid.uuid5(uuid.NAMESPACE_URL, f"{stream}/{version}"), schema_version, state
    )


def _state(tally: ContractTally) -> tuple[int, int, Decimal, list[str]]:
    return tally.version, tally.count, tally.total, tally.notes


_BAD_STREAMS = ["", "a\x00b", "x" * 256, 42, None]
_BAD_FACTS: list[tuple[str, Any]] = [
    ("version", -1),
    ("version", True),
    ("version", 1.0),
    ("version", 2**63),
    ("schema_version", -1),
    ("schema_version", "1"),
    ("event_id", "4d8e0a0c-1b1e-4a55-9d1f-6f0d1f7d8b1a"),
    ("refusals", [KeyRefused("k", "E", "no")]),
    ("refusals", ("not a refusal",)),
]
_UNSTORABLE: list[Any] = [
    {"x": math.nan},
    {"x": math.inf},
    {"amount": Decimal("1.5")},
    {1: "int key"},
    ("a", "tuple"),
    {"s": {1, 2}},
    ["lone \udc80 surrogate"],
    object(),
]


class SnapshotStoreContract:
    """Every promise a SnapshotStore makes, and the repository with it, as tests."""

    @pytest.fixture
    def stores(self) -> SnapshotStores:
        """An empty event store and its snapshot store, encoding with snapshot_contract_serializer()."""
        raise NotImplementedError("subclasses provide a `stores` fixture")

    def reopen(self, stores: SnapshotStores) -> SnapshotStores:
        """Close both and open them again from storage; in-memory stores return them."""
        return stores

    @pytest.fixture
    def snapshots(self, stores: SnapshotStores) -> SnapshotStore:
        """The snapshot store under test."""
        return stores[1]

    # -- the store ---------------------------------------------------------------------------

    def test_satisfies_the_protocol(self, snapshots: SnapshotStore) -> None:
        assert isinstance(snapshots, SnapshotStore)

    def test_a_stream_without_a_snapshot_loads_none(self, snapshots: SnapshotStore) -> None:
        assert snapshots.load("s") is None

    def test_a_registered_state_round_trips_exactly(self, snapshots: SnapshotStore) -> None:
        refusals = (KeyRefused("t-1:debit", "InsufficientFunds", "balance 3 < 5"),)
        snapshot = attrs.evolve(
            _snap(state=ContractTallyState(2, Decimal("0.30"), ("é", "€"))), refusals=refusals
        )
        snapshots.save(snapshot)
        loaded = snapshots.load("s")
        assert loaded == snapshot
        assert loaded is not None and str(loaded.state.total) == "0.30"

    def test_plain_json_state_round_trips(self, snapshots: SnapshotStore) -> None:
        state = {"balance": "10.05", "owners": ["ann", "bo"], "open": True, "n": 3, "ratio": 0.5, "x": None}
        snapshots.save(_snap(state=state))
        loaded = snapshots.load("s")
        assert loaded is not None and loaded.state == state

    def test_a_newer_snapshot_replaces_an_older_one(self, snapshots: SnapshotStore) -> None:
        snapshots.save(_snap(version=4))
        snapshots.save(_snap(version=9))
        assert snapshots.load("s") == _snap(version=9)

    def test_an_older_snapshot_of_the_same_schema_does_not_replace_a_newer_one(
        self, snapshots: SnapshotStore
    ) -> None:
        snapshots.save(_snap(version=9))
        snapshots.save(_snap(version=4))
        assert snapshots.load("s") == _snap(version=9)

    def test_a_snapshot_of_another_schema_version_replaces_whatever_is_kept(
        self, snapshots: SnapshotStore
    ) -> None:
        snapshots.save(_snap(version=9, schema_version=1))
        snapshots.save(_snap(version=4, schema_version=2))
        assert snapshots.load("s") == _snap(version=4, schema_version=2)

    def test_streams_have_their_own_snapshots_and_delete_forgets_one(self, snapshots: SnapshotStore) -> None:
        snapshots.save(_snap("a", 1))
        snapshots.save(_snap("b", 2))
        snapshots.delete("a")
        snapshots.delete("never-saved")
        assert (snapshots.load("a"), snapshots.load("b")) == (None, _snap("b", 2))

    def test_snapshots_survive_reopening(self, stores: SnapshotStores) -> None:
        stores[1].save(_snap("a", 3))
        stores[1].save(_snap("b", 5, state={"k": [1, 2]}))
        _, snapshots = self.reopen(stores)
        assert (snapshots.load("a"), snapshots.load("b")) == (
            _snap("a", 3),
            _snap("b", 5, state={"k": [1, 2]}),
        )

    @pytest.mark.parametrize(
        "stream", ["../../etc/passwd", "'; DROP TABLE snapshots;--", "Konto-Müller-€", "x" * 255, " ", "LOCK"]
    )
    def test_odd_but_valid_stream_names_are_plain_data(self, stores: SnapshotStores, stream: str) -> None:
        stores[1].save(_snap(stream, 2))
        _, snapshots = self.reopen(stores)
        assert snapshots.load(stream) == _snap(stream, 2)
        assert snapshots.load(stream[:-1] or "other") is None

    @pytest.mark.parametrize("stream", _BAD_STREAMS)
    def test_invalid_stream_names_are_refused(self, snapshots: SnapshotStore, stream: Any) -> None:
        calls: list[Callable[[], object]] = [
            lambda: snapshots.load(stream),
            lambda: snapshots.delete(stream),
            lambda: snapshots.save(_snap(stream)),
            lambda: asyncio.run(snapshots.load_async(stream)),
            lambda: asyncio.run(snapshots.delete_async(stream)),
            lambda: asyncio.run(snapshots.save_async(_snap(stream))),
        ]
        for call in calls:
            with pytest.raises(InvalidStreamNameError):
                call()

    @pytest.mark.parametrize(("field", "value"), _BAD_FACTS)
    def test_invalid_facts_are_refused_and_nothing_is_stored(
        self, stores: SnapshotStores, field: str, value: Any
    ) -> None:
        snapshots = stores[1]
        bad = attrs.evolve(_snap(version=2), **{field: value})
        calls: list[Callable[[], object]] = [
            lambda: snapshots.save(bad),
            lambda: asyncio.run(snapshots.save_async(bad)),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError) as raised:
                call()
            assert raised.value.parameter == f"snapshot.{field}"
        for not_a_snapshot in ({"stream": "s"}, None):
            with pytest.raises(InvalidArgumentError):
                snapshots.save(not_a_snapshot)  # type: ignore[arg-type]
        assert self.reopen(stores)[1].load("s") is None

    @pytest.mark.parametrize("state", _UNSTORABLE, ids=lambda s: type(s).__name__)
    def test_a_state_no_store_can_keep_is_refused_and_nothing_is_stored(
        self, stores: SnapshotStores, state: Any
    ) -> None:
        stores[1].save(_snap(version=1))
        with pytest.raises(SerializationError):
            stores[1].save(_snap(version=2, state=state))
        with pytest.raises(SerializationError):
            asyncio.run(stores[1].save_async(_snap(version=2, state=state)))
        assert self.reopen(stores)[1].load("s") == _snap(version=1)

    def test_a_state_of_an_unregistered_class_is_refused(self, stores: SnapshotStores) -> None:
        with pytest.raises(SerializationError, match="NotRegistered"):
            stores[1].save(_snap(state=NotRegistered(1)))
        assert stores[1].load("s") is None

    def test_a_load_for_one_schema_version_leaves_out_the_others(self, snapshots: SnapshotStore) -> None:
        snapshots.save(_snap(version=3, schema_version=2))
        assert snapshots.load("s", 2) == snapshots.load("s") == _snap(version=3, schema_version=2)
        assert snapshots.load("s", 1) is None
        assert asyncio.run(snapshots.load_async("s", 1)) is None
        assert asyncio.run(snapshots.load_async("s", 2)) == _snap(version=3, schema_version=2)

    @pytest.mark.parametrize("schema_version", [-1, True, 1.0, "1", 2**63])
    def test_an_invalid_schema_version_to_load_is_refused(
        self, snapshots: SnapshotStore, schema_version: Any
    ) -> None:
        snapshots.save(_snap())
        calls: tuple[Callable[[], object], ...] = (
            lambda: snapshots.load("s", schema_version),
            lambda: asyncio.run(snapshots.load_async("s", schema_version)),
        )
        for call in calls:
            with pytest.raises(InvalidArgumentError) as raised:
                call()
            assert raised.value.parameter == "schema_version"

    def test_async_forms_match_the_sync_ones(self, snapshots: SnapshotStore) -> None:
        async def scenario() -> tuple[Snapshot | None, Snapshot | None, Snapshot | None]:
            before = await snapshots.load_async("s")
            await snapshots.save_async(_snap(version=7))
            loaded = await snapshots.load_async("s")
            await snapshots.delete_async("s")
            return before, loaded, await snapshots.load_async("s")

        assert asyncio.run(scenario()) == (None, _snap(version=7), None)
        assert snapshots.load("s") is None

    # -- the repository with it ----------------------------------------------------------------

    def _repository(self, stores: SnapshotStores, **options: Any) -> AggregateRepository:
        return AggregateRepository(stores[0], snapshots=stores[1], **options)

    def _fill(self, repo: AggregateRepository, saves: int, aggregate_id: str = "t") -> ContractTally:
        tally = ContractTally(aggregate_id)
        for n in range(saves):
            tally.add(n, f"n{n}")
            repo.save(tally)
        return tally

    def test_a_snapshot_is_taken_every_snapshot_every_events(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        self._fill(repo, 8)
        snapshot = stores[1].load("ContractTally-t")
        assert snapshot is not None
        assert (snapshot.version, snapshot.state.count) == (5, 6)  # taken at 3 and 6 events, not yet at 9
        recorded = next(iter(stores[0].read_stream("ContractTally-t", 5)))
        assert snapshot.event_id == recorded.event_id

    def test_loading_from_a_snapshot_gives_the_state_of_a_full_replay(self, stores: SnapshotStores) -> None:
        written = self._fill(self._repository(stores), 11)
        without = AggregateRepository(stores[0]).load(ContractTally, "t")
        event_store, snapshots = self.reopen(stores)
        repo = AggregateRepository(event_store, snapshots=snapshots)
        assert snapshots.load("ContractTally-t") is not None
        expected = _state(written)
        assert _state(repo.load(ContractTally, "t")) == _state(without) == expected
        assert _state(asyncio.run(repo.load_async(ContractTally, "t"))) == expected

    def test_loading_replays_only_the_events_after_the_snapshot(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        self._fill(repo, 7)
        tally = repo.load(ContractTally, "t")
        # The snapshot (at version 5) says 6 events; rewrite it to tell a load from a replay apart.
        taken = stores[1].load("ContractTally-t")
        assert taken is not None and taken.version == 5
        stores[1].save(attrs.evolve(taken, state=ContractTallyState(60, Decimal(0), ())))
        assert repo.load(ContractTally, "t").count == 61 != tally.count

    def test_the_key_refusals_of_a_stream_come_back_from_its_snapshot(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        tally = self._fill(repo, 1)
        tally.raise_event(KeyRefused("k-1", "Refused", "no"))
        tally.add(1)
        tally.add(2)
        repo.save(tally)
        snapshot = stores[1].load("ContractTally-t")
        assert snapshot is not None and snapshot.refusals == (KeyRefused("k-1", "Refused", "no"),)
        assert repo.load(ContractTally, "t")._refusals == {"k-1": KeyRefused("k-1", "Refused", "no")}

    def test_a_snapshot_ahead_of_its_stream_is_refused(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        self._fill(repo, 2)
        stores[1].save(_snap("ContractTally-t", 10))
        stores[1].save(_snap("ContractTally-gone", 0))
        with pytest.raises(SnapshotAheadError) as raised:
            repo.load(ContractTally, "t")
        assert (raised.value.stream, raised.value.version, raised.value.stream_version) == (
            "ContractTally-t",
            10,
            1,
        )
        with pytest.raises(SnapshotAheadError) as raised:
            asyncio.run(repo.load_async(ContractTally, "gone"))
        assert raised.value.stream_version == -1

    def test_a_snapshot_of_another_history_of_its_stream_is_refused(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        self._fill(repo, 4)
        stores[1].save(_snap("ContractTally-t", 2))  # its event id is not the stream's
        with pytest.raises(SnapshotError, match="another history"):
            repo.load(ContractTally, "t")

    def test_a_snapshot_of_another_schema_version_is_ignored(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        written = self._fill(repo, 4)
        stores[1].save(_snap("ContractTally-t", 3, state={"old": "layout"}, schema_version=7))
        assert _state(repo.load(ContractTally, "t")) == _state(written)

    def test_a_snapshot_that_cannot_be_stored_fails_no_save(
        self, stores: SnapshotStores, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Unstorable(ContractTally):
            category = "ContractTally"

            def snapshot(self) -> Any:
                return {"total": self.total}  # a Decimal is no plain JSON

        repo = self._repository(stores)
        tally = Unstorable("t")
        with caplog.at_level(logging.WARNING, logger="orchestrix.core.eventsourcing.aggregate"):
            for n in range(3):
                tally.add(n)
                assert repo.save(tally) is not None
        assert stores[0].stream_version("ContractTally-t") == 2
        assert stores[1].load("ContractTally-t") is None
        assert ["could not store a snapshot" in r.getMessage() for r in caplog.records] == [True]

    def test_update_keeps_its_cache_and_snapshots_both_ways(self, stores: SnapshotStores) -> None:
        repo = self._repository(stores)
        self._fill(repo, 1)
        for n in range(1, 7):
            repo.update(ContractTally, "t", functools.partial(ContractTally.add, n=n))

        async def more() -> None:
            for n in range(7, 10):
                await repo.update_async(ContractTally, "t", functools.partial(ContractTally.add, n=n))

        asyncio.run(more())
        snapshot = stores[1].load("ContractTally-t")
        assert snapshot is not None and snapshot.version == 8
        fresh = AggregateRepository(stores[0]).load(ContractTally, "t")
        assert _state(repo.load(ContractTally, "t")) == _state(fresh)
        assert fresh.count == 10
