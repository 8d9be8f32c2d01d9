"""The repository with snapshots: when they are taken, what a load trusts, and what never fails a save."""

from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrix.core.errors import AggregateError, SerializationError
from orchestrix.core.eventsourcing.aggregate import (
    DEFAULT_SNAPSHOT_EVERY,
    AggregateRepository,
    AggregateRoot,
    applies,
)
from orchestrix.core.eventsourcing.snapshot import (
    JSON_STATE,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemorySnapshotStore
from orchestrix.testing import ContractEvent, ContractTally, ContractTallyState, snapshot_contract_serializer


class JsonTally(ContractTally):
    """The same aggregate with plain JSON as its snapshot state."""

    category = "JsonTally"

    def snapshot(self) -> Any:
        return {"count": self.count, "total": str(self.total), "notes": self.notes}

    def restore(self, state: Any) -> None:
        self.count, self.total, self.notes = state["count"], Decimal(state["total"]), list(state["notes"])


class Recording(InMemorySnapshotStore):
    """Records, at each save, how far the stream had been committed."""

    def __init__(self, events: InMemoryEventStore) -> None:
        super().__init__(snapshot_contract_serializer())
        self.events = events
        self.saved_at: list[tuple[int, int]] = []

    def save(self, snapshot: Snapshot) -> None:
        self.saved_at.append((snapshot.version, self.events.stream_version(snapshot.stream)))
        super().save(snapshot)


class Failing(InMemorySnapshotStore):
    def save(self, snapshot: Snapshot) -> None:
        raise OSError(28, "No space left on device")


def _pair() -> tuple[InMemoryEventStore, InMemorySnapshotStore]:
    events = InMemoryEventStore(snapshot_contract_serializer())
    return events, events.snapshots()


def _state(tally: ContractTally) -> tuple[int, int, Decimal, list[str]]:
    return tally.version, tally.count, tally.total, tally.notes


def test_the_default_interval_is_documented_and_can_be_changed_per_class() -> None:
    class Plain(AggregateRoot):
        pass

    assert Plain.snapshot_every == DEFAULT_SNAPSHOT_EVERY == 100
    assert Plain.snapshot_version == 1
    assert ContractTally.snapshot_every == 3


@pytest.mark.parametrize("value", [-1, True, 2.5, "10", None])
def test_a_snapshot_interval_that_is_no_count_is_refused_when_the_class_is_defined(value: Any) -> None:
    with pytest.raises(AggregateError, match="snapshot_every must be an int"):
        type("Bad", (AggregateRoot,), {"snapshot_every": value})
    with pytest.raises(AggregateError, match="snapshot_version must be an int"):
        type("Bad", (AggregateRoot,), {"snapshot_version": value})


def test_a_class_with_snapshot_but_no_restore_is_refused_when_defined() -> None:
    with pytest.raises(AggregateError, match=r"defines snapshot\(\) without restore\(\)"):

        class Half(AggregateRoot):
            def snapshot(self) -> int:
                return 1

    with pytest.raises(AggregateError, match=r"defines restore\(\) without snapshot\(\)"):

        class OtherHalf(AggregateRoot):
            def restore(self, state: Any) -> None: ...


def test_a_snapshot_is_stored_after_its_events_are_committed() -> None:
    events = InMemoryEventStore(snapshot_contract_serializer())
    snapshots = Recording(events)
    repo = AggregateRepository(events, snapshots=snapshots)
    tally = ContractTally("t")
    for n in range(7):
        tally.add(n)
        repo.save(tally)
    assert snapshots.saved_at == [(2, 2), (5, 5)]


def test_one_large_save_takes_one_snapshot_at_its_end() -> None:
    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots)
    tally = ContractTally("t")
    for n in range(10):
        tally.add(n)
    repo.save(tally)
    snapshot = snapshots.load("ContractTally-t")
    assert snapshot is not None and snapshot.version == 9


