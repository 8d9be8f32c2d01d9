"""Cancelling an asyncio read or wait of any store ends it promptly, whenever the cancel lands.

A service ends ``subscribe_async`` by cancelling the consuming task, so a cancel that is lost
(swallowed by ``asyncio.wait_for`` on Python 3.11 when the awaited thing finishes in the same
loop turn) leaves that task running for ever and the shutdown hanging. Each store gets at least
``ORCHESTRIX_CANCELS`` (default 1,000) cancels at random moments, of subscribers, waits and
reads, while transfers run through the banking saga runner and another thread deposits; every
cancel must end its task, cancelled, within a second.

The schedule is seeded (the same operations and delays on every run); the interleaving with
the load is not, which is the point of a stress test. It takes a few seconds per store.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import DepositMoney, OpenAccount, TransferMoney, banking_serializer
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import ConcurrencyError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner, subscribe_async

CANCELS = int(os.environ.get("ORCHESTRIX_CANCELS", "1000"))
LIMIT = 1.0
"""Seconds a cancelled task may take to end."""
ACCOUNTS = [f"cancel-acc-{i}" for i in range(6)]


@pytest.fixture(params=["memory", "file", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """An event store and a checkpoint store of one kind."""
    if request.param == "memory":
        from orchestrix.infrastructure.memory.store import InMemoryEventStore

        yield InMemoryEventStore(serializer=banking_serializer()), InMemoryCheckpointStore()
    elif request.param == "file":
        from orchestrix.infrastructure.file import FileCheckpointStore, FileEventStore

        with FileEventStore(tmp_path / "store", banking_serializer(), sync=False) as store:
            yield store, FileCheckpointStore(tmp_path / "checkpoints.json")
    else:
        from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema

        dsn = dsn_or_skip()
        from orchestrix.infrastructure.postgres import PostgresEventStore

        with (
            throwaway_schema(dsn, "cancel") as schema,
            PostgresEventStore(dsn, banking_serializer(), schema=schema, pool_size=4) as store,
        ):
            yield store, store.checkpoints()


Operation = tuple[str, Callable[[], Awaitable[None]]]


def _operations(store: Any, checkpoints: Any, rng: random.Random) -> list[Operation]:
    """Endless asyncio loops over one read or wait each: a lost cancel shows as a task that never ends.

    Each turn also yields to the loop once: the memory store's calls never suspend, and a loop
    that never suspends cannot be cancelled by anyone.
    """
    seen = [0] + [recorded.position for recorded in store.read_all()]

    async def _recent() -> int:
        # A position a little before the head (positions are sparse on PostgreSQL: take one a
        # read returned). A read from 0 would grow with the log, and on the memory store, which
        # never suspends inside a read, would hold each cancel back for a whole read.
        return rng.choice(seen[-100:])

    async def subscriber() -> None:
        async for recorded in subscribe_async(store, await _recent(), idle_timeout=0.01):
            seen.append(recorded.position)
            await asyncio.sleep(0)

    async def wait_at_head() -> None:
        while True:  # the next append wakes it: cancels race wake-ups and timeouts
            head = await store.last_position_async()
            await store.wait_for_events_async(head, rng.choice([0.0, 0.002, 0.05]))
            await asyncio.sleep(0)

    async def read_all() -> None:
        while True:
            async for recorded in store.read_all_async(await _recent(), limit=rng.choice([1, 50, None])):
                seen.append(recorded.position)
            await asyncio.sleep(0)

    async def read_stream() -> None:
        while True:
            async for _ in store.read_stream_async(rng.choice(ACCOUNTS)):
                pass
            await asyncio.sleep(0)

    async def versions() -> None:
        while True:
            await store.stream_version_async(rng.choice(ACCOUNTS))
            await checkpoints.load_async("cancel-test")
            await asyncio.sleep(0)

    return [
        ("subscribe_async", subscriber),
        ("wait_for_events_async", wait_at_head),
        ("read_all_async", read_all),
        ("read_stream_async", read_stream),
        ("stream_version_async/load_async", versions),
    ]


async def _cancel_point(rng: random.Random) -> None:
    """Let the task run for a random while: not at all, a few loop turns, or up to 5 ms."""
    kind = rng.randrange(3)
    if kind == 1:
        for _ in range(rng.randrange(1, 30)):
            await asyncio.sleep(0)
    elif kind == 2:
        await asyncio.sleep(rng.uniform(0, 0.005))


async def _stress(store: Any, checkpoints: Any) -> list[str]:
    rng = random.Random(147)
    bank = BankingCommandHandlers(AggregateRepository(store))
    for account in ACCOUNTS:
        bank.handle(OpenAccount(account, account.upper(), Decimal("1000")))
    runner = SagaRunner(store, [TransferSaga], bank, checkpoints, max_concurrency=4)
    stop = asyncio.Event()
    halt = threading.Event()

    async def transfers() -> None:
        for n in itertools.count():
            source, target = rng.sample(ACCOUNTS, 2)
            await bank.transfer_money(TransferMoney(f"cancel-t{n}", source, target, Decimal("0.01")))
            await asyncio.sleep(0.002)
            if stop.is_set():
                return

    def deposits() -> None:  # appends from another thread wake the loop's waiters from outside
        for n in itertools.count():
            if halt.wait(0.003):
                return
            try:
                bank.handle(DepositMoney(ACCOUNTS[n % len(ACCOUNTS)], Decimal("0.01")))
            except ConcurrencyError:
                # The saga writes the same accounts; on a busy machine a deposit can lose every
                # one of its attempts. Its only job here is to append from outside the loop.
                continue

    driver = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.02))
    client = asyncio.create_task(transfers())
    depositor = threading.Thread(target=deposits, daemon=True)
    depositor.start()
    operations = _operations(store, checkpoints, rng)
    slow: list[str] = []
    stuck: list[asyncio.Task[None]] = []
    try:
        for attempt in range(CANCELS):
            name, operation = rng.choice(operations)
            task = asyncio.create_task(operation())
            await _cancel_point(rng)
            task.cancel()
            started = time.monotonic()
            await asyncio.wait({task}, timeout=LIMIT)
            took = time.monotonic() - started
            if not task.done():
                slow.append(f"cancel {attempt} of {name}: still running after {took:.2f} s")
                stuck.append(task)
            elif not task.cancelled():
                error = task.exception()
                slow.append(f"cancel {attempt} of {name}: ended with {error!r} instead of being cancelled")
            if len(slow) >= 5:
                break
    finally:
        halt.set()
        stop.set()
        for task in stuck:  # a lost cancel: try again, so the loop can be closed
            for _ in range(10):
                task.cancel()
                await asyncio.wait({task}, timeout=LIMIT)
                if task.done():
                    break
        await asyncio.wait({client, driver}, timeout=30)
        await asyncio.to_thread(depositor.join, 30)
    assert driver.done() and client.done(), "the saga runner or the transfer client did not stop"
    driver.result()
    client.result()
    return slow


def _run(main: Callable[[], Awaitable[list[str]]]) -> list[str]:
    # Not asyncio.run: after a lost cancel it would wait for ever on the task it cannot end.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_every_read_and_wait_ends_promptly_when_cancelled_at_any_moment(stores: tuple[Any, Any]) -> None:
    store, checkpoints = stores
    slow = _run(lambda: _stress(store, checkpoints))
    assert slow == [], "\n".join(slow)
