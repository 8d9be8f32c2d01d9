from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from orchestrix.core.errors import SerializationError
from orchestrix.core.execution.checkpoint import InMemoryCheckpointStore
from orchestrix.core.messaging import Event, Serializer
from orchestrix.infrastructure.file.store import FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import (
    CheckpointStoreContract,
    EventImportContract,
    EventStoreContract,
    FencingContract,
    contract_serializer,
)


class TestInMemoryEventStore(EventStoreContract, FencingContract, EventImportContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore(serializer=contract_serializer())


class TestInMemoryCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    def checkpoints(self) -> InMemoryCheckpointStore:
        return InMemoryCheckpointStore()


def test_an_append_wakes_an_asyncio_waiter_without_polling() -> None:
    import asyncio

    from orchestrix.testing import ContractEvent

    store = InMemoryEventStore()

    async def scenario() -> bool:
        waiter = asyncio.create_task(store.wait_for_events_async(0, 30.0))
        await asyncio.sleep(0)
        store.append("s-1", [ContractEvent(1)])
        return await asyncio.wait_for(waiter, 5.0)

    assert asyncio.run(scenario()) is True
    assert store._async_waiters == set()


# -- without a serializer, the memory store refuses what the durable stores refuse -----------------


@attrs.frozen
class PriceSet(Event):
    sku: str
    price: Decimal


@attrs.frozen
class Measured(Event):
    value: float
    labels: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Linked(Event):
    name: str
    next: Linked | None = None


@attrs.frozen
class Vague(Event):
    payload: Any


def linked(length: int) -> Linked:
    node = Linked("end")
    for k in range(length):
        node = Linked(str(k), node)
    return node


BAD_EVENTS = [
    PriceSet("tea", 3.2),  # type: ignore[arg-type]
    PriceSet("tea", Decimal("NaN")),
    PriceSet("tea", Decimal("-Infinity")),
    PriceSet(5, Decimal("1")),  # type: ignore[arg-type]
    PriceSet("half a pair \ud800", Decimal("1")),
    Measured(math.nan),
    Measured(math.inf),
    Measured(1.0, {1: "a"}),  # type: ignore[dict-item]
    linked(3000),
    Vague(1),
]


@pytest.mark.parametrize("bad", BAD_EVENTS, ids=lambda e: f"{type(e).__name__}")
def test_the_default_memory_store_refuses_what_the_file_store_refuses(bad: Any, tmp_path: Path) -> None:
    memory = InMemoryEventStore()
    with pytest.raises(SerializationError) as from_memory:
        memory.append("s-1", [PriceSet("tea", Decimal("1")), bad])
    serializer = Serializer(types=[PriceSet, Measured, Linked, Vague])
    with (
        FileEventStore(tmp_path, serializer, sync=False) as file,
        pytest.raises(SerializationError) as from_file,
    ):
        file.append("s-1", [PriceSet("tea", Decimal("1")), bad])
    assert type(from_memory.value) is type(from_file.value)
    assert str(from_memory.value) == str(from_file.value)
    assert memory.last_position() == 0 and memory.stream_version("s-1") == -1


@pytest.mark.parametrize(
    "bad", [{"sku": "tea"}, "PriceSet", 3.2, None, object()], ids=lambda e: type(e).__name__
)
def test_the_default_memory_store_refuses_an_event_that_is_no_attrs_class(bad: Any) -> None:
    store = InMemoryEventStore()
    with pytest.raises(SerializationError, match="not an attrs class"):
        store.append("s-1", [bad])
    assert store.last_position() == 0


def test_the_default_memory_store_keeps_the_objects_and_needs_no_registration() -> None:
    @attrs.frozen
    class PriceSet(Event):  # another class of the same name: names are not looked up here
        sku: str

    store = InMemoryEventStore()
    first, second = globals()["PriceSet"]("tea", Decimal("3.20")), PriceSet("tea")
    store.append("s-1", [first, second, linked(50)])
    events = [recorded.event for recorded in store.read_stream("s-1")]
    assert events[0] is first and events[1] is second
    assert [recorded.event_type for recorded in store.read_all()] == ["PriceSet", "PriceSet", "Linked"]


def test_check_events_false_keeps_any_object_unchecked() -> None:
    store = InMemoryEventStore(check_events=False)
    store.append("s-1", [{"price": 3.2}, PriceSet("tea", Decimal("NaN"))])
    assert [recorded.event_type for recorded in store.read_stream("s-1")] == ["dict", "PriceSet"]


def test_with_a_serializer_the_memory_store_also_refuses_unregistered_types() -> None:
    from orchestrix.core.errors import UnknownEventTypeError

    for store in (
        InMemoryEventStore(Serializer(types=[PriceSet])),
        InMemoryEventStore(Serializer(types=[PriceSet]), check_events=False),
    ):
        with pytest.raises(UnknownEventTypeError, match="Measured"):
            store.append("s-1", [Measured(1.0)])
        with pytest.raises(SerializationError, match="field 'price'"):
            store.append("s-1", [PriceSet("tea", 3.2)])  # type: ignore[arg-type]
        assert store.last_position() == 0
