"""The EventStore protocol every backend implements, and the checks they share.

A stream holds events at versions 0, 1, 2, … with no gaps. Every stored event also has a
global *position*: positions strictly increase in commit order (they need not be dense),
and a reader that has seen position p never later finds an event at a position <= p.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from orchestrix.core.errors import (
    ConcurrencyError,
    DuplicateEventIdError,
    EmptyBatchError,
    InvalidEventIdError,
    InvalidExpectedVersionError,
    InvalidStreamNameError,
)
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent, slots_constructor

__all__ = [
    "ANY",
    "MAX_STREAM_NAME_BYTES",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "AsyncStoreMixin",
    "EventStore",
    "check_expected_version",
    "find_replayed_append",
    "to_new_events",
    "validate_expected_version",
    "validate_stream_name",
]

NO_STREAM = -1
"""Expected version: the stream must not exist yet."""
ANY = -2
"""Expected version: append whatever the stream's state."""
STREAM_EXISTS = -4
"""Expected version: the stream must already have at least one event."""

MAX_STREAM_NAME_BYTES = 255


@attrs.frozen
class AppendResult:
    """Where one append put its events: their stream versions and global positions."""

    stream: str
    versions: tuple[int, ...]
    positions: tuple[int, ...]

    @property
    def last_version(self) -> int:
        """The stream's version after the append."""
        return self.versions[-1]

    @property
    def last_position(self) -> int:
        """The global position of the last event written."""
        return self.positions[-1]


new_append_result: Callable[[str, tuple[int, ...], tuple[int, ...]], AppendResult] = slots_constructor(
    AppendResult, ("s", (0,), (1,))
)
"""``AppendResult(stream, versions, positions)``, faster: a store makes one per append."""


