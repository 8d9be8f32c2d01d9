"""The loop shared by everything that consumes the store's global order page by page."""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING, Any

from orchestrix.core import _io
from orchestrix.core._io import run_sync

if TYPE_CHECKING:
    import asyncio


async def read_page(store: Any, after: int, limit: int, types: Any) -> tuple[list[Any], int]:
    """The next page of ``read_all(after, limit, types=types)``, and the position it reaches.

    A filtered read passes over events silently, so a page of them does not say how far it read.
    A page with events reaches its last one (the events passed over after it are passed again
    next time, cheaply). Only an empty page costs a look at the head: taken *before* a second
    read, whatever that read does not yield up to the head was passed over, so the position can
    move there and a reader waiting for new events after it does not wake at once for ever.
    """
    page = await _io.read_all(store, after, limit, types)
    if page or types is None:
        return page, page[-1].position if page else after
    head = await _io.last_position(store)
    page = await _io.read_all(store, after, limit, types)
    last = page[-1].position if page else after
    return page, last if len(page) == limit else max(last, head)


class PageLoop(abc.ABC):
    """``run_until_idle`` and ``run_forever`` (sync and asyncio) over a class's ``run_once``.

    The class provides ``store``, ``page_size``, ``run_once()``, ``run_once_async()`` and
    ``_read_position()`` (the position to wait after when caught up). The loop is written once;
    its sync forms run it with the sync driver.
    """

    store: Any
    page_size: int

    @abc.abstractmethod
    def run_once(self) -> int:
        """Handle the next page of events; return how many were read."""

    @abc.abstractmethod
    async def run_once_async(self) -> int:
        """Asyncio form of :meth:`run_once`."""

    @abc.abstractmethod
    def _read_position(self) -> int:
        """The position to wait after for new events, once caught up."""

    def run_until_idle(self, max_pages: int | None = None) -> int:
        """Run pages until no event is left (or ``max_pages`` pages ran); returns events read."""
        return run_sync(self.run_until_idle_async(max_pages))

    async def run_until_idle_async(self, max_pages: int | None = None) -> int:
        """Asyncio form of :meth:`run_until_idle`."""
        total = pages = 0
        while max_pages is None or pages < max_pages:
            read = await self.run_once_async()
            total += read
            pages += 1
            if read == 0:
                break
        return total

    def run_forever(self, stop: threading.Event, idle_timeout: float = 0.5) -> None:
        """Run pages, waiting for new events when caught up, until ``stop`` is set."""
        return run_sync(self.run_forever_async(stop, idle_timeout))

    async def run_forever_async(
        self, stop: asyncio.Event | threading.Event | None = None, idle_timeout: float = 0.5
    ) -> None:
        """Asyncio form of :meth:`run_forever`; also ends when its task is cancelled."""
        while stop is None or not stop.is_set():
            # ``stop`` is looked at again before waiting: whoever sets it and then appends an
            # event to wake the loop may see that event taken (or passed over) by the page that
            # was running, and the wait after it would last the whole idle timeout.
            if await self.run_once_async() < self.page_size and not (stop is not None and stop.is_set()):
                await self._wait_idle(idle_timeout)

    async def _wait_idle(self, idle_timeout: float) -> None:
        """Wait, caught up, for new events or ``idle_timeout`` (a subclass with timers wakes sooner)."""
        await _io.wait_for_events(self.store, self._read_position(), idle_timeout)
