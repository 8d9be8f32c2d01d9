"""Catch-up subscriptions over a store's global order.

A subscription reads every event after a checkpoint, then waits for new ones and goes on.
Delivery is at-least-once when the caller stores its checkpoint after handling an event:
on restart it resumes after the last stored checkpoint and may see a few events again.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.messaging.messages import RecordedEvent

__all__ = ["subscribe", "subscribe_async"]


def subscribe(
    store: EventStore,
    after: int = 0,
    *,
    stop: threading.Event | None = None,
    page_size: int = 500,
    idle_timeout: float = 0.5,
) -> Iterator[RecordedEvent]:
    """Yield every event after position ``after`` in global order, then new ones as they arrive.

    Runs until ``stop`` is set (checked between pages and while idle).
    """
    position = after
    while stop is None or not stop.is_set():
        seen = 0
        for recorded in store.read_all(position, limit=page_size):
            position = recorded.position
            seen += 1
            yield recorded
        if seen < page_size:
            store.wait_for_events(position, idle_timeout)


async def subscribe_async(
    store: EventStore,
    after: int = 0,
    *,
    stop: threading.Event | None = None,
    page_size: int = 500,
    idle_timeout: float = 0.5,
) -> AsyncIterator[RecordedEvent]:
    """Asyncio form of :func:`subscribe`; cancel the consuming task or set ``stop`` to end it."""
    position = after
    while stop is None or not stop.is_set():
        seen = 0
        async for recorded in store.read_all_async(position, limit=page_size):
            position = recorded.position
            seen += 1
            yield recorded
        if seen < page_size:
            await store.wait_for_events_async(position, idle_timeout)
