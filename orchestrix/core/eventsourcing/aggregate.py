"""Aggregates and the repository that loads and saves them through an EventStore.

An aggregate's command methods check the rules and raise events; its state changes only
in apply handlers (``@applies(EventType)``), so replaying the stored events rebuilds
exactly the same state. Dispatch from event type to handler is resolved once per class.
"""

from __future__ import annotations

import collections
import functools
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar, cast

from orchestrix._speedups import new_uuid4
from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import (
    AggregateError,
    AggregateNotFoundError,
    ConcurrencyError,
    DomainError,
    InvalidArgumentError,
    UnhandledEventError,
)
from orchestrix.core.eventsourcing._backend import new_event
from orchestrix.core.eventsourcing.keys import KeyRefused
from orchestrix.core.eventsourcing.store import NO_STREAM, AppendResult, EventStore, StreamAppend
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
        self._refusals: dict[str, KeyRefused] = {}

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
        self._pending.append(new_event(event, new_uuid4() if event_id is None else event_id, None, None))

    def _apply(self, event: Any) -> None:
        handler = self._appliers.get(type(event))
        if handler is None:
            raise UnhandledEventError(type(self), type(event))
        handler(self, event)
        self.version += 1

    @applies(KeyRefused)
    def _key_refused(self, event: KeyRefused) -> None:
        self._refusals[event.key] = event

    def _replay(self, recorded: RecordedEvent) -> None:
        if recorded.version != self.version + 1:
            raise AggregateError(
                f"{type(self).__name__} {self.id!r}: event at version {recorded.version} "
                f"follows version {self.version}"
            )
        self._apply(recorded.event)