def test_a_class_without_snapshot_methods_or_with_interval_zero_takes_none() -> None:
    class Off(ContractTally):
        category = "Off"
        snapshot_every = 0

    class NoMethods(AggregateRoot):
        snapshot_every = 1

        @applies(ContractEvent)
        def _added(self, event: ContractEvent) -> None:
            pass

    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots)
    off, plain = Off("a"), NoMethods("b")
    for n in range(5):
        off.add(n)
        plain.raise_event(ContractEvent(n))
        repo.save(off)
        repo.save(plain)
    assert (snapshots.load("Off-a"), snapshots.load("NoMethods-b")) == (None, None)
    assert repo.load(Off, "a").count == 5


def test_a_repository_without_a_snapshot_store_neither_takes_nor_reads_snapshots() -> None:
    events, snapshots = _pair()
    tally = ContractTally("t")
    for n in range(5):
        tally.add(n)
    AggregateRepository(events).save(tally)
    assert snapshots.load("ContractTally-t") is None
    snapshots.save(Snapshot("ContractTally-t", 99, uuid.uuid4(), 1, ContractTallyState(0, Decimal(0), ())))
    assert AggregateRepository(events).load(ContractTally, "t").count == 5


def test_a_failing_snapshot_store_fails_no_save_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    events = InMemoryEventStore(snapshot_contract_serializer())
    repo = AggregateRepository(events, snapshots=Failing())
    tally = ContractTally("t")
    with caplog.at_level(logging.WARNING, logger="orchestrix.core.eventsourcing.aggregate"):
        for n in range(7):
            tally.add(n)
            assert repo.save(tally) is not None
        asyncio.run(_add_async(repo, tally, 7))
    assert events.stream_version("ContractTally-t") == 7
    failures = [r for r in caplog.records if "could not store a snapshot" in r.getMessage()]
    assert (
        len(failures) == 2
    )  # at versions 2 and 5: each failure waits snapshot_every events for the next try
    assert all(r.exc_info is not None and isinstance(r.exc_info[1], OSError) for r in failures)


async def _add_async(repo: AggregateRepository, tally: ContractTally, n: int) -> None:
    tally.add(n)
    await repo.save_async(tally)


def test_a_snapshot_method_that_raises_fails_no_save(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ContractTally):
        def snapshot(self) -> Any:
            raise RuntimeError("bug in snapshot()")

    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots)
    broken = Broken("t")
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            broken.add(n)
            repo.save(broken)
    assert events.stream_version("Broken-t") == 2
    assert "could not store a snapshot of 'Broken-t' at version 2" in caplog.text


def test_an_idempotent_repeat_of_a_save_takes_no_snapshot() -> None:
    events, snapshots = _pair()
    ids = [uuid.uuid4() for _ in range(3)]
    events.append("ContractTally-t", [NewEvent(ContractEvent(n), event_id) for n, event_id in enumerate(ids)])
    repo = AggregateRepository(events, snapshots=snapshots)
    tally = repo.load(ContractTally, "t")
    for n, event_id in enumerate(ids):  # a retried decision, raised once more on the loaded state
        tally.raise_event(ContractEvent(n), event_id=event_id)
    result = repo.save(tally)  # the store finds the ids stored and writes nothing
    assert result is not None and result.versions == (0, 1, 2) and tally.version == 5
    assert snapshots.load("ContractTally-t") is None


def test_json_state_snapshots_load_like_a_replay() -> None:
    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots)
    tally = JsonTally("j")
    for n in range(8):
        tally.add(n, "é")
        repo.save(tally)
    snapshot = snapshots.load("JsonTally-j")
    assert snapshot is not None and snapshot.state["count"] == 6
    assert encode_snapshot(snapshot_contract_serializer(), snapshot).state_type == JSON_STATE
    assert _state(repo.load(JsonTally, "j")) == _state(AggregateRepository(events).load(JsonTally, "j"))


