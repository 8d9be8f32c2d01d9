"""The in-process event store: the simplest correct store, and the reference for the others."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from orchestrix.core._checks import (
    check_after,
    check_expected_version_arg,
    check_from_version,
    check_limit,
    check_stream_name,
    check_timeout,
)
from orchestrix.core.errors import FencedError, StoreClosedError
from orchestrix.core.eventsourcing._backend import (
    Part,
    check_expected_version,
    check_expected_versions,
    find_replayed_append,
    find_replayed_many,
    new_append_result,
    new_recorded,
    to_import_parts,
    to_new_events,
    to_parts,
)
from orchestrix.core.eventsourcing.fencing import Fence, current_fence
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, AppendResult, ImportedEvent, StreamAppend
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer, StructuralSerializer
from orchestrix.infrastructure.memory.snapshot import InMemorySnapshotStore

__all__ = ["InMemoryEventStore"]


class InMemoryEventStore:
    """A thread-safe event store in memory.

    Without a ``serializer``, events are kept as objects, and each is first checked field by
    field as the durable stores' encoding checks it, so what they refuse is refused here too,
    with the same ``SerializationError``: an object that is not an attrs class, a float where a
    ``Decimal`` belongs, NaN, text that is not valid Unicode, a field type no store can keep.
    The type of each event need not be registered anywhere (see
    :class:`~orchestrix.core.messaging.serializer.StructuralSerializer`).

    Pass your ``serializer`` to have every event encoded on append and decoded on read, exactly
    as the durable stores do: tests then also catch a type you forgot to register, and values
    that do not survive a round trip.

    ``check_events=False`` (without a serializer) keeps events unchecked, as any Python objects:
    for prototypes whose events are not storable yet. It changes nothing when a serializer is
    given.
    """

    def __init__(self, serializer: Serializer | None = None, *, check_events: bool = True) -> None:
        self._serializer = serializer
        self._checker = StructuralSerializer() if serializer is None and check_events else None
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: dict[uuid.UUID, tuple[str, int, int]] = {}
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._closed = False
        self._sync_waiters = 0
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._fences: dict[str, int] = {}
        self._snapshots = InMemorySnapshotStore(serializer)

    checks_fences = True
    """Appends made under a fence (:func:`~orchestrix.core.eventsourcing.fencing.fenced`) are checked."""

    def grant_fence(self, name: str) -> Fence:
        """Grant lease ``name`` anew: the returned fence's generation is higher than any before.

        From now on, appends made under an older fence of ``name`` raise FencedError.
        """
        with self._lock:
            generation = self._fences.get(name, 0) + 1
            self._fences[name] = generation
        return Fence(name, generation)

    def fence_generation(self, name: str) -> int | None:
        """The newest generation granted for lease ``name``, or None."""
        with self._lock:
            return self._fences.get(name)

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events, or raise ConcurrencyError and write none."""
        check_stream_name(stream)
        check_expected_version_arg(expected_version)
        batch = to_new_events(stream, events)
        encoded = [self._encode(e.event) for e in batch]
        fence = current_fence()
        # The one-stream case of _commit, spelled out: it is what every repository save runs,
        # and the general path's per-part lists cost it a fifth of its time.
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            replayed = find_replayed_append(stream, batch, self._ids.get)
            if replayed is not None:
                return replayed
            if fence is not None:
                self._check_fence(fence)
            events_in_stream = self._streams.get(stream)
            check_expected_version(
                stream, expected_version, len(events_in_stream) - 1 if events_in_stream else NO_STREAM
            )
            result = self._record(stream, batch, encoded, datetime.now(UTC), None)
            self._announce()
        return result

    def append_many(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Append to several streams at once, all or nothing (see ``EventStore.append_many``)."""
        return self._commit(to_parts(appends))

    def import_events(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Store events recorded elsewhere with their versions, ids and times (see ``EventImport``)."""
        parts, times = to_import_parts(events)
        return self._commit(parts, times)

    def _commit(
        self, parts: list[Part], times: list[list[datetime]] | None = None
    ) -> tuple[AppendResult, ...]:
        """Store every part under one hold of the lock, or raise and store none; ``times`` are
        the parts' events' own ``recorded_at`` (an import), else every event gets now."""
        encoded = [[self._encode(e.event) for e in batch] for _, batch, _ in parts]
        fence = current_fence()
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            replayed = find_replayed_many(parts, self._ids.get)
            if replayed is not None:
                return replayed
            if fence is not None:
                self._check_fence(fence)
            check_expected_versions(parts, self._version)
            now = datetime.now(UTC)
            results = tuple(
                self._record(stream, batch, stream_encoded, now, None if times is None else times[k])
                for k, ((stream, batch, _), stream_encoded) in enumerate(zip(parts, encoded, strict=True))
            )
            self._announce()
        return results

    def _announce(self) -> None:
        """Wake whoever waits for new events (lock held). Condition.notify_all is Python code
        that costs a save a tenth of its time, so it runs only when a thread waits."""
        if self._sync_waiters:
            self._appended.notify_all()
        if self._async_waiters:
            self._wake_async_waiters()

    def _check_fence(self, fence: Fence) -> None:
        """Refuse an append made under a fence that a newer grant replaced (lock held)."""
        if self._fences.get(fence.name) != fence.generation:
            raise FencedError(fence.name, fence.generation, self._fences.get(fence.name))

    def _record(
        self,
        stream: str,
        batch: list[NewEvent],
        encoded: list[tuple[str, Any]],
        now: datetime,
        times: list[datetime] | None,
    ) -> AppendResult:
        """Store one stream's checked events after the log's end, recorded ``now`` or each at its
        own time of ``times`` (an import) (lock held)."""
        events_in_stream = self._streams.setdefault(stream, [])
        current = len(events_in_stream) - 1
        position = len(self._log)
        versions = []
        positions = []
        for j, (new, (type_name, payload)) in enumerate(zip(batch, encoded, strict=True)):
            current += 1
            position += 1
            recorded = new_recorded(
                new.event_id,
                stream,
                current,
                position,
                now if times is None else times[j],
                type_name,
                payload,
                new.correlation_id,
                new.causation_id,
            )
            events_in_stream.append(recorded)
            self._log.append(recorded)
            self._ids[new.event_id] = (stream, current, position)
            versions.append(current)
            positions.append(position)
        return new_append_result(stream, tuple(versions), tuple(positions))

    def _version(self, stream: str) -> int:
        """The stream's last version, or NO_STREAM (lock held)."""
        events = self._streams.get(stream)
        return len(events) - 1 if events else NO_STREAM

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        """Yield the stream's events from ``from_version`` on; nothing for a missing stream."""
        check_stream_name(stream)
        check_from_version(from_version)
        with self._lock:
            events = self._streams.get(stream)
            snapshot = events[from_version:] if events else []
        return map(self._decode, snapshot)

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        """Yield every event with a position greater than ``after``, in global order."""
        check_after(after)
        check_limit(limit)
        with self._lock:
            end = len(self._log) if limit is None else min(len(self._log), after + limit)
            snapshot = self._log[after:end]
        return map(self._decode, snapshot)

    def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, or NO_STREAM (-1)."""
        check_stream_name(stream)
        with self._lock:
            events = self._streams.get(stream)
            return len(events) - 1 if events else NO_STREAM

    def last_position(self) -> int:
        """The highest global position (0 for an empty store)."""
        with self._lock:
            return len(self._log)

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event with position > ``after`` exists or ``timeout`` passes."""
        check_after(after)
        check_timeout(timeout)
        with self._appended:
            self._sync_waiters += 1
            try:
                return self._appended.wait_for(lambda: len(self._log) > after or self._closed, timeout) and (
                    len(self._log) > after
                )
            finally:
                self._sync_waiters -= 1

    # -- asyncio forms: nothing here waits on I/O and the lock is held for microseconds, so the
    # calls run on the loop itself; a hop to a worker thread would cost more than the work.

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of :meth:`append`."""
        return self.append(stream, events, expected_version)

    async def append_many_async(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`append_many`."""
        return self.append_many(appends)

    async def import_events_async(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`import_events`."""
        return self.import_events(events)

    async def read_stream_async(self, stream: str, from_version: int = 0) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_stream`."""
        for recorded in self.read_stream(stream, from_version):
            yield recorded

    async def read_all_async(self, after: int = 0, limit: int | None = None) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_all`."""
        for recorded in self.read_all(after, limit):
            yield recorded

    async def stream_version_async(self, stream: str) -> int:
        """Asyncio form of :meth:`stream_version`."""
        return self.stream_version(stream)

    async def last_position_async(self) -> int:
        """Asyncio form of :meth:`last_position`."""
        return self.last_position()

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`; an append wakes the waiting task directly."""
        check_after(after)
        check_timeout(timeout)
        woken = asyncio.Event()
        waiter = (asyncio.get_running_loop(), woken)
        with self._lock:
            if len(self._log) > after:
                return True
            self._async_waiters.add(waiter)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that lands in the
            # loop turn in which the event is set, and the cancelled task waits on for ever.
            async with asyncio.timeout(timeout):
                await woken.wait()
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)
        return self.last_position() > after

    def _wake_async_waiters(self) -> None:
        if not self._async_waiters:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, woken in self._async_waiters:
            if loop is here:
                woken.set()  # same thread: no need to write to the loop's wake-up pipe
                continue
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                loop.call_soon_threadsafe(woken.set)

    def snapshots(self) -> InMemorySnapshotStore:
        """The SnapshotStore that lives as long as this store, encoding with its serializer."""
        return self._snapshots

    def close(self) -> None:
        """Refuse further appends and wake every waiter."""
        with self._appended:
            self._closed = True
            self._appended.notify_all()
            self._wake_async_waiters()

    def __enter__(self) -> InMemoryEventStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _encode(self, event: Any) -> tuple[str, Any]:
        if self._serializer is not None:
            return self._serializer.encode(event)
        if self._checker is not None:
            return self._checker.check(event), event
        return type(event).__name__, event

    def _decode(self, recorded: RecordedEvent) -> RecordedEvent:
        if self._serializer is None:
            return recorded
        return _with_event(recorded, self._serializer.decode(recorded.event_type, recorded.event))


def _with_event(recorded: RecordedEvent, event: Any) -> RecordedEvent:
    return RecordedEvent(
        recorded.event_id,
        recorded.stream,
        recorded.version,
        recorded.position,
        recorded.recorded_at,
        recorded.event_type,
        event,
        recorded.correlation_id,
        recorded.causation_id,
    )
