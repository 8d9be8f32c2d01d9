"""The saga runner: feeds sagas from the store's global order, with a stored checkpoint.

Delivery is at-least-once: the runner stores its checkpoint after each page of events, so after
a crash it reads part of a page again. Effects happen once all the same, because a saga decides
from its event-sourced state and every command it sends carries a deterministic idempotency key.

One saga is never handled by two steps at once inside a runner; across processes, give each
runner a ``partition=(index, count)``: a saga belongs to exactly one partition (a stable hash of
its id), so each saga is driven by one process. Every runner of one group must use the same
``count``; changing it starts the new partitions' checkpoints from the beginning (harmless, as
delivery is idempotent, but slow on a large store).

Problems are visible, never dropped:

* an event addressed to a saga that does not exist (and cannot start it) is *unmatched*: it is
  logged, counted in ``stats.unmatched`` and kept in :attr:`SagaRunner.unmatched`;
* a step that raises an unexpected exception records :class:`~orchestrix.core.execution.saga.SagaStuck`
  in the saga's stream (the runner goes on with other sagas); a store failure (``StoreError``)
  stops the runner instead, without moving the checkpoint;
* a runner given a ``lease`` checks it right before each dispatch and each checkpoint, and
  runs every step under the lease's fence, so once another process holds the lease, nothing
  this runner does lands: it stops with :class:`~orchestrix.core.errors.LeaseLostError`;
* :meth:`SagaRunner.stuck` lists stuck sagas and sagas without progress for ``stuck_after``,
  with their state and reason; :meth:`SagaRunner.retry` runs one again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import inspect
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from orchestrix.core.errors import ConcurrencyError, LeaseLostError, SagaError, StoreError
from orchestrix.core.eventsourcing.aggregate import (
    AggregateRepository,
    retry_on_conflict,
    retry_on_conflict_async,
)
from orchestrix.core.eventsourcing.fencing import Fence, Lease, fenced
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution._paging import PageLoop
from orchestrix.core.execution.checkpoint import CheckpointStore
from orchestrix.core.execution.dispatch import CommandDispatcher
from orchestrix.core.execution.saga import HandlerSpec, Saga, SagaRetried, SagaStuck
from orchestrix.core.messaging.messages import RecordedEvent

__all__ = [
    "RunnerStats",
    "SagaRunner",
    "StuckSaga",
    "UnmatchedEvent",
    "partition_of",
]

log = logging.getLogger("orchestrix.sagas")

_CORRELATION = uuid.UUID("9d4c3b1e-7a2f-4f60-b8d5-0c2e6a9f1b37")
_Key = tuple[type[Saga], str]
_Target = tuple[type[Saga], HandlerSpec, str]


def partition_of(saga_id: str, count: int) -> int:
    """The partition (0 .. count-1) a saga id belongs to; the same in every process and run."""
    if count < 1:
        raise ValueError("partition count must be at least 1")
    digest = hashlib.blake2b(saga_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class UnmatchedEvent:
    """An event addressed to a saga that does not exist and that it cannot start."""

    saga_type: str
    saga_id: str
    event_type: str
    stream: str
    position: int
    event_id: uuid.UUID


@attrs.frozen
class StuckSaga:
    """A saga that needs attention: recorded as stuck, or without progress for too long."""

    saga_type: str
    saga_id: str
    stream: str
    state: str
    reason: str
    since: datetime
    version: int


@attrs.define
class RunnerStats:
    """What a runner has done since it was created."""

    events: int = 0
    """Events read from the store's global order."""
    deliveries: int = 0
    """Events handed to a saga handler (redeliveries included)."""
    ignored: int = 0
    """Events for completed sagas, which ignore them."""
    held: int = 0
    """Events for stuck sagas, held until a retry."""
    unmatched: int = 0
    """Events addressed to a saga that does not exist."""
    failed: int = 0
    """Steps that raised and got their saga stuck."""
    other_partition: int = 0
    """Events for sagas of another partition."""


