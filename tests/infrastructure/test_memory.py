import pytest

from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import EventStoreContract, FencingContract, contract_serializer


class TestInMemoryEventStore(EventStoreContract, FencingContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore(serializer=contract_serializer())


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