def test_raising_snapshot_version_ignores_the_old_snapshots_and_writes_new_ones() -> None:
    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots)
    tally = ContractTally("t")
    for n in range(4):
        tally.add(n)
        repo.save(tally)

    class TallyV2(ContractTally):
        category = "ContractTally"
        snapshot_version = 2

        def snapshot(self) -> Any:
            return {"count": self.count, "total": str(self.total), "notes": self.notes}

        def restore(self, state: Any) -> None:
            self.count, self.total, self.notes = state["count"], Decimal(state["total"]), state["notes"]

    v2 = repo.load(TallyV2, "t")  # the version-1 snapshot is ignored: a replay
    assert _state(v2) == _state(tally)
    v2.add(9)
    repo.save(v2)  # 5 events since no snapshot of this version: one is taken now
    snapshot = snapshots.load("ContractTally-t")
    assert snapshot is not None and (snapshot.schema_version, snapshot.version) == (2, 4)
    assert repo.load(TallyV2, "t").count == 5


def test_damaged_snapshot_data_is_an_error_naming_the_stream() -> None:
    serializer = snapshot_contract_serializer()
    good = encode_snapshot(
        serializer, Snapshot("s", 1, uuid.uuid4(), 1, ContractTallyState(1, Decimal("0.5"), ("a",)))
    )
    for damaged in (
        {"state": '{"count": "one", "total": "0.5", "notes": []}'},
        {"state": '{"count": 1, "total": 0.5, "notes": []}'},  # a float is no exact amount
        {"state_type": "Unknown"},
        {"state_type": JSON_STATE, "state": "NaN"},
        {"state_type": JSON_STATE, "state": "{not json"},
        {"refusals": '[["ContractEvent", {"n": 1}]]'},
        {"refusals": '{"k": 1}'},
    ):
        with pytest.raises(SerializationError):
            decode_snapshot(serializer, attrs.evolve(good, **damaged))


@settings(max_examples=60, deadline=None)
@given(
    saves=st.lists(st.lists(st.integers(-1000, 1000), min_size=1, max_size=4), min_size=1, max_size=12),
    every=st.integers(1, 6),
    asyncio_form=st.booleans(),
)
def test_a_load_from_any_snapshot_equals_the_full_replay(
    saves: list[list[int]], every: int, asyncio_form: bool
) -> None:
    class Tally(ContractTally):
        category = "Tally"
        snapshot_every = every

    events, snapshots = _pair()
    repo = AggregateRepository(events, snapshots=snapshots, cache_size=0)
    tally = Tally("p")
    for batch in saves:
        for n in batch:
            tally.add(n, str(n))
        if asyncio_form:
            asyncio.run(repo.save_async(tally))
        else:
            repo.save(tally)
        loaded = asyncio.run(repo.load_async(Tally, "p")) if asyncio_form else repo.load(Tally, "p")
        assert _state(loaded) == _state(AggregateRepository(events).load(Tally, "p")) == _state(tally)
    if len(tally.notes) >= every:
        assert snapshots.load("Tally-p") is not None


def test_save_all_takes_the_snapshots_of_each_aggregate_after_the_one_append() -> None:
    events = InMemoryEventStore(snapshot_contract_serializer())
    snapshots = Recording(events)
    repo = AggregateRepository(events, snapshots=snapshots)
    first, second = ContractTally("a"), ContractTally("b")
    for n in range(3):
        first.add(n)
    second.add(1)
    repo.save_all([first, second])
    assert snapshots.saved_at == [(2, 2)]  # "a" is 3 events in; "b" has 1
    for n in range(2):
        second.add(n)
    first.add(9)
    asyncio.run(repo.save_all_async((first, second)))
    assert snapshots.saved_at == [(2, 2), (2, 2)]
    assert [snapshots.load(s).version for s in ("ContractTally-a", "ContractTally-b")] == [2, 2]  # type: ignore[union-attr]
    assert _state(repo.load(ContractTally, "b")) == _state(second)
