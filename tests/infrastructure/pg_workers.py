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


# -- the crash child (tests/infrastructure/test_postgres_crash.py) ---------------------------


@attrs.frozen
class Part(Event):
    """One event of a crash-test batch: its place in the whole batch, over every stream it touched."""

    batch: str
    index: int
    size: int


def crash_serializer() -> Serializer:
    """The serializer of the crash child and of the parent that checks its work."""
    return Serializer(types=[Part])


CRASH_STREAMS = 5


def crash_child(dsn: str, schema: str, ack_path: str, seed: str) -> None:
    """Append for ever from two threads and two asyncio tasks, one in two appends a multi-stream
    one over two or three streams; each acknowledged append is logged to ``ack_path`` as one line
    (one write, so a kill leaves whole lines and at most one cut line). Prints ``ready`` once the
    store is open, so the parent kills it while it writes, not while it starts."""
    import json
    import os
    import sys
    import threading

    from tests.infrastructure._kill_workers import Parts, next_append, start_writers

    store = PostgresEventStore(dsn, crash_serializer(), schema=schema, pool_size=4)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def acknowledge(parts: Parts, results: Any) -> None:
        line = [
            [stream, [e.event_id.hex for e in events], list(r.versions), list(r.positions)]
            for (stream, events), r in zip(parts, results, strict=True)
        ]
        os.write(ack, (json.dumps(line) + "\n").encode())

    store.last_position()  # connected before the parent starts its clock
    start_writers(
        store,
        int(seed),
        2,
        lambda rng, me: next_append(rng, CRASH_STREAMS, (1, 2, 3), Part),
        acknowledge,
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    threading.Event().wait()
