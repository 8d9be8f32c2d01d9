"""Code the multi-process PostgreSQL tests run in child processes (spawned, so importable)."""

from __future__ import annotations

import random
from typing import Any

import attrs

from orchestrix.core.eventsourcing.store import ANY, NO_STREAM
from orchestrix.core.messaging.messages import Event, NewEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.postgres import PostgresEventStore

# Children import only this module and orchestrix (not pytest or hypothesis): spawning stays cheap.


@attrs.frozen
class Tick(Event):
    """The event child processes append."""

    n: int


def worker_serializer() -> Serializer:
    """The serializer children and the parent's readers share."""
    return Serializer(types=[Tick])


def open_schema_and_append(dsn: str, schema: str, me: int, barrier: Any) -> None:
    """Wait for the others, then open the store (creating the schema) and append one event."""
    barrier.wait(timeout=60)
    store = PostgresEventStore(dsn, worker_serializer(), schema=schema, pool_size=2)
    try:
        store.append(f"starter-{me}", [Tick(me)], NO_STREAM)
    finally:
        store.close()


def append_randomly(dsn: str, schema: str, me: int, appends: int, streams: int, results: Any) -> None:
    """Append ``appends`` batches of 1-3 events to shared streams; report (ids, positions) of each ack."""
    rng = random.Random(me)
    store = PostgresEventStore(dsn, worker_serializer(), schema=schema, pool_size=2)
    acked: list[tuple[list[str], list[int]]] = []
    try:
        for i in range(appends):
            batch = [NewEvent(Tick(me * 1_000_000 + i * 10 + j)) for j in range(rng.randint(1, 3))]
            result = store.append(f"shared-{rng.randrange(streams)}", batch, ANY)
            acked.append(([str(e.event_id) for e in batch], list(result.positions)))
    finally:
        results.put((me, acked))
        store.close()


def run_leased_runner(dsn: str, schema: str, count: int, stop: Any) -> None:
    """Claim a partition of the transfer sagas (or wait as a standby) and drive it until ``stop``.

    Every command the runner sends is recorded in the schema's ``handled`` table with this
    process id and partition, so the parent can check that each saga ran in one process only.
    """
    import os

    import psycopg

    from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
    from bases.orchestrix.banking_demo.models import banking_serializer
    from bases.orchestrix.banking_demo.saga import TransferSaga
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from orchestrix.core.execution.runner import SagaRunner
    from orchestrix.infrastructure.postgres import PartitionLease

    store = PostgresEventStore(dsn, banking_serializer(), schema=schema, pool_size=3, poll_interval=0.2)
    bank = BankingCommandHandlers(AggregateRepository(store))
    log = psycopg.connect(dsn, autocommit=True)
    lease = PartitionLease(store, group="transfers", count=count)

    class Recording:
        def handle(self, command: Any) -> Any:
            log.execute(
                f'INSERT INTO "{schema}".handled VALUES (%s, %s, %s)',
                (getattr(command, "transfer_id", None), os.getpid(), lease.index),
            )
            return bank.handle(command)

        async def handle_async(self, command: Any) -> Any:
            raise NotImplementedError("this worker runs the sync runner")

    try:
        while not stop.is_set() and lease.try_claim() is None:
            stop.wait(0.1)
        if lease.index is None:
            return
        runner = SagaRunner(
            store, [TransferSaga], Recording(), store.checkpoints(), partition=(lease.index, count)
        )
        while lease.holds() and not stop.is_set():
            if runner.run_once() < runner.page_size:
                store.wait_for_events(runner.position or 0, 0.2)
    finally:
        lease.release()
        log.close()
        store.close()
