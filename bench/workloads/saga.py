"""Issue 4: TransferSaga end to end, with a fixed number of transfers in flight."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import itertools
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from workloads.common import PG_DSN, clock, require, temp_dir

OPENING = Decimal("1000000")


@contextlib.contextmanager
def _stores(kind: str, path: str, pool_size: int) -> Iterator[tuple[Any, Any]]:
    from bases.orchestrix.banking_demo.models import banking_serializer
    from orchestrix.core.execution import InMemoryCheckpointStore
    from orchestrix.infrastructure.memory.store import InMemoryEventStore

    if kind == "memory":
        yield InMemoryEventStore(), InMemoryCheckpointStore()
        return
    if kind == "postgres":
        from workloads.postgres import fresh_schema

        pg_store, pg_checkpoints = require(
            "orchestrix.infrastructure.postgres", "PostgresEventStore", "PostgresCheckpointStore"
        )
        with fresh_schema("saga") as schema:
            store = pg_store(PG_DSN, banking_serializer(), schema=schema, pool_size=pool_size)
            try:
                yield store, pg_checkpoints(PG_DSN, schema=schema)
            finally:
                store.close()
        return
    file_store, file_checkpoints = require(
        "orchestrix.infrastructure.file", "FileEventStore", "FileCheckpointStore"
    )
    store = file_store(os.path.join(path, "store"), banking_serializer(), sync=True)
    try:
        yield store, file_checkpoints(os.path.join(path, "checkpoints.json"))
    finally:
        store.close()


def transfers(
    n: int = 2_000, in_flight: int = 32, store: str = "file", accounts_per_client: int = 32, workers: int = 0
) -> dict[str, Any]:
    """Completed transfers per second: ``in_flight`` clients each start a transfer and wait for its end.

    Each client moves 1.00 round a ring of its own ``accounts_per_client`` accounts (1,024 in
    all by default), so clients do not contend on accounts and account histories stay short
    (a transfer's cost grows with the length of the accounts it replays: no snapshots yet).
    The SagaRunner (asyncio, ``max_concurrency=in_flight``) drives every saga; a subscriber
    sees TransferCompleted/TransferFailed and releases the waiting client. ``workers`` sizes
    the loop's default thread pool (0: asyncio's default).
    """
    try:
        from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
        from bases.orchestrix.banking_demo.models import (
            OpenAccount,
            TransferCompleted,
            TransferFailed,
            TransferMoney,
        )
        from bases.orchestrix.banking_demo.saga import TransferSaga
        from orchestrix.core.eventsourcing.aggregate import AggregateRepository
        from orchestrix.core.execution import SagaRunner, subscribe_async
    except ImportError as exc:
        from workloads.common import NotLanded

        raise NotLanded(str(exc)) from None

    with temp_dir() as path, _stores(store, path, in_flight) as (es, checkpoints):
        bank = BankingCommandHandlers(AggregateRepository(es))
        accounts = [f"acc-{i:05d}" for i in range(accounts_per_client * in_flight)]
        for account in accounts:
            bank.handle(OpenAccount(account, account.upper(), OPENING))
        runner = SagaRunner(es, [TransferSaga], bank, checkpoints, max_concurrency=in_flight)
        runner.run_until_idle()  # past the account openings, outside the timing
        after = es.last_position()
        outcomes: collections.Counter[str] = collections.Counter()

        async def main() -> float:
            loop = asyncio.get_running_loop()
            if workers:
                loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(workers))
            waiting: dict[str, asyncio.Future[str]] = {}
            stop = asyncio.Event()

            # The subscriber asks only for the outcomes where the library can filter by type (a
            # tree without ``types=``, as with ``--rev``, reads and decodes every event).
            outcome_types = (TransferCompleted, TransferFailed)
            filtered = "types" in inspect.signature(subscribe_async).parameters
            only = {"types": outcome_types} if filtered else {}

            async def watch() -> None:
                async for recorded in subscribe_async(es, after, idle_timeout=0.05, **only):
                    event = recorded.event
                    if isinstance(event, outcome_types):
                        future = waiting.get(event.transfer_id)
                        if future is not None and not future.done():
                            future.set_result(type(event).__name__)

            numbers = iter(range(n))

            async def client(i: int) -> None:
                ring = accounts[i * accounts_per_client : (i + 1) * accounts_per_client]
                for turn in itertools.count():
                    k = next(numbers, None)
                    if k is None:
                        return
                    transfer_id = f"t{k:07d}"
                    source, target = ring[turn % len(ring)], ring[(turn + 1) % len(ring)]
                    waiting[transfer_id] = loop.create_future()
                    command = TransferMoney(transfer_id, source, target, Decimal("1.00"))
                    await bank.transfer_money(command)
                    outcomes[await waiting[transfer_id]] += 1

            watcher = asyncio.create_task(watch())
            driver = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.05))
            start = clock()
            await asyncio.gather(*(client(i) for i in range(in_flight)))
            seconds = clock() - start
            stop.set()
            watcher.cancel()
            await asyncio.wait_for(driver, timeout=30)
            await asyncio.gather(watcher, return_exceptions=True)
            return seconds

        seconds = asyncio.run(main())
        total = sum(bank.get_account(a).balance for a in accounts)
        events = sum(1 for _ in es.read_all(after))  # positions need not be dense (PostgreSQL)
    assert outcomes["TransferCompleted"] == n, outcomes
    assert total == OPENING * len(accounts), total
    return {
        "value": n / seconds,
        "transfers": n,
        "seconds": seconds,
        "events_per_transfer": events / n,
        "outcomes": dict(outcomes),
        "unmatched": runner.stats.unmatched,
        "accounts": len(accounts),
    }


def pg_append_ceiling(
    seconds: float = 3.0, tasks: int = 8, events_per_transfer: int = 6, pool_size: int = 32
) -> dict[str, Any]:
    """What the PostgreSQL store's own appends allow: ``tasks`` asyncio tasks each appending one
    event at a time (a new stream per append, as a transfer's six appends are to six places) for
    ``seconds``; the value is that rate divided by the events of one transfer."""
    try:
        from bases.orchestrix.banking_demo.models import AccountOpened, banking_serializer
        from workloads.postgres import fresh_schema

        pg_store = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    except ImportError as exc:
        from workloads.common import NotLanded

        raise NotLanded(str(exc)) from None
    with fresh_schema("sagaceil") as schema:
        store = pg_store(PG_DSN, banking_serializer(), schema=schema, pool_size=pool_size)
        try:

            async def main() -> tuple[int, float]:
                counter = itertools.count()
                stop_at = clock() + seconds
                done = 0

                async def task() -> None:
                    nonlocal done
                    while clock() < stop_at:
                        k = next(counter)
                        opened = AccountOpened(f"c{k:08d}", "OWNER", Decimal("1"), uuid.uuid4(), _now())
                        await store.append_async(f"Account-c{k:08d}", [opened], -1)
                        done += 1

                await store.append_async(
                    "Account-warm", [AccountOpened("warm", "W", Decimal("1"), uuid.uuid4(), _now())], -1
                )
                start = clock()
                await asyncio.gather(*(task() for _ in range(tasks)))
                return done, clock() - start

            appended, spent = asyncio.run(main())
        finally:
            store.close()
    return {
        "value": appended / spent / events_per_transfer,
        "events_per_second": appended / spent,
        "events_per_transfer": events_per_transfer,
        "tasks": tasks,
    }


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
