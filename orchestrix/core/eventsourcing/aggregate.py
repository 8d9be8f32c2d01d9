"""Aggregates and the repository that loads and saves them through an EventStore.

An aggregate's command methods check the rules and raise events; its state changes only
in apply handlers (``@applies(EventType)``), so replaying the stored events rebuilds
exactly the same state. Dispatch from event type to handler is resolved once per class.
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from orchestrix._speedups import new_uuid4
from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import (
    AggregateError,
    AggregateNotFoundError,
    DomainError,
    InvalidArgumentError,
    SnapshotAheadError,
    SnapshotError,
    UnhandledEventError,
)
from orchestrix.core.eventsourcing._backend import new_event
from orchestrix.core.eventsourcing._conflicts import retry_on_conflict, retry_on_conflict_async
from orchestrix.core.eventsourcing.keys import KeyRefused
from orchestrix.core.eventsourcing.snapshot import Snapshot, SnapshotStore, _load_snapshot, _save_snapshot
from orchestrix.core.eventsourcing.store import NO_STREAM, AppendResult, EventStore, StreamAppend
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = [
    "DEFAULT_SNAPSHOT_EVERY",
    "AggregateRepository",
    "AggregateRoot",
    "applies",
    "retry_on_conflict",
    "retry_on_conflict_async",
]

A = TypeVar("A", bound="AggregateRoot")
T = TypeVar("T")
_Handler = Callable[[Any, Any], None]
_log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY = 100
"""Events between two snapshots of an aggregate class that does not set ``snapshot_every``.