class SagaRunner(PageLoop):
    """Drives sagas from a store's global order; sync (``run_*``) and asyncio (``run_*_async``) forms.

    ``dispatcher`` executes the commands sagas yield. ``checkpoints`` keeps the position of the
    last page handled under ``name`` (plus the partition, if any). ``stuck_after`` makes
    :meth:`stuck` also list open sagas whose last event is older than that. The asyncio form
    handles up to ``max_concurrency`` sagas of one page at once (each saga's own events in order).

    On start the runner reads the history before its checkpoint once, to know which sagas are
    still open (for :meth:`stuck`); pass ``index_history=False`` to skip that on a huge store.

    ``step_threads=True`` makes the asyncio form run each saga step's *sync* code (sync store
    calls, ``dispatcher.handle``) in a worker thread of the loop's default executor: one thread
    hop per step instead of one per store call. It pays off with stores whose asyncio forms hop
    to a thread for every call (one built on ``AsyncStoreMixin``) and a dispatcher whose
    ``handle`` does what ``handle_async`` does; size the executor (``loop.set_default_executor``)
    to ``max_concurrency`` if the store batches concurrent appends. The built-in stores need
    none of it: their asyncio forms run on the loop (memory; file reads) or hold no thread while
    they wait (file appends, PostgreSQL).

    ``lease`` (a :class:`~orchestrix.core.eventsourcing.fencing.Lease`, such as the PostgreSQL
    store's ``PartitionLease``) makes the runner safe against a holder that lost its lease while
    paused: the lease is checked right before each command is dispatched and before each
    checkpoint is stored, and every step runs under the lease's fence, so the store refuses any
    append (the saga's, or an in-process command handler's) made after another process was
    granted the lease. The runner then raises LeaseLostError and stops, its checkpoint unmoved.
    The store must check fences (``store.checks_fences``).
    """

    def __init__(
        self,
        store: EventStore,
        sagas: Sequence[type[Saga]],
        dispatcher: CommandDispatcher,
        checkpoints: CheckpointStore,
        *,
        name: str = "sagas",
        partition: tuple[int, int] = (0, 1),
        page_size: int = 500,
        max_concurrency: int = 32,
        stuck_after: timedelta | None = None,
        attempts: int = 5,
        clock: Callable[[], datetime] = _utcnow,
        index_history: bool = True,
        unmatched_kept: int = 1000,
        step_threads: bool = False,
        lease: Lease | None = None,
    ) -> None:
        index, count = partition
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"partition must be (index, count) with 0 <= index < count, not {partition!r}")
        if not sagas:
            raise ValueError("a runner needs at least one saga class")
        for cls in sagas:
            if not (isinstance(cls, type) and issubclass(cls, Saga)):
                raise TypeError(f"{cls!r} is not a Saga subclass")
        if page_size < 1 or max_concurrency < 1:
            raise ValueError("page_size and max_concurrency must be at least 1")
        if lease is not None and not getattr(store, "checks_fences", False):
            raise SagaError(
                f"{type(store).__name__} cannot check fences, so a lease cannot keep a paused runner "
                "from acting: use a store that does (memory, PostgreSQL) or run without a lease"
            )
        self.store = store
        self.lease = lease
        self.sagas = tuple(sagas)
        self.dispatcher = dispatcher
        self.checkpoints = checkpoints
        self.partition = (index, count)
        self.checkpoint_name = name if count == 1 else f"{name}[{index}/{count}]"
        self.page_size = page_size
        self.max_concurrency = max_concurrency
        self.stuck_after = stuck_after
        self.attempts = attempts
        self.clock = clock
        self.index_history = index_history
        self.step_threads = step_threads
        self.repository = AggregateRepository(store)
        self.stats = RunnerStats()
        self._unmatched: collections.deque[UnmatchedEvent] = collections.deque(maxlen=unmatched_kept)
        self._position: int | None = None
        self._open: dict[_Key, None] = {}
        self._completed: collections.OrderedDict[_Key, None] = collections.OrderedDict()
        self._thread_locks = _KeyedLocks()
        self._books = threading.RLock()  # guards stats and the open/completed sets (step_threads)
        self._async_locks = _KeyedAsyncLocks()

    # -- state ------------------------------------------------------------------------------

    @property
    def position(self) -> int | None:
        """The global position handled so far (None until the runner has loaded its checkpoint)."""
        return self._position

    @property
    def unmatched(self) -> tuple[UnmatchedEvent, ...]:
        """The most recent unmatched events (``stats.unmatched`` counts all of them)."""
        return tuple(self._unmatched)

    def open_sagas(self) -> list[tuple[type[Saga], str]]:
        """The sagas of this runner's partition that have started and not completed, as far as read."""
        self._start()
        return list(self._open)

    async def open_sagas_async(self) -> list[tuple[type[Saga], str]]:
        """Asyncio form of :meth:`open_sagas`."""
        await self._start_async()
        return list(self._open)

    # -- running: sync ----------------------------------------------------------------------

    def run_once(self) -> int:
        """Handle the next page of events after the checkpoint, then store the checkpoint.

        Returns the number of events read (0 when the runner is caught up).
        """
        self._start()
        assert self._position is not None
        with fenced(self._fence()):
            page = list(self.store.read_all(self._position, limit=self.page_size))
            for recorded in page:
                self._handle(recorded)
            return self._finish_page(page)

    def handle(self, recorded: RecordedEvent) -> None:
        """Deliver one event to every saga it is addressed to (a redelivery is harmless)."""
        with fenced(self._fence()):
            self._handle(recorded)

    def _handle(self, recorded: RecordedEvent) -> None:
        self._start()
        self._observe(recorded)
        for target in self._targets(recorded):
            self._deliver(target, recorded)

    def _read_position(self) -> int:
        assert self._position is not None  # run_once has started the runner
        return self._position

    def _finish_page(self, page: list[RecordedEvent]) -> int:
        if page:
            self._check_lease("store its checkpoint")
            self._position = page[-1].position
            self.checkpoints.save(self.checkpoint_name, self._position)
            self.stats.events += len(page)
        return len(page)

    def _start(self) -> None:
        if self._position is not None:
            return
        position = self.checkpoints.load(self.checkpoint_name)
        if self.index_history and position > 0:
            for recorded in self.store.read_all(0, limit=position):
                if recorded.position > position:
                    break
                self._observe(recorded)
        self._position = position

    def _deliver(self, target: _Target, recorded: RecordedEvent) -> None:
        cls, _spec, saga_id = target
        key = (cls, saga_id)
        if key in self._completed:
            with self._books:
                self.stats.ignored += 1
            return
        with self._thread_locks.hold(key):
            try:
                retry_on_conflict(lambda: self._attempt(target, recorded), attempts=self.attempts)
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                self._record_failure(key, recorded, exc)

    def _attempt(self, target: _Target, recorded: RecordedEvent) -> None:
        cls, spec, saga_id = target
        saga = self._load(cls, saga_id)
        saga = self._admit(saga, target, recorded)
        if saga is None:
            return
        self._drive(saga, spec.method(saga, recorded.event), recorded.event_id)
        self._after_step(saga)

    def _drive(self, saga: Saga, outcome: Any, cause: uuid.UUID | None) -> None:
        steps = _commands(outcome)
        for command in steps:
            self._save(saga, cause)
            self._check_lease(f"dispatch {type(command).__name__}")
            try:
                result = self.dispatcher.handle(command)
            except LeaseLostError:
                raise  # not the saga's business: the runner stops, the new holder goes on
            except Exception as exc:
                steps.throw_next(exc)
            else:
                steps.send_next(result)
        self._save(saga, cause)

    def _save(self, saga: Saga, cause: uuid.UUID | None) -> None:
        if self.repository.save(saga, correlation_id=_correlation(saga), causation_id=cause) is not None:
            self._saved(saga)

    def _load(self, cls: type[Saga], saga_id: str) -> Saga | None:
        saga = cls(saga_id)
        for recorded in self.store.read_stream(cls.stream_name(saga_id)):
            saga._replay(recorded)
        return saga if saga.version >= 0 else None

    def _record_failure(self, key: _Key, recorded: RecordedEvent, exc: Exception) -> None:
        cls, saga_id = key
        self._log_failure(key, recorded, exc)

        def record() -> None:
            saga = self._load(cls, saga_id) or cls(saga_id)
            if self._stuck_event(saga, recorded, exc):
                self._save(saga, recorded.event_id)

        retry_on_conflict(record, attempts=self.attempts)

    # -- running: asyncio -------------------------------------------------------------------

    async def run_once_async(self) -> int:
        """Asyncio form of :meth:`run_once`; sagas of one page are handled concurrently."""
        await self._start_async()
        assert self._position is not None
        with fenced(await self._fence_async()):
            return await self._run_page_async(self._position)

    async def _run_page_async(self, position: int) -> int:
        page = [r async for r in self.store.read_all_async(position, limit=self.page_size)]
        lanes: dict[_Key, list[tuple[_Target, RecordedEvent]]] = {}
        for recorded in page:
            self._observe(recorded)
            for target in self._targets(recorded):
                lanes.setdefault((target[0], target[2]), []).append((target, recorded))
        if lanes:
            limit = asyncio.Semaphore(self.max_concurrency)

            async def lane(items: list[tuple[_Target, RecordedEvent]]) -> None:
                async with limit:
                    for target, recorded in items:
                        if self.step_threads:
                            await asyncio.to_thread(self._deliver, target, recorded)
                        else:
                            await self._deliver_async(target, recorded)

            results = await asyncio.gather(*(lane(items) for items in lanes.values()), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        if page:
            await self._check_lease_async("store its checkpoint")
            self._position = page[-1].position
            await self.checkpoints.save_async(self.checkpoint_name, self._position)
            self.stats.events += len(page)
        return len(page)

    async def handle_async(self, recorded: RecordedEvent) -> None:
        """Asyncio form of :meth:`handle`."""
        with fenced(await self._fence_async()):
            if self.step_threads:
                await asyncio.to_thread(self._handle, recorded)
                return
            await self._start_async()
            self._observe(recorded)
            for target in self._targets(recorded):
                await self._deliver_async(target, recorded)

    async def _start_async(self) -> None:
        if self._position is not None:
            return
        position = await self.checkpoints.load_async(self.checkpoint_name)
        if self.index_history and position > 0:
            async for recorded in self.store.read_all_async(0, limit=position):
                if recorded.position > position:
                    break
                self._observe(recorded)
        if self._position is None:
            self._position = position

    async def _deliver_async(self, target: _Target, recorded: RecordedEvent) -> None:
        cls, _spec, saga_id = target
        key = (cls, saga_id)
        if key in self._completed:
            self.stats.ignored += 1
            return
        async with self._async_locks.hold(key):
            try:
                await retry_on_conflict_async(
                    lambda: self._attempt_async(target, recorded), attempts=self.attempts
                )
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                await self._record_failure_async(key, recorded, exc)

    async def _attempt_async(self, target: _Target, recorded: RecordedEvent) -> None:
        cls, spec, saga_id = target
        saga = await self._load_async(cls, saga_id)
        saga = self._admit(saga, target, recorded)
        if saga is None:
            return
        await self._drive_async(saga, spec.method(saga, recorded.event), recorded.event_id)
        self._after_step(saga)

    async def _drive_async(self, saga: Saga, outcome: Any, cause: uuid.UUID | None) -> None:
        steps = _commands(outcome)
        for command in steps:
            await self._save_async(saga, cause)
            await self._check_lease_async(f"dispatch {type(command).__name__}")
            try:
                result = await self.dispatcher.handle_async(command)
            except LeaseLostError:
                raise
            except Exception as exc:
                steps.throw_next(exc)
            else:
                steps.send_next(result)
        await self._save_async(saga, cause)

    async def _save_async(self, saga: Saga, cause: uuid.UUID | None) -> None:
        saved = await self.repository.save_async(saga, correlation_id=_correlation(saga), causation_id=cause)
        if saved is not None:
            self._saved(saga)

    async def _load_async(self, cls: type[Saga], saga_id: str) -> Saga | None:
        saga = cls(saga_id)
        async for recorded in self.store.read_stream_async(cls.stream_name(saga_id)):
            saga._replay(recorded)
        return saga if saga.version >= 0 else None

    async def _record_failure_async(self, key: _Key, recorded: RecordedEvent, exc: Exception) -> None:
        cls, saga_id = key
        self._log_failure(key, recorded, exc)

        async def record() -> None:
            saga = await self._load_async(cls, saga_id) or cls(saga_id)
            if self._stuck_event(saga, recorded, exc):
                await self._save_async(saga, recorded.event_id)

        await retry_on_conflict_async(record, attempts=self.attempts)

    # -- stuck sagas and retries ------------------------------------------------------------

    def stuck(self, now: datetime | None = None) -> list[StuckSaga]:
        """Open sagas recorded as stuck, or (with ``stuck_after``) without progress for that long."""
        self._start()
        found = []
        for cls, saga_id in list(self._open):
            saga, last = self._load_timed(cls, saga_id)
            entry = self._stuck_entry(saga, last, now)
            if entry is not None:
                found.append(entry)
        return found

    async def stuck_async(self, now: datetime | None = None) -> list[StuckSaga]:
        """Asyncio form of :meth:`stuck`."""
        await self._start_async()
        found = []
        for cls, saga_id in list(self._open):
            saga, last = await self._load_timed_async(cls, saga_id)
            entry = self._stuck_entry(saga, last, now)
            if entry is not None:
                found.append(entry)
        return found

    def retry(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Run a saga again from its state: clear a recorded stuck state, then resume it.

        Returns the saga as it stands afterwards; if the step failed again it is stuck again
        (``stuck_reason`` says why). Raises AggregateNotFoundError for an unknown saga.
        """
        self._start()
        key = (saga_type, saga_id)
        with self._thread_locks.hold(key), fenced(self._fence()):
            try:
                return retry_on_conflict(lambda: self._retry_once(saga_type, saga_id), attempts=self.attempts)
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                trigger = self._trigger(saga_type, saga_id)
                self._record_failure(key, trigger, exc)
                return self.repository.load(saga_type, saga_id)

    async def retry_async(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Asyncio form of :meth:`retry`."""
        if self.step_threads:
            return await asyncio.to_thread(self.retry, saga_type, saga_id)
        await self._start_async()
        key = (saga_type, saga_id)
        async with self._async_locks.hold(key):
            try:
                with fenced(await self._fence_async()):
                    return await retry_on_conflict_async(
                        lambda: self._retry_once_async(saga_type, saga_id), attempts=self.attempts
                    )
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                trigger = self._trigger(saga_type, saga_id)
                await self._record_failure_async(key, trigger, exc)
                return await self.repository.load_async(saga_type, saga_id)

    def _retry_once(self, saga_type: type[Saga], saga_id: str) -> Saga:
        saga = self.repository.load(saga_type, saga_id)
        if saga.completed:
            return saga
        outcome, cause = self._retry_plan(saga, self._read_at)
        self._drive(saga, outcome, cause)
        self._after_step(saga)
        return saga

    async def _retry_once_async(self, saga_type: type[Saga], saga_id: str) -> Saga:
        saga = await self.repository.load_async(saga_type, saga_id)
        if saga.completed:
            return saga
        trigger = await self._read_at_async(saga.stuck_event_position)
        outcome, cause = self._retry_plan(saga, lambda _position: trigger)
        await self._drive_async(saga, outcome, cause)
        self._after_step(saga)
        return saga

    def _retry_plan(
        self, saga: Saga, read_at: Callable[[int], RecordedEvent | None]
    ) -> tuple[Any, uuid.UUID | None]:
        position = saga.stuck_event_position
        if saga.stuck_reason is not None:
            saga.raise_event(SagaRetried(saga.id or "", self.clock()))
            self._saved(saga)
        outcome = saga.resume()
        cause = None
        if outcome is None and position:
            trigger = read_at(position)
            spec = type(saga).handlers.get(type(trigger.event)) if trigger is not None else None
            if trigger is not None and spec is not None:
                with self._books:
                    self.stats.deliveries += 1
                outcome = spec.method(saga, trigger.event)
                cause = trigger.event_id
        return outcome, cause

    def _trigger(self, saga_type: type[Saga], saga_id: str) -> RecordedEvent:
        # A failed retry is recorded against a synthetic "retry" trigger at the saga's own stream.
        return RecordedEvent(
            uuid.uuid5(_CORRELATION, f"retry:{saga_type.stream_name(saga_id)}"),
            saga_type.stream_name(saga_id),
            -1,
            0,
            self.clock(),
            "retry",
            None,
        )

    def _read_at(self, position: int) -> RecordedEvent | None:
        if position <= 0:
            return None
        found = next(iter(self.store.read_all(position - 1, limit=1)), None)
        return found if found is not None and found.position == position else None

    async def _read_at_async(self, position: int) -> RecordedEvent | None:
        if position <= 0:
            return None
        async for found in self.store.read_all_async(position - 1, limit=1):
            return found if found.position == position else None
        return None

    def _load_timed(self, cls: type[Saga], saga_id: str) -> tuple[Saga, datetime | None]:
        saga, last = cls(saga_id), None
        for recorded in self.store.read_stream(cls.stream_name(saga_id)):
            saga._replay(recorded)
            last = recorded.recorded_at
        return saga, last

    async def _load_timed_async(self, cls: type[Saga], saga_id: str) -> tuple[Saga, datetime | None]:
        saga, last = cls(saga_id), None
        async for recorded in self.store.read_stream_async(cls.stream_name(saga_id)):
            saga._replay(recorded)
            last = recorded.recorded_at
        return saga, last

    def _stuck_entry(self, saga: Saga, last: datetime | None, now: datetime | None) -> StuckSaga | None:
        if last is None or saga.completed:
            self._open.pop((type(saga), saga.id or ""), None)
            return None
        if saga.stuck_reason is not None:
            reason = saga.stuck_reason
        elif self.stuck_after is not None and (now or self.clock()) - last >= self.stuck_after:
            reason = f"no progress since {last.isoformat(timespec='seconds')}"
        else:
            return None
        return StuckSaga(
            type(saga).category, saga.id or "", saga.stream, saga.state, reason, last, saga.version
        )

    # -- the lease ----------------------------------------------------------------------------

    def _fence(self) -> Fence | None:
        if self.lease is None:
            return None
        self._check_lease("start a page")
        return self.lease.fence

    async def _fence_async(self) -> Fence | None:
        if self.lease is None:
            return None
        await self._check_lease_async("start a page")
        return self.lease.fence

    def _check_lease(self, before: str) -> None:
        if self.lease is not None and not self.lease.holds():
            raise LeaseLostError(self.checkpoint_name, f"the runner no longer holds it; did not {before}")

    async def _check_lease_async(self, before: str) -> None:
        if self.lease is None:
            return
        holds_async = getattr(self.lease, "holds_async", None)
        held = await holds_async() if holds_async is not None else self.lease.holds()
        if not held:
            raise LeaseLostError(self.checkpoint_name, f"the runner no longer holds it; did not {before}")

    # -- shared decisions -------------------------------------------------------------------

    def _targets(self, recorded: RecordedEvent) -> list[_Target]:
        targets = []
        for cls in self.sagas:
            spec = cls.handlers.get(type(recorded.event))
            if spec is None:
                continue
            saga_id = spec.correlation_id(recorded.event)
            if saga_id is None:
                continue
            if not self._mine(saga_id):
                self.stats.other_partition += 1
                continue
            targets.append((cls, spec, saga_id))
        return targets

    def _mine(self, saga_id: str) -> bool:
        index, count = self.partition
        return count == 1 or partition_of(saga_id, count) == index

    def _observe(self, recorded: RecordedEvent) -> None:
        """Track which sagas are open from the events of their own streams."""
        with self._books:
            self._observe_locked(recorded)

    def _observe_locked(self, recorded: RecordedEvent) -> None:
        for cls in self.sagas:
            prefix = cls.category + "-"
            if not recorded.stream.startswith(prefix):
                continue
            saga_id = recorded.stream[len(prefix) :]
            if not self._mine(saga_id):
                continue
            key = (cls, saga_id)
            if type(recorded.event) in cls.terminal_events:
                self._open.pop(key, None)
                self._remember_completed(key)
            elif key not in self._completed:
                self._open[key] = None

    def _remember_completed(self, key: _Key) -> None:
        with self._books:
            self._completed[key] = None
            if len(self._completed) > 10_000:
                self._completed.popitem(last=False)

    def _admit(self, saga: Saga | None, target: _Target, recorded: RecordedEvent) -> Saga | None:
        """The saga to run the handler on, or None (and the reason counted) if it must not run."""
        with self._books:
            return self._admit_locked(saga, target, recorded)

    def _admit_locked(self, saga: Saga | None, target: _Target, recorded: RecordedEvent) -> Saga | None:
        cls, spec, saga_id = target
        if saga is None:
            if not spec.start:
                self._report_unmatched(target, recorded)
                return None
            saga = cls(saga_id)
        if saga.completed:
            self.stats.ignored += 1
            self._remember_completed((cls, saga_id))
            return None
        if saga.stuck_reason is not None:
            self.stats.held += 1
            return None
        self.stats.deliveries += 1
        return saga

    def _saved(self, saga: Saga) -> None:
        if not saga.completed:
            with self._books:
                self._open[(type(saga), saga.id or "")] = None

    def _after_step(self, saga: Saga) -> None:
        key = (type(saga), saga.id or "")
        if saga.version < 0:
            raise SagaError(f"{type(saga).__name__} {saga.id!r}: a start handler must raise an event")
        with self._books:
            if saga.completed:
                self._open.pop(key, None)
                self._remember_completed(key)
            else:
                self._open[key] = None

    def _report_unmatched(self, target: _Target, recorded: RecordedEvent) -> None:
        cls, _spec, saga_id = target
        with self._books:
            self.stats.unmatched += 1
        entry = UnmatchedEvent(
            cls.category, saga_id, recorded.event_type, recorded.stream, recorded.position, recorded.event_id
        )
        self._unmatched.append(entry)
        log.warning(
            "unmatched event: %s at position %d (stream %r) is addressed to %s %r, which does not exist",
            recorded.event_type,
            recorded.position,
            recorded.stream,
            cls.__name__,
            saga_id,
        )

    def _log_failure(self, key: _Key, recorded: RecordedEvent, exc: Exception) -> None:
        with self._books:
            self.stats.failed += 1
        cls, saga_id = key
        log.error(
            "%s %r is stuck: step for %s at position %d raised %s: %s",
            cls.__name__,
            saga_id,
            recorded.event_type,
            recorded.position,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )

    def _stuck_event(self, saga: Saga, recorded: RecordedEvent, exc: Exception) -> bool:
        if saga.completed:
            return False
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConcurrencyError):
            reason = f"still conflicting after {self.attempts} attempts: {exc}"
        position = recorded.position if recorded.version >= 0 else saga.stuck_event_position
        saga.raise_event(SagaStuck(saga.id or "", reason, recorded.event_type, position, self.clock()))
        self._saved(saga)
        return True


def _correlation(saga: Saga) -> uuid.UUID:
    """The envelope correlation id of everything a saga writes: derived from its stream."""
    return _stream_correlation(saga.stream)


@functools.lru_cache(maxsize=4096)
def _stream_correlation(stream: str) -> uuid.UUID:
    return uuid.uuid5(_CORRELATION, stream)


class _Driven:
    """Steps a handler's generator: yields its commands; results and errors go back in."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self._pending: tuple[str, Any] = ("send", None)

    def __iter__(self) -> Iterator[Any]:
        if self._generator is None:
            return
        try:
            while True:
                how, value = self._pending
                try:
                    command = self._generator.send(value) if how == "send" else self._generator.throw(value)
                except StopIteration:
                    return
                yield command
        finally:
            self._generator.close()

    def send_next(self, value: Any) -> None:
        self._pending = ("send", value)

    def throw_next(self, exc: BaseException) -> None:
        self._pending = ("throw", exc)


def _commands(outcome: Any) -> _Driven:
    """Wrap a handler's return value: a generator is driven, None means "no commands"."""
    if inspect.isgenerator(outcome):
        return _Driven(outcome)
    if outcome is None:
        return _Driven(None)
    raise SagaError(f"a saga handler must return None or be a generator, not {type(outcome).__name__}")


class _KeyedLocks:
    """One thread lock per saga, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Any, list[Any]] = {}

    @contextlib.contextmanager
    def hold(self, key: Any) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.RLock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class _KeyedAsyncLocks:
    """The asyncio form of :class:`_KeyedLocks` (used from one event loop)."""

    def __init__(self) -> None:
        self._locks: dict[Any, list[Any]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]