@runtime_checkable
class EventStore(Protocol):
    """What every orchestrix store provides; the contract suite checks each promise."""

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events, or raise ConcurrencyError and write none."""
        ...

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        """Yield the stream's events from ``from_version`` on, lazily; nothing for a missing stream."""
        ...

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        """Yield every event with a position greater than ``after``, in global order."""
        ...

    def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, or NO_STREAM (-1) if it has none."""
        ...

    def last_position(self) -> int:
        """The highest committed global position (0 for an empty store)."""
        ...

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event with position > ``after`` is visible or ``timeout`` passes."""
        ...

    def close(self) -> None:
        """Release files, locks and connections."""
        ...

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of :meth:`append`."""
        ...

    def read_stream_async(self, stream: str, from_version: int = 0) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_stream`."""
        ...

    def read_all_async(self, after: int = 0, limit: int | None = None) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_all`."""
        ...

    async def stream_version_async(self, stream: str) -> int:
        """Asyncio form of :meth:`stream_version`."""
        ...

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`."""
        ...


# -- checks every backend shares -----------------------------------------------------------


def validate_stream_name(stream: object) -> str:
    """Return ``stream`` if it is a usable stream name, else raise InvalidStreamNameError."""
    if not isinstance(stream, str):
        raise InvalidStreamNameError(stream, f"must be str, not {type(stream).__name__}")
    if not stream:
        raise InvalidStreamNameError(stream, "must not be empty")
    if len(stream) > MAX_STREAM_NAME_BYTES or len(_utf8(stream)) > MAX_STREAM_NAME_BYTES:
        raise InvalidStreamNameError(stream, f"longer than {MAX_STREAM_NAME_BYTES} UTF-8 bytes")
    if not stream.isprintable():
        raise InvalidStreamNameError(stream, "must not contain NUL or other control characters")
    return stream


def _utf8(stream: str) -> bytes:
    try:
        return stream.encode()
    except UnicodeEncodeError:
        raise InvalidStreamNameError(stream, "not encodable as UTF-8") from None


def validate_expected_version(expected_version: object) -> int:
    """Return ``expected_version`` if it is a version or a named mode."""
    if type(expected_version) is not int or (
        expected_version < 0 and expected_version not in (NO_STREAM, ANY, STREAM_EXISTS)
    ):
        raise InvalidExpectedVersionError(expected_version)
    return expected_version


def check_expected_version(stream: str, expected_version: int, current: int) -> None:
    """Raise ConcurrencyError unless a stream at ``current`` satisfies ``expected_version``."""
    if expected_version == ANY:
        return
    if expected_version == STREAM_EXISTS:
        if current == NO_STREAM:
            raise ConcurrencyError(stream, expected_version, current)
        return
    if expected_version != current:
        raise ConcurrencyError(stream, expected_version, current)


def to_new_events(stream: str, events: Iterable[NewEvent | Any]) -> list[NewEvent]:
    """Wrap bare domain events in NewEvent (with fresh ids); refuse an empty batch, an id that is
    no UUID, or a repeated id."""
    if type(events) is list and len(events) == 1 and type(events[0]) is NewEvent:
        batch = [events[0]]  # what a repository saves, most of the time
    else:
        batch = [e if isinstance(e, NewEvent) else NewEvent(e) for e in events]
    for new in batch:
        if type(new.event_id) is not _UUID or new.correlation_id is not None or new.causation_id is not None:
            _check_ids(stream, new)
    if len(batch) > 1:
        seen: set[uuid.UUID] = set()
        for e in batch:
            if e.event_id in seen:
                raise DuplicateEventIdError(stream, e.event_id, "appears twice in one batch")
            seen.add(e.event_id)
    if not batch:
        raise EmptyBatchError(stream)
    return batch


_UUID = uuid.UUID


def _check_ids(stream: str, new: NewEvent) -> None:
    """Refuse ids that are not UUIDs: each store would fail on them in its own way, or keep them."""
    if not isinstance(new.event_id, _UUID):
        raise InvalidEventIdError(stream, "event_id", new.event_id)
    for field in ("correlation_id", "causation_id"):
        value = getattr(new, field)
        if value is not None and not isinstance(value, _UUID):
            raise InvalidEventIdError(stream, field, value)


def find_replayed_append(
    stream: str,
    batch: Sequence[NewEvent],
    lookup: Callable[[uuid.UUID], tuple[str, int, int] | None],
) -> AppendResult | None:
    """Detect a re-append of a batch that is already stored.

    ``lookup`` maps an event id to the ``(stream, version, position)`` it is stored at, or
    None. Returns the original result if every id is stored, in the same stream, at
    consecutive versions; None if no id is stored; raises DuplicateEventIdError otherwise,
    because a half-matching batch is a bug in the caller, not a retry.
    """
    places = [lookup(e.event_id) for e in batch]
    if all(p is None for p in places):
        return None
    for event, place in zip(batch, places, strict=True):
        if place is None:
            raise DuplicateEventIdError(
                stream, event.event_id, "is new, but other ids of this batch are already stored"
            )
        if place[0] != stream:
            raise DuplicateEventIdError(stream, event.event_id, f"is already stored in stream {place[0]!r}")
    versions = tuple(p[1] for p in places)  # type: ignore[index]
    if any(b != a + 1 for a, b in itertools.pairwise(versions)):
        raise DuplicateEventIdError(stream, batch[0].event_id, "is stored, but not as this batch")
    return AppendResult(stream, versions, tuple(p[2] for p in places))  # type: ignore[index]


# -- asyncio forms for stores whose sync calls block ----------------------------------------


class AsyncStoreMixin:
    """Asyncio forms built on the sync methods, run in worker threads in pages.

    The event loop never waits on a file or a lock: each call runs in ``asyncio.to_thread``.
    Iteration fetches ``page_size`` events per thread hop, so memory stays bounded.
    """

    page_size = 500

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of ``append``."""
        return await asyncio.to_thread(self.append, stream, events, expected_version)  # type: ignore[attr-defined]

    async def read_stream_async(self, stream: str, from_version: int = 0) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of ``read_stream``."""
        version = from_version
        while True:
            page = await asyncio.to_thread(_take, self.read_stream(stream, version), self.page_size)  # type: ignore[attr-defined]
            for event in page:
                yield event
            if len(page) < self.page_size:
                return
            version = page[-1].version + 1

    async def read_all_async(self, after: int = 0, limit: int | None = None) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of ``read_all``."""
        remaining = limit
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page = await asyncio.to_thread(_take, self.read_all(after, size), size)  # type: ignore[attr-defined]
            for event in page:
                yield event
            if len(page) < size:
                return
            after = page[-1].position
            if remaining is not None:
                remaining -= len(page)

    async def stream_version_async(self, stream: str) -> int:
        """Asyncio form of ``stream_version``."""
        return await asyncio.to_thread(self.stream_version, stream)  # type: ignore[attr-defined]

    async def last_position_async(self) -> int:
        """Asyncio form of ``last_position``."""
        return await asyncio.to_thread(self.last_position)  # type: ignore[attr-defined]

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of ``wait_for_events``; waits in short slices so cancellation is prompt."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if await asyncio.to_thread(self.wait_for_events, after, max(0.0, min(remaining, 0.25))):  # type: ignore[attr-defined]
                return True
            if remaining <= 0.25:
                return False


def _take(iterator: Iterator[RecordedEvent], n: int) -> list[RecordedEvent]:
    page = []
    try:
        for event in iterator:
            page.append(event)
            if len(page) >= n:
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return page
