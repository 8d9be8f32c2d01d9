"""Aggregates and the repository that loads and saves them through an EventStore.

An aggregate's command methods check the rules and raise events; its state changes only
in apply handlers (``@applies(EventType)``), so replaying the stored events rebuilds
exactly the same state. Dispatch from event type to handler is resolved once per class.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from orchestrix.core.errors import (
    AggregateError,
    AggregateNotFoundError,
    ConcurrencyError,
    UnhandledEventError,
)
from orchestrix.core.eventsourcing.store import NO_STREAM, AppendResult, EventStore
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = [
    "AggregateRepository",
    "AggregateRoot",
    "applies",
    "retry_on_conflict",
    "retry_on_conflict_async",
]

A = TypeVar("A", bound="AggregateRoot")
T = TypeVar("T")
_Handler = Callable[[Any, Any], None]


def applies(*event_types: type) -> Callable[[_Handler], _Handler]:
    """Mark a method as the apply handler for one or more event types."""

    def mark(func: _Handler) -> _Handler:
        func.__orchestrix_applies__ = event_types  # type: ignore[attr-defined]
        return func

    return mark


class AggregateRoot:
    """Base class of event-sourced aggregates.

    Subclasses define command methods that call :meth:`raise_event` and apply handlers
    decorated with :func:`applies`. ``version`` is the stream version of the last event
    applied (-1 for a new aggregate); pending events are those raised since the last save.
    """

    category: ClassVar[str] = ""
    """Prefix of the aggregate's stream name; defaults to the class name."""

    _appliers: ClassVar[dict[type, _Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("category"):
            cls.category = cls.__name__
        appliers: dict[type, _Handler] = {}
        for klass in reversed(cls.__mro__):
            for member in vars(klass).values():
                for event_type in getattr(member, "__orchestrix_applies__", ()):
                    appliers[event_type] = member
        cls._appliers = appliers

    def __init__(self, id: str | None = None) -> None:
        self.id: str | None = id
        self.version: int = NO_STREAM
        self._pending: list[NewEvent] = []

    @classmethod
    def stream_name(cls, aggregate_id: str) -> str:
        """The stream that holds the events of the aggregate with this id."""
        return f"{cls.category}-{aggregate_id}"

    @property
    def pending_events(self) -> tuple[NewEvent, ...]:
        """Events raised since the aggregate was loaded or last saved."""
        return tuple(self._pending)

    def raise_event(self, event: Any, *, event_id: uuid.UUID | None = None) -> None:
        """Apply ``event`` to this aggregate and queue it for the next save.

        Pass a deterministic ``event_id`` (for example derived from an idempotency key) to make
        a retried save of the same decision a no-op in the store.
        """
        self._apply(event)
        self._pending.append(NewEvent(event) if event_id is None else NewEvent(event, event_id))

    def _apply(self, event: Any) -> None:
        handler = self._appliers.get(type(event))
        if handler is None:
            raise UnhandledEventError(type(self), type(event))
        handler(self, event)
        self.version += 1

    def _replay(self, recorded: RecordedEvent) -> None:
        if recorded.version != self.version + 1:
            raise AggregateError(
                f"{type(self).__name__} {self.id!r}: event at version {recorded.version} "
                f"follows version {self.version}"
            )
        self._apply(recorded.event)


class AggregateRepository:
    """Loads aggregates by replaying their streams and saves their pending events."""

    def __init__(self, event_store: EventStore) -> None:
        self.event_store = event_store

    def load(self, cls: type[A], aggregate_id: str) -> A:
        """Rebuild the aggregate from its stream; raise AggregateNotFoundError if it has none."""
        stream = cls.stream_name(aggregate_id)
        aggregate = cls()
        aggregate.id = aggregate_id
        for recorded in self.event_store.read_stream(stream):
            aggregate._replay(recorded)
        return _found(aggregate, cls, aggregate_id, stream)

    async def load_async(self, cls: type[A], aggregate_id: str) -> A:
        """Asyncio form of :meth:`load`."""
        stream = cls.stream_name(aggregate_id)
        aggregate = cls()
        aggregate.id = aggregate_id
        async for recorded in self.event_store.read_stream_async(stream):
            aggregate._replay(recorded)
        return _found(aggregate, cls, aggregate_id, stream)

    def save(
        self,
        aggregate: AggregateRoot,
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
    ) -> AppendResult | None:
        """Append the pending events at the version the aggregate was loaded at.

        Raises ConcurrencyError (and stores nothing) if the stream moved on meanwhile.
        Returns None when there was nothing to save.
        """
        stream, batch, expected = _prepare(aggregate, correlation_id, causation_id)
        if not batch:
            return None
        result = self.event_store.append(stream, batch, expected)
        aggregate._pending.clear()
        return result

    async def save_async(
        self,
        aggregate: AggregateRoot,
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
    ) -> AppendResult | None:
        """Asyncio form of :meth:`save`."""
        stream, batch, expected = _prepare(aggregate, correlation_id, causation_id)
        if not batch:
            return None
        result = await self.event_store.append_async(stream, batch, expected)
        aggregate._pending.clear()
        return result

    def update(
        self,
        cls: type[A],
        aggregate_id: str,
        decide: Callable[[A], T],
        *,
        attempts: int = 5,
    ) -> T:
        """Load, run ``decide`` on the aggregate, save; on ConcurrencyError reload and retry."""

        def once() -> T:
            aggregate = self.load(cls, aggregate_id)
            outcome = decide(aggregate)
            self.save(aggregate)
            return outcome

        return retry_on_conflict(once, attempts=attempts)

    async def update_async(
        self,
        cls: type[A],
        aggregate_id: str,
        decide: Callable[[A], T],
        *,
        attempts: int = 5,
    ) -> T:
        """Asyncio form of :meth:`update`."""

        async def once() -> T:
            aggregate = await self.load_async(cls, aggregate_id)
            outcome = decide(aggregate)
            await self.save_async(aggregate)
            return outcome

        return await retry_on_conflict_async(once, attempts=attempts)


def retry_on_conflict(operation: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``operation`` (which must reload what it changes) until it wins, at most ``attempts`` times."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except ConcurrencyError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def retry_on_conflict_async(operation: Callable[[], Awaitable[T]], *, attempts: int = 5) -> T:
    """Asyncio form of :func:`retry_on_conflict`."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except ConcurrencyError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _found(aggregate: A, cls: type[A], aggregate_id: str, stream: str) -> A:
    if aggregate.version == NO_STREAM:
        raise AggregateNotFoundError(cls, aggregate_id, stream)
    return aggregate


def _prepare(
    aggregate: AggregateRoot, correlation_id: uuid.UUID | None, causation_id: uuid.UUID | None
) -> tuple[str, list[NewEvent], int]:
    if not aggregate._pending:
        return "", [], NO_STREAM
    if not aggregate.id:
        raise AggregateError(f"{type(aggregate).__name__} has no id; set it in its first apply handler")
    batch = aggregate._pending
    if correlation_id is not None or causation_id is not None:
        batch = [
            NewEvent(
                e.event,
                e.event_id,
                e.correlation_id or correlation_id,
                e.causation_id or causation_id,
            )
            for e in batch
        ]
    expected = aggregate.version - len(aggregate._pending)
    return type(aggregate).stream_name(aggregate.id), list(batch), expected
