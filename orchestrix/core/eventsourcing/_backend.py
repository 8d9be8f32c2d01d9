"""What the stores share behind the EventStore protocol: private, for orchestrix's own backends.

The protocol and its public rules live in :mod:`orchestrix.core.eventsourcing.store`; the
argument checks in :mod:`orchestrix.core._checks`. Here: turning an append's events into
``NewEvent`` s, telling a retried append from a conflicting one, the expected-version check, the
fast constructors of the objects a store makes per event, and asyncio forms for a store whose
sync calls block.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrix._speedups import slots_constructor
from orchestrix.core._checks import check_after, check_appends, check_events, check_limit, check_timeout
from orchestrix.core.errors import (
    ConcurrencyError,
    DuplicateEventIdError,
    EmptyBatchError,
    ImportOrderError,
    InvalidArgumentError,
    InvalidEventIdError,
    InvalidRecordedAtError,
    MultiStreamConflictError,
)
from orchestrix.core.eventsourcing.store import (
    ANY,
    MAX_POSITION,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ImportedEvent,
    StreamAppend,
)
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = [
    "AsyncStoreMixin",
    "Part",
    "check_expected_version",
    "check_expected_versions",
    "find_replayed_append",
    "find_replayed_many",
    "to_import_parts",
    "new_append_result",
    "new_event",
    "new_recorded",
    "to_new_events",
    "to_parts",
]

new_append_result: Callable[[str, tuple[int, ...], tuple[int, ...]], AppendResult] = slots_constructor(
    AppendResult, ("s", (0,), (1,))
)
"""``AppendResult(stream, versions, positions)``, faster: a store makes one per append."""

new_event: Callable[[Any, uuid.UUID, uuid.UUID | None, uuid.UUID | None], NewEvent] = slots_constructor(
    NewEvent, (None, uuid.UUID(int=1), None, uuid.UUID(int=2))
)
"""``NewEvent(event, event_id, correlation_id, causation_id)``, all four given, faster."""

new_recorded: Callable[..., RecordedEvent] = slots_constructor(
    RecordedEvent, (uuid.UUID(int=1), "s", 0, 1, datetime(1970, 1, 1, tzinfo=UTC), "T", None, None, None)
)
"""``RecordedEvent(...)`` with every field given, positionally, faster."""


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


Part = tuple[str, list[NewEvent], int]
"""One stream's share of a multi-stream append, checked: (stream, events, expected version)."""


def to_parts(appends: Sequence[StreamAppend]) -> list[Part]:
    """Check a multi-stream append as a whole and per stream (see ``check_appends``), wrap bare
    events, and refuse an event id that appears in two of its streams."""
    check_appends(appends)
    parts = [(a.stream, to_new_events(a.stream, a.events), a.expected_version) for a in appends]
    if len(parts) > 1:
        seen: set[uuid.UUID] = set()
        for stream, batch, _ in parts:
            for e in batch:
                if e.event_id in seen:
                    raise DuplicateEventIdError(
                        stream, e.event_id, "appears twice in one multi-stream append"
                    )
                seen.add(e.event_id)
    return parts


def check_expected_versions(parts: Sequence[Part], current: Callable[[str], int]) -> None:
    """Raise MultiStreamConflictError naming every stream whose version (``current``) fails its
    expectation; return if all pass."""
    conflicts = []
    for stream, _, expected in parts:
        try:
            check_expected_version(stream, expected, current(stream))
        except ConcurrencyError as exc:
            conflicts.append(exc)
    if conflicts:
        raise MultiStreamConflictError(conflicts)


def find_replayed_many(
    parts: Sequence[Part], lookup: Callable[[uuid.UUID], tuple[str, int, int] | None]
) -> tuple[AppendResult, ...] | None:
    """Detect a re-append of a multi-stream append that is already stored (see
    :func:`find_replayed_append`): the original results if every stream's batch is stored, None
    if none is, DuplicateEventIdError if only some are."""
    results = [find_replayed_append(stream, batch, lookup) for stream, batch, _ in parts]
    if all(r is None for r in results):
        return None
    for (stream, batch, _), result in zip(parts, results, strict=True):
        if result is None:
            raise DuplicateEventIdError(
                stream, batch[0].event_id, "is new, but other streams of this multi-stream append are stored"
            )
    return tuple(results)  # type: ignore[arg-type]


def to_new_events(stream: str, events: Sequence[NewEvent | Any]) -> list[NewEvent]:
    """Wrap bare domain events in NewEvent (with fresh ids); refuse what is not a list or tuple
    of events, an empty batch, an id that is no UUID, or a repeated id."""
    check_events(events)
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
    if len(batch) == 1 and lookup(batch[0].event_id) is None:
        return None  # the common case, decided without building lists
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
    return new_append_result(stream, versions, tuple(p[2] for p in places))  # type: ignore[index]


# -- importing events with their times (EventImport) -------------------------------------------


def to_import_parts(events: Sequence[ImportedEvent]) -> tuple[list[Part], list[list[datetime]]]:
    """Check an import as every store does, and turn it into an ``append_many``'s parts (each
    expecting its stream at the version before its first event) and each part's times (UTC).

    Refuses what is not a non-empty list or tuple of ImportedEvent, a naive ``recorded_at``
    (InvalidRecordedAtError), a stream whose events are not one run of consecutive versions
    (ImportOrderError), and whatever ``append_many`` refuses (bad names, ids, duplicates).
    """
    if not isinstance(events, list | tuple):
        raise InvalidArgumentError("events", events, "a list or tuple of ImportedEvent")
    if not events:
        raise InvalidArgumentError("events", events, "at least one ImportedEvent")
    runs: list[tuple[str, int, list[NewEvent], list[datetime]]] = []
    seen: set[str] = set()
    previous = NO_STREAM
    for e in events:
        if type(e) is not ImportedEvent:
            raise InvalidArgumentError("events", e, "an ImportedEvent")
        stream, version, at = e.stream, e.version, e.recorded_at
        if type(version) is not int or not 0 <= version <= MAX_POSITION:
            raise InvalidArgumentError("version", version, f"an int from 0 to {MAX_POSITION}")
        if not isinstance(at, datetime) or at.utcoffset() is None:
            raise InvalidRecordedAtError(stream, version, at)
        if not runs or runs[-1][0] != stream:
            if stream in seen:
                raise ImportOrderError(
                    stream, "its events come in two runs; import the second run in a later call"
                )
            seen.add(stream)
            runs.append((stream, version - 1, [], []))
        elif version != previous + 1:
            raise ImportOrderError(stream, f"version {version} follows version {previous}")
        previous = version
        runs[-1][2].append(NewEvent(e.event, e.event_id, e.correlation_id, e.causation_id))
        runs[-1][3].append(at.astimezone(UTC))
    parts = to_parts([StreamAppend(stream, batch, expected) for stream, expected, batch, _ in runs])
    return parts, [times for _, _, _, times in runs]


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

    async def append_many_async(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Asyncio form of ``append_many``."""
        return await asyncio.to_thread(self.append_many, appends)  # type: ignore[attr-defined]

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
        check_after(after)
        remaining = check_limit(limit)
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
        check_after(after)
        check_timeout(timeout)
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