class AggregateRepository:
    """Loads aggregates by replaying their streams and saves their pending events.

    :meth:`update` keeps up to ``cache_size`` aggregates it has just saved, so that the next
    update of the same aggregate replays only the events stored since (usually none: one cheap
    ``stream_version`` check). An aggregate is *taken out* of the cache while an update works on
    it, so two updates never share one, and it goes back only after a successful save; anything
    that goes wrong drops it. ``load`` always replays the whole stream and returns an aggregate
    the caller owns. ``cache_size=0`` turns the cache off.
    """

    def __init__(self, event_store: EventStore, *, cache_size: int = 1024) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be 0 (no cache) or more")
        self.event_store = event_store
        self.cache_size = cache_size
        self._idle: collections.OrderedDict[str, AggregateRoot] = collections.OrderedDict()
        self._idle_lock = threading.Lock()

    def load(self, cls: type[A], aggregate_id: str) -> A:
        """Rebuild the aggregate from its stream; raise AggregateNotFoundError if it has none."""
        return run_sync(self.load_async(cls, aggregate_id))

    async def load_async(self, cls: type[A], aggregate_id: str) -> A:
        """Asyncio form of :meth:`load`."""
        stream = cls.stream_name(aggregate_id)
        aggregate = cls()
        aggregate.id = aggregate_id
        for recorded in await _io.read_stream(self.event_store, stream):
            aggregate._replay(recorded)
        if aggregate.version == NO_STREAM:
            raise AggregateNotFoundError(cls, aggregate_id, stream)
        return aggregate

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
        return run_sync(self.save_async(aggregate, correlation_id=correlation_id, causation_id=causation_id))

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
        result: AppendResult = await _io.append(self.event_store, stream, batch, expected)
        aggregate._pending.clear()
        return result

    def save_all(
        self,
        aggregates: Sequence[AggregateRoot],
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
    ) -> tuple[AppendResult | None, ...]:
        """Save several aggregates as one unit: all their pending events are stored, or none.

        One multi-stream append (``EventStore.append_many``) carries every aggregate's events at
        the version it was loaded at; if any stream moved on, MultiStreamConflictError names each
        such stream and nothing is stored. Returns one result per aggregate, in order (None for
        an aggregate with nothing to save).
        """
        return run_sync(
            self.save_all_async(aggregates, correlation_id=correlation_id, causation_id=causation_id)
        )

    async def save_all_async(
        self,
        aggregates: Sequence[AggregateRoot],
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
    ) -> tuple[AppendResult | None, ...]:
        """Asyncio form of :meth:`save_all`."""
        if not isinstance(aggregates, list | tuple):
            raise InvalidArgumentError("aggregates", aggregates, "a list or tuple of aggregates")
        prepared = [_prepare(a, correlation_id, causation_id) for a in aggregates]
        appends = [StreamAppend(stream, batch, expected) for stream, batch, expected in prepared if batch]
        if not appends:
            return tuple(None for _ in aggregates)
        stored = iter(await _io.append_many(self.event_store, appends))
        results = tuple(next(stored) if batch else None for _, batch, _ in prepared)
        for aggregate in aggregates:
            aggregate._pending.clear()
        return results

    def update(
        self,
        cls: type[A],
        aggregate_id: str,
        decide: Callable[[A], T],
        *,
        attempts: int = 5,
    ) -> T:
        """Load, run ``decide`` on the aggregate, save; on ConcurrencyError reload and retry.

        If ``decide`` refuses (raises a DomainError) after recording the refusal of a keyed
        command (:func:`~orchestrix.core.eventsourcing.keys.decided_once`), the record is saved
        before the refusal is raised, so the key stays refused.

        ``decide`` gets an aggregate that only this call uses (from the cache, caught up, or
        replayed); it must not keep it after returning. What it returns is returned.
        """
        return run_sync(self.update_async(cls, aggregate_id, decide, attempts=attempts))

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
            aggregate = self._take(cls, aggregate_id)
            if aggregate is None or not await self._caught_up(aggregate):
                aggregate = await self.load_async(cls, aggregate_id)
            try:
                outcome = decide(aggregate)
            except DomainError:
                if _records_refusal(aggregate):
                    self._put_back(aggregate, await self.save_async(aggregate))
                raise
            self._put_back(aggregate, await self.save_async(aggregate))
            return outcome

        return await retry_on_conflict_async(once, attempts=attempts)

    # -- the cache of idle aggregates ---------------------------------------------------------

    def _take(self, cls: type[A], aggregate_id: str) -> A | None:
        """Take the cached aggregate of this stream out of the cache, if there is one."""
        if not self.cache_size:
            return None
        with self._idle_lock:
            aggregate = self._idle.pop(cls.stream_name(aggregate_id), None)
        if aggregate is None or type(aggregate) is not cls:
            return None
        return aggregate if aggregate.id == aggregate_id else None

    def _put_back(self, aggregate: AggregateRoot, saved: AppendResult | None) -> None:
        if not self.cache_size or aggregate._pending or not aggregate.id:
            return
        if saved is not None and saved.versions[-1] != aggregate.version:
            # The store found the events already stored (an idempotent repeat) and wrote nothing,
            # but this aggregate applied them once more: its state is not the stream's.
            return
        stream = type(aggregate).stream_name(aggregate.id)
        with self._idle_lock:
            self._idle[stream] = aggregate
            self._idle.move_to_end(stream)
            while len(self._idle) > self.cache_size:
                self._idle.popitem(last=False)

    async def _caught_up(self, aggregate: AggregateRoot) -> bool:
        """Replay what was stored after the cached version; False if the stream is not as cached."""
        stream = type(aggregate).stream_name(aggregate.id or "")
        current = await _io.stream_version(self.event_store, stream)
        if current == aggregate.version:
            return True
        if current < aggregate.version:
            return False  # the store lost events this aggregate has seen: start from its stream
        for recorded in await _io.read_stream(self.event_store, stream, aggregate.version + 1):
            aggregate._replay(recorded)
        return True


def retry_on_conflict(operation: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``operation`` (which must reload what it changes) until it wins, at most ``attempts`` times.

    The first retry is immediate; later ones wait a short random time (see :func:`_conflict_backoff`),
    so that writers who keep colliding on one stream fall out of step instead of colliding again.
    """
    # _io.call returns Any (it takes user code of either form): the result is the operation's T.
    return run_sync(
        retry_on_conflict_async(
            cast("Callable[[], Awaitable[T]]", functools.partial(_io.call, operation)), attempts=attempts
        )
    )


async def retry_on_conflict_async(operation: Callable[[], Awaitable[T]], *, attempts: int = 5) -> T:
    """Asyncio form of :func:`retry_on_conflict`; it waits without blocking the loop."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except ConcurrencyError:
            if attempt == attempts:
                raise
        await _io.sleep(_conflict_backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _conflict_backoff(failed_attempts: int) -> float:
    """Seconds to wait before the next attempt: 0 after the first conflict, then up to 1, 2, 4 ... 50 ms."""
    if failed_attempts <= 1:
        return 0.0
    return random.uniform(0, min(0.05, 0.001 * 2 ** (failed_attempts - 2)))


def _records_refusal(aggregate: AggregateRoot) -> bool:
    """True if a refused decision left exactly its key's refusal record to store (see keys.py)."""
    pending = aggregate._pending
    return bool(pending) and all(type(new.event) is KeyRefused for new in pending)


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
