"""run_forever_async stores each page's checkpoint while the next page runs: in order, all of
them by the time it returns, and a failed save stops the runner."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import OpenAccount, TransferMoney
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import StoreFailedError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory.store import InMemoryEventStore


class SlowCheckpoints(InMemoryCheckpointStore):
    """Checkpoints whose asyncio saves take a while (as a synced file does), recorded in order."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.saved: list[int] = []
        self.fail_at = fail_at

    async def save_async(self, name: str, position: int) -> None:
        await asyncio.sleep(0.001)
        if self.fail_at is not None and len(self.saved) >= self.fail_at:
            raise StoreFailedError("the checkpoint file cannot be written")
        self.saved.append(position)
        await super().save_async(name, position)


def _world(transfers: int) -> tuple[InMemoryEventStore, BankingCommandHandlers]:
    store = InMemoryEventStore()
    bank = BankingCommandHandlers(AggregateRepository(store))
    bank.handle(OpenAccount("alice", "Alice", Decimal("100")))
    bank.handle(OpenAccount("bob", "Bob", Decimal("0")))
    for k in range(transfers):
        bank.handle(TransferMoney(f"t{k}", "alice", "bob", Decimal("1")))
    return store, bank


async def _until_caught_up(runner: SagaRunner, store: InMemoryEventStore, stop: asyncio.Event) -> None:
    while runner.position is None or runner.position < store.last_position():
        await asyncio.sleep(0.001)
    stop.set()


def _run_until_caught_up(runner: SagaRunner, store: InMemoryEventStore) -> None:
    """Run the runner's asyncio loop until it has handled everything in the store, then stop it."""

    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.gather(
            runner.run_forever_async(stop, idle_timeout=0.01), _until_caught_up(runner, store, stop)
        )

    asyncio.run(main())


def test_every_page_checkpoint_is_stored_in_order_by_the_time_the_runner_returns() -> None:
    store, bank = _world(10)
    checkpoints = SlowCheckpoints()
    runner = SagaRunner(store, [TransferSaga], bank, checkpoints, page_size=3)

    _run_until_caught_up(runner, store)
    assert len(checkpoints.saved) > 3
    assert checkpoints.saved == sorted(set(checkpoints.saved))
    assert checkpoints.saved[-1] == checkpoints.load("sagas") == runner.position == store.last_position()
    assert bank.get_account("bob").balance == Decimal("10")


def test_a_checkpoint_that_cannot_be_stored_stops_the_runner() -> None:
    store, bank = _world(10)
    checkpoints = SlowCheckpoints(fail_at=2)
    runner = SagaRunner(store, [TransferSaga], bank, checkpoints, page_size=3)
    with pytest.raises(StoreFailedError):
        asyncio.run(asyncio.wait_for(runner.run_forever_async(idle_timeout=0.01), timeout=30))
    assert checkpoints.load("sagas") == checkpoints.saved[-1]
    assert len(checkpoints.saved) == 2


def test_the_sync_form_stores_each_checkpoint_before_the_next_page() -> None:
    store, bank = _world(3)
    checkpoints = InMemoryCheckpointStore()
    runner = SagaRunner(store, [TransferSaga], bank, checkpoints, page_size=2)
    while runner.run_once():
        assert checkpoints.load("sagas") == runner.position


def test_the_next_page_runs_while_a_checkpoint_is_being_stored() -> None:
    store, bank = _world(4)
    reads: list[int] = []
    read_all_async = store.read_all_async

    def counting_read_all_async(after: int = 0, limit: int | None = None, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(after)
        return read_all_async(after, limit=limit, **kwargs)

    store.read_all_async = counting_read_all_async  # type: ignore[method-assign]

    class WaitsForTheNextPage(InMemoryCheckpointStore):
        overlapped: bool | None = None

        async def save_async(self, name: str, position: int) -> None:
            if self.overlapped is None:
                # Has the page after ``position`` been read before this save ends?
                for _ in range(2000):  # a guard, not a timing: an inline save would wait for ever
                    if any(after >= position for after in reads):
                        break
                    await asyncio.sleep(0.001)
                self.overlapped = any(after >= position for after in reads)
            await super().save_async(name, position)

    checkpoints = WaitsForTheNextPage()
    runner = SagaRunner(store, [TransferSaga], bank, checkpoints, page_size=3)

    _run_until_caught_up(runner, store)
    assert checkpoints.overlapped is True
    assert checkpoints.load("sagas") == store.last_position()
