"""The EventStore protocol every backend implements, and the rules for names and versions.

A stream holds events at versions 0, 1, 2, … with no gaps. Every stored event also has a
global *position*: positions strictly increase in commit order (they need not be dense),
and a reader that has seen position p never later finds an event at a position <= p.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import attrs

from orchestrix.core.errors import InvalidExpectedVersionError, InvalidStreamNameError
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = [
    "ANY",
    "MAX_POSITION",
    "MAX_STREAM_NAME_BYTES",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "EventImport",
    "EventStore",
    "ImportedEvent",
    "StreamAppend",
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
"""The longest stream name, in UTF-8 bytes."""
MAX_POSITION = 2**63 - 1
"""The largest version, position or checkpoint any store accepts (PostgreSQL's ``bigint``)."""


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


@attrs.frozen
class StreamAppend:
    """One stream's part of a multi-stream append (:meth:`EventStore.append_many`): its events,
    and the version the stream must be at, as for :meth:`EventStore.append`."""

    stream: str
    events: Sequence[NewEvent | Any]
    expected_version: int = ANY


@runtime_checkable
class EventStore(Protocol):
    """What every orchestrix store provides; the contract suite checks each promise.

    Every call checks its arguments first (see the table in the stores' guide) and raises an
    :class:`~orchestrix.core.errors.InvalidArgumentError` naming the parameter, storing nothing.
    A store is a context manager that closes itself on exit.
    """

    checks_fences: bool
    """Whether appends made under a fence (:func:`~orchestrix.core.eventsourcing.fencing.fenced`)
    are checked; the stores shipped with orchestrix all check them."""

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events, or raise ConcurrencyError and write none."""
        ...

    def append_many(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Append to several streams at once: all of it, or raise and write none.

        Each stream's expected version is checked as :meth:`append` checks it; if any fails,
        :class:`~orchestrix.core.errors.MultiStreamConflictError` names every stream that failed.
        The events take consecutive global positions, in the order given. A repeat of a stored
        multi-stream append (the same event ids) returns the original results. Returns one
        AppendResult per StreamAppend, in order.
        """
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

    def __enter__(self) -> Self:
        """The store itself."""
        ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None, /
    ) -> None:
        """Close the store."""
        ...

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of :meth:`append`."""
        ...

    async def append_many_async(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`append_many`."""
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

    async def last_position_async(self) -> int:
        """Asyncio form of :meth:`last_position`."""
        ...

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`."""
        ...


@attrs.frozen
class ImportedEvent:
    """An event stored elsewhere, to be stored again as it was: at its version, with its id and
    its original ``recorded_at`` (see :class:`EventImport`)."""

    stream: str
    version: int
    event: Any
    event_id: uuid.UUID
    recorded_at: datetime
    """When the event was first stored: a timezone-aware datetime (kept to the microsecond)."""
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None


@runtime_checkable
class EventImport(Protocol):
    """A store that can take events recorded elsewhere, keeping their times (``orchestrix copy``).

    :meth:`import_events` is an ``append_many`` whose events keep their ``recorded_at``: each
    stream's events come as one run of consecutive versions continuing the stream (its first
    event's version is the expected version plus one), and all are stored, in the order given,
    or none. Importing the same events again returns where they are, storing nothing. A naive
    ``recorded_at`` raises InvalidRecordedAtError, versions out of order ImportOrderError, a
    stream that is not where its first version says MultiStreamConflictError.
    """

    def import_events(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Store ``events`` with their versions, ids and times; one result per stream run."""
        ...

    async def import_events_async(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`import_events`."""
        ...


# -- checks every backend shares -----------------------------------------------------------


def validate_stream_name(stream: object) -> str:
    """Return ``stream`` if it is a usable stream name, else raise InvalidStreamNameError."""
    if not isinstance(stream, str):
        raise InvalidStreamNameError(stream, f"must be str, not {type(stream).__name__}")
    if not stream:
        raise InvalidStreamNameError(stream, "must not be empty")
    # An ASCII name is as long in UTF-8 as in characters (and isascii() is O(1)): only other
    # names pay for encoding.
    if len(stream) > MAX_STREAM_NAME_BYTES or (
        not stream.isascii() and len(_utf8(stream)) > MAX_STREAM_NAME_BYTES
    ):
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
        expected_version > MAX_POSITION
        or (expected_version < 0 and expected_version not in (NO_STREAM, ANY, STREAM_EXISTS))
    ):
        raise InvalidExpectedVersionError(expected_version)
    return expected_version