A snapshot is one small durable write (a file replaced and synced, or one row upserted): at one
per 100 events it adds about 1% to the writes, while a load replays at most about 100 events,
a millisecond or two. Protean's default of 10 writes ten times as many snapshots for a load
that was already fast."""


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

    snapshot_every: ClassVar[int] = DEFAULT_SNAPSHOT_EVERY
    """Take a snapshot once this many events were stored since the last one (``0``: never).

    Only for a class that defines ``snapshot()`` (its state, as a registered attrs instance or
    plain JSON data) and ``restore(state)``, saved by a repository given a ``snapshots`` store.
    """

    snapshot_version: ClassVar[int] = 1
    """The layout of this class's snapshot state: raise it when ``snapshot()`` changes shape, and
    stored snapshots of another version are ignored (the aggregate is rebuilt from its events)."""

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
        _check_snapshot_settings(cls)

    def __init__(self, id: str | None = None) -> None:
        self.id: str | None = id
        self.version: int = NO_STREAM
        self._pending: list[NewEvent] = []
        self._refusals: dict[str, KeyRefused] = {}
        self._snapshot_at: int = NO_STREAM  # the version of the newest snapshot known to be taken

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
    that goes wrong drops it. ``load`` always reads the stream (from its snapshot, when there is
    one) and returns an aggregate the caller owns. ``cache_size=0`` turns the cache off.

    Given a ``snapshots`` store, the repository keeps snapshots of the aggregate classes that
    support them (see :attr:`AggregateRoot.snapshot_every`): ``load`` starts from the stream's
    snapshot and replays only the events after it, and a save that brings an aggregate
    ``snapshot_every`` events past its last snapshot stores a new one once the events are
    committed; a snapshot that cannot be taken or stored is logged, never raised.
    """

    def __init__(
        self, event_store: EventStore, *, cache_size: int = 1024, snapshots: SnapshotStore | None = None
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be 0 (no cache) or more")
        self.event_store = event_store
        self.cache_size = cache_size
        self.snapshots = snapshots
        self._idle: collections.OrderedDict[str, AggregateRoot] = collections.OrderedDict()
        self._idle_lock = threading.Lock()

    def load(self, cls: type[A], aggregate_id: str) -> A:
        """Rebuild the aggregate from its stream (and snapshot); raise AggregateNotFoundError if it has none.

        A snapshot that does not fit the stream raises SnapshotError (SnapshotAheadError for one
        past the stream's end) rather than give a state the events do not.
        """
        return run_sync(self.load_async(cls, aggregate_id))

    async def load_async(self, cls: type[A], aggregate_id: str) -> A:
        """Asyncio form of :meth:`load`."""
        stream = cls.stream_name(aggregate_id)
        aggregate = cls()
        aggregate.id = aggregate_id
        snapshot = await self._snapshot_of(cls, stream)
        version = 0 if snapshot is None else snapshot.version
        await self._replay_from(aggregate, stream, version, snapshot)
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
        if self.snapshots is not None and result.versions[-1] == aggregate.version:
            # (Not after an idempotent repeat: the store wrote nothing, and this aggregate
            # applied the events once more, so its state is not the stream's.)
            await self._maybe_snapshot(aggregate, stream, batch[-1].event_id)
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
        if self.snapshots is not None:
            for aggregate, (stream, batch, _), result in zip(aggregates, prepared, results, strict=True):
                if result is not None and result.versions[-1] == aggregate.version:
                    await self._maybe_snapshot(aggregate, stream, batch[-1].event_id)
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

    # -- snapshots -----------------------------------------------------------------------------

    async def _snapshot_of(self, cls: type[AggregateRoot], stream: str) -> Snapshot | None:
        """The stream's snapshot if this class can use it; one of another schema version is ignored."""
        if self.snapshots is None or not _snapshots_on(cls):
            return None
        # The store leaves out a snapshot of another version undecoded: its state's class may be gone.
        snapshot = await _load_snapshot(self.snapshots, stream, cls.snapshot_version)
        if snapshot is None or snapshot.schema_version != cls.snapshot_version:
            return None
        return snapshot

    async def _replay_from(
        self, aggregate: AggregateRoot, stream: str, version: int, snapshot: Snapshot | None = None
    ) -> None:
        """Replay the stream's events from ``version`` on into ``aggregate``, a page at a time (a
        long stream is never held whole in memory); with ``snapshot``, restore that first, once
        the stream is checked to still hold the event it was taken at."""
        pages = _io.stream_pages(self.event_store, stream, version)
        try:
            async for page in pages:
                if snapshot is not None:
                    self._restore(aggregate, snapshot, page[0])
                    snapshot, page = None, page[1:]
                for recorded in page:
                    aggregate._replay(recorded)
            if snapshot is not None:  # the stream ends before the snapshot's event
                raise SnapshotAheadError(
                    stream, snapshot.version, await _io.stream_version(self.event_store, stream)
                )
        finally:
            await pages.aclose()

    @staticmethod
    def _restore(aggregate: AggregateRoot, snapshot: Snapshot, first: RecordedEvent) -> None:
        if first.version != snapshot.version or first.event_id != snapshot.event_id:
            raise SnapshotError(
                snapshot.stream,
                snapshot.version,
                f"taken at event {snapshot.event_id}, but the stream holds {first.event_id} "
                f"at version {first.version}: the snapshot is of another history of this stream",
            )
        aggregate.restore(snapshot.state)  # type: ignore[attr-defined]
        aggregate.version = snapshot.version
        aggregate._refusals = {refusal.key: refusal for refusal in snapshot.refusals}
        aggregate._snapshot_at = snapshot.version

    async def _maybe_snapshot(self, aggregate: AggregateRoot, stream: str, event_id: uuid.UUID) -> None:
        """Store a snapshot if the aggregate is ``snapshot_every`` events past its last one.

        Called once the events are committed: whatever goes wrong here is logged, and the save
        stands. The next attempt comes ``snapshot_every`` events later, so a state that cannot be
        stored costs one warning per ``snapshot_every`` events, not one per save.
        """
        cls = type(aggregate)
        if not _snapshots_on(cls) or aggregate.version - aggregate._snapshot_at < cls.snapshot_every:
            return
        aggregate._snapshot_at = aggregate.version
        try:
            snapshot = Snapshot(
                stream,
                aggregate.version,
                event_id,
                cls.snapshot_version,
                aggregate.snapshot(),  # type: ignore[attr-defined]
                tuple(aggregate._refusals.values()),
            )
            await _save_snapshot(self.snapshots, snapshot)
        except Exception:
            _log.warning(
                "could not store a snapshot of %r at version %d", stream, aggregate.version, exc_info=True
            )

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
        await self._replay_from(aggregate, stream, aggregate.version + 1)
        return True


def _records_refusal(aggregate: AggregateRoot) -> bool:
    """True if a refused decision left exactly its key's refusal record to store (see keys.py)."""
    pending = aggregate._pending
    return bool(pending) and all(type(new.event) is KeyRefused for new in pending)


def _snapshots_on(cls: type[AggregateRoot]) -> bool:
    return cls.snapshot_every > 0 and callable(getattr(cls, "snapshot", None))


def _check_snapshot_settings(cls: type[AggregateRoot]) -> None:
    """Refuse snapshot settings that could only fail later, when a snapshot is taken or loaded."""
    for name, least in (("snapshot_every", 0), ("snapshot_version", 0)):
        value = getattr(cls, name)
        if type(value) is not int or value < least:
            raise AggregateError(f"{cls.__name__}.{name} must be an int, 0 or more; it is {value!r}")
    has_snapshot = callable(getattr(cls, "snapshot", None))
    has_restore = callable(getattr(cls, "restore", None))
    if has_snapshot != has_restore:
        missing, present = ("restore", "snapshot") if has_snapshot else ("snapshot", "restore")
        raise AggregateError(f"{cls.__name__} defines {present}() without {missing}(): snapshots need both")


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
