"""The type-filter part of the EventStore contract: ``read_all(types=...)`` and subscriptions
with ``types`` yield only events of those classes, ``limit`` counting only them.

:class:`~orchestrix.testing.contract.EventStoreContract` inherits these tests, so every store
that runs the contract runs them too; they use its ``store`` fixture.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from orchestrix.core.eventsourcing.store import ANY, EventStore
from orchestrix.core.execution.subscription import subscribe, subscribe_async
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = ["TypeFilterContract"]


def _events(*numbers: int) -> list[NewEvent]:
    # Imported here: the contract module imports this one to inherit from it.
    from orchestrix.testing.contract import ContractEvent

    return [NewEvent(ContractEvent(n)) for n in numbers]


def _numbers(recorded: Iterator[RecordedEvent]) -> list[int]:
    return [r.event.n for r in recorded]


class TypeFilterContract:
    """Reading and subscribing by event type, on every store."""

    def test_read_all_with_types_yields_only_those_and_limit_counts_them(self, store: EventStore) -> None:
        from orchestrix.testing.contract import ContractEvent, MoneyMoved, NotRegistered

        at = datetime(2026, 1, 2, tzinfo=UTC)
        for i in range(8):  # ContractEvent i, and a MoneyMoved after every odd one
            store.append(f"s-{i % 3}", _events(i), ANY)
            if i % 2:
                store.append("money", [MoneyMoved(Decimal(i), at, uuid.UUID(int=i))], ANY)
        everything = list(store.read_all())
        moved = [r for r in everything if isinstance(r.event, MoneyMoved)]
        assert [r.event.amount for r in store.read_all(types={MoneyMoved})] == [1, 3, 5, 7]
        assert list(store.read_all(types=[MoneyMoved])) == moved  # the same records, envelope and all
        assert [r.event.amount for r in store.read_all(moved[0].position, 2, types=(MoneyMoved,))] == [3, 5]
        assert _numbers(store.read_all(moved[1].position, types=frozenset({ContractEvent}))) == [4, 5, 6, 7]
        assert list(store.read_all(types={ContractEvent, MoneyMoved})) == everything
        assert list(store.read_all(types=set())) == []
        assert list(store.read_all(types={NotRegistered})) == []  # no such event stored
        assert list(store.read_all(everything[-1].position, types={MoneyMoved})) == []
        # A reader keeping a position takes the head first: a short filtered read passed it all.
        head = store.last_position()
        assert len(list(store.read_all(moved[-1].position, 10, types={MoneyMoved}))) < 10
        assert head == everything[-1].position

        async def forms() -> None:
            got = [r async for r in store.read_all_async(moved[0].position, 2, types={MoneyMoved})]
            assert got == moved[1:3]
            assert [r async for r in store.read_all_async(types={ContractEvent, MoneyMoved})] == everything

        asyncio.run(forms())

    def test_a_subscription_with_types_yields_only_those_live_too(self, store: EventStore) -> None:
        from orchestrix.testing.contract import MoneyMoved

        at = datetime(2026, 1, 2, tzinfo=UTC)

        def moved(n: int) -> list[MoneyMoved]:
            return [MoneyMoved(Decimal(n), at, uuid.UUID(int=n + 1))]

        store.append("s-1", _events(0, 1), ANY)
        store.append("money", moved(1), ANY)
        store.append("s-1", _events(2), ANY)
        stop = threading.Event()
        seen: list[Decimal] = []

        def late_writer() -> None:
            store.append("s-2", _events(3), ANY)
            store.append("money", moved(2), ANY)

        writer = threading.Timer(0.05, late_writer)
        writer.start()
        for recorded in subscribe(store, 0, stop=stop, idle_timeout=0.02, page_size=2, types={MoneyMoved}):
            seen.append(recorded.event.amount)
            if len(seen) == 2:
                stop.set()
        writer.join()
        assert seen == [1, 2]

        async def async_form() -> list[Decimal]:
            got = []
            async for recorded in subscribe_async(store, 0, idle_timeout=0.02, types=[MoneyMoved]):
                got.append(recorded.event.amount)
                if len(got) == 2:
                    break
            return got

        assert asyncio.run(async_form()) == [1, 2]
