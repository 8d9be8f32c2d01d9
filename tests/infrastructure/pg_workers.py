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
