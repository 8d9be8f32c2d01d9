"""Catch-up subscriptions over a store's global order.

A subscription reads every event after a checkpoint, then waits for new ones and goes on.
With ``types``, it yields only the events of those classes (the store passes over the others
without decoding them, see ``EventStore.read_all``), and its position still moves past the others.
Delivery is at-least-once when the caller stores its checkpoint after handling an event:
on restart it resumes after the last stored checkpoint and may see a few events again.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Collection, Iterator

from orchestrix.core import _io
from orchestrix.core._checks import check_types
from orchestrix.core._io import run_sync
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution._paging import read_page
from orchestrix.core.messaging.messages import RecordedEvent

__all__ = ["subscribe", "subscribe_async"]


def subscribe(
    store: EventStore,
    after: int = 0,
    *,
    stop: threading.Event | None = None,
    page_size: int = 500,
    idle_timeout: float = 0.5,
    types: Collection[type] | None = None,
) -> Iterator[RecordedEvent]:
    """Yield every event after position ``after`` in global order, then new ones as they arrive.

    Runs until ``stop`` is set (checked between pages and while idle). With ``types`` (a set,
    list or tuple of event classes), only the events of those classes.
    """
    cursor = _Cursor(store, after, stop, page_size, idle_timeout, check_types(types))
    while not cursor.stopped():
        yield from run_sync(cursor.next_page())


async def subscribe_async(
    store: EventStore,
    after: int = 0,
    *,
    stop: threading.Event | None = None,
    page_size: int = 500,
    idle_timeout: float = 0.5,
    types: Collection[type] | None = None,
) -> AsyncIterator[RecordedEvent]:
    """Asyncio form of :func:`subscribe`; cancel the consuming task or set ``stop`` to end it."""
    cursor = _Cursor(store, after, stop, page_size, idle_timeout, check_types(types))
    while not cursor.stopped():
        for recorded in await cursor.next_page():
            yield recorded


class _Cursor:
    """Where a subscription stands, and its next page: written once for both forms (the
    generators above only hand the pages on)."""

    def __init__(
        self,
        store: EventStore,
        after: int,
        stop: threading.Event | None,
        page_size: int,
        idle_timeout: float,
        types: frozenset[type] | None,
    ) -> None:
        self.store = store
        self.types = types
        self.position = after
        self.stop = stop
        self.page_size = page_size
        self.idle_timeout = idle_timeout
        self._caught_up = False

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def next_page(self) -> list[RecordedEvent]:
        """The next page; once caught up, it first waits (up to ``idle_timeout``) for new events."""
        if self._caught_up:
            await _io.wait_for_events(self.store, self.position, self.idle_timeout)
            if self.stopped():
                return []
        page, self.position = await read_page(self.store, self.position, self.page_size, self.types)
        self._caught_up = len(page) < self.page_size
        return page
