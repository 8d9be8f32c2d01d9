"""Process steps with exactly-once output: the output and the position handled, in one append.

A process step reads the store's global order and turns some events into new events in other
streams (a statement line for each completed transfer, say). Kept with a separate checkpoint,
a crash between writing the output and saving the position repeats the output, and the other
order skips input; idempotency keys are the usual patch. Here instead each handled event's
output and a :class:`ProcessCheckpoint` (the position handled) go into **one multi-stream
append** (``EventStore.append_many``): the checkpoint lands in the step's *tracking stream*
at the version the step last wrote, so the output is stored exactly when the position is.

* A crash at any moment leaves both or neither: restarted, the step resumes after the last
  stored checkpoint, repeating nothing and skipping nothing.
* Two instances of one step (a standby that woke too early) cannot both write: the second's
  append expects a tracking-stream version the first already used, fails as a whole, and the
  step reloads its position (:attr:`ProcessStats.raced`).
* Events the handler ignores need no append; a checkpoint of its own is stored once
  ``checkpoint_every`` of them have passed, so a restart re-reads at most that many (the
  handler must decide from the event alone, so that re-reading one changes nothing).

The tracking stream is ``process-<name>``; register :data:`PROCESS_EVENTS` with the store's
serializer. The logic is written once (``run_once_async``); ``run_once`` runs it synchronously.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from orchestrix.core import _io
from orchestrix.core._checks import check_checkpoint_name, check_stream_name
from orchestrix.core._io import run_sync
from orchestrix.core.errors import InvalidArgumentError, MultiStreamConflictError
from orchestrix.core.eventsourcing.store import NO_STREAM, EventStore, StreamAppend
from orchestrix.core.messaging.messages import Event, NewEvent, RecordedEvent

__all__ = ["PROCESS_EVENTS", "ProcessCheckpoint", "ProcessHandler", "ProcessStats", "ProcessStep"]


@attrs.frozen
class ProcessCheckpoint(Event):
    """The global position a process step has handled, stored in its tracking stream."""

    position: int


PROCESS_EVENTS: tuple[type, ...] = (ProcessCheckpoint,)
"""Event types a process step stores: register them with the store's serializer."""

ProcessHandler = Callable[
    [RecordedEvent], Sequence[StreamAppend] | Awaitable[Sequence[StreamAppend] | None] | None
]
"""A process step's handler: an event's output (or None), directly or from a coroutine."""


@attrs.define
class ProcessStats:
    """What one run of a process step did."""

    read: int = 0
    """Events read from the global order."""
    handled: int = 0
    """Events whose output was stored (each with its checkpoint)."""
    raced: bool = False
    """Another instance of the step stored a checkpoint first; this run stopped and reloads."""


class ProcessStep:
    """Feed the store's events to ``handle`` and store what it returns exactly once.

    ``handle(recorded)`` returns the output of one event as a list of
    :class:`~orchestrix.core.eventsourcing.store.StreamAppend` (or None / an empty list for an
    event it ignores); it may be a coroutine function. It is called for every event of the
    global order after the step's position, including the step's own output (which it usually
    ignores) but not its checkpoints.
    """

    def __init__(
        self,
        name: str,
        store: EventStore,
        handle: ProcessHandler,
        *,
        page_size: int = 500,
        checkpoint_every: int = 1000,
    ) -> None:
        check_checkpoint_name(name)
        for parameter, value in (("page_size", page_size), ("checkpoint_every", checkpoint_every)):
            if type(value) is not int or value < 1:
                raise InvalidArgumentError(parameter, value, "an int of at least 1")
        self.name = name
        self.store = store
        self.handle = handle
        self.page_size = page_size
        self.checkpoint_every = checkpoint_every
        self.tracking_stream = check_stream_name(f"process-{name}")
        self._loaded: tuple[int, int] | None = None  # (position handled, tracking stream version)

    def position(self) -> int:
        """The global position handled, as stored (0 before the first checkpoint)."""
        return run_sync(self.position_async())

    async def position_async(self) -> int:
        """Asyncio form of :meth:`position`."""
        return (await self._load())[0]

    def run_once(self) -> ProcessStats:
        """Handle one page of events after the stored position; see :meth:`run_once_async`."""
        return run_sync(self.run_once_async())

    async def run_once_async(self) -> ProcessStats:
        """Handle up to ``page_size`` events, each event's output appended with its checkpoint."""
        stats = ProcessStats()
        position, version = self._loaded or await self._load()
        stored = position  # the position the tracking stream holds
        try:
            for recorded in await _io.read_all(self.store, position, self.page_size):
                stats.read += 1
                if recorded.stream != self.tracking_stream:
                    output = await _io.call(self.handle, recorded)
                    if output:
                        appends = [*_checked(output), self._checkpoint(recorded.position, version)]
                        await _io.append_many(self.store, appends)
                        version += 1
                        stored = recorded.position
                        stats.handled += 1
                position = recorded.position
                if position - stored >= self.checkpoint_every:
                    await _io.append_many(self.store, [self._checkpoint(position, version)])
                    version += 1
                    stored = position
        except MultiStreamConflictError as exc:
            self._loaded = None  # whatever won, the store knows: start again from it
            if self.tracking_stream not in exc.streams:
                raise  # the handler's own expectation on an output stream failed
            stats.raced = True
            return stats
        except BaseException:
            self._loaded = None  # the append's outcome may be unknown: reload before going on
            raise
        self._loaded = (position, version)
        return stats

    def run_until_caught_up(self) -> int:
        """Run pages until one reads nothing new; the number of events handled."""
        return run_sync(self.run_until_caught_up_async())

    async def run_until_caught_up_async(self) -> int:
        """Asyncio form of :meth:`run_until_caught_up`."""
        handled = 0
        while True:
            stats = await self.run_once_async()
            handled += stats.handled
            if stats.read == 0 and not stats.raced:
                return handled

    def _checkpoint(self, position: int, version: int) -> StreamAppend:
        return StreamAppend(self.tracking_stream, [NewEvent(ProcessCheckpoint(position))], version)

    async def _load(self) -> tuple[int, int]:
        version = await _io.stream_version(self.store, self.tracking_stream)
        if version == NO_STREAM:
            self._loaded = (0, NO_STREAM)
        else:
            (last,) = await _io.read_stream(self.store, self.tracking_stream, version)
            self._loaded = (int(last.event.position), version)
        return self._loaded


def _checked(output: Any) -> list[StreamAppend]:
    if not isinstance(output, list | tuple) or not all(type(a) is StreamAppend for a in output):
        raise InvalidArgumentError("output", output, "a handler returns a list of StreamAppend, or None")
    return list(output)
