"""One saga step, written once: load, admit, run the handler, save before each dispatch, record
stuck; and the retry of a stuck saga.

A step is a coroutine that reaches the store, the dispatcher and the lease only through
:mod:`orchestrix.core._io`, so the runner's sync forms run it with the sync driver and its
asyncio forms on the loop. Why a step is ordered as it is:

* the saga's new events are saved *before* each command is dispatched, so a crash after the
  dispatch replays a saga that already knows it sent the command (and sends it again with the
  same idempotency key, which the receiver decides once);
* the lease is checked right before each dispatch (the step runs under the lease's fence, so
  the store refuses what a runner that lost its lease still appends); a lost lease or a store
  failure stops the runner, any other exception gets the saga recorded stuck, under the fence
  too, and the runner goes on with other sagas;
* one saga is never stepped twice at once in a runner (a lock per saga).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from orchestrix.core import _io
from orchestrix.core.errors import ConcurrencyError, LeaseLostError, SagaError, StoreError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository, retry_on_conflict_async
from orchestrix.core.eventsourcing.fencing import Fence, Lease, fenced
from orchestrix.core.execution._saga_monitor import SagaKey, SagaMonitor, Target
from orchestrix.core.execution.saga import Saga, SagaRetried, SagaStuck
from orchestrix.core.messaging.messages import RecordedEvent

__all__: list[str] = []

_CORRELATION = uuid.UUID("9d4c3b1e-7a2f-4f60-b8d5-0c2e6a9f1b37")


class SagaSteps:
    """Runs saga steps for one runner: delivery of an event to a saga, and retries."""

    def __init__(
        self,
        store: Any,
        dispatcher: Any,
        monitor: SagaMonitor,
        *,
        lease: Lease | None,
        lease_name: str,
        attempts: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.monitor = monitor
        self.lease = lease
        self.lease_name = lease_name
        self.attempts = attempts
        self.clock = clock
        self.repository = AggregateRepository(store)
        self._locks = _io.KeyedLocks()

    # -- the lease ------------------------------------------------------------------------------

    async def fence(self) -> Fence | None:
        """The fence to run a page (or a retry) under, once the lease is checked; None without one."""
        if self.lease is None:
            return None
        await self.check_lease("start a page")
        return self.lease.fence

    async def check_lease(self, before: str) -> None:
        """Raise LeaseLostError (saying what was not done) unless the lease is still held."""
        if self.lease is not None and not await _io.holds(self.lease):
            raise LeaseLostError(self.lease_name, f"the runner no longer holds it; did not {before}")

    # -- delivery -------------------------------------------------------------------------------

    async def deliver(self, target: Target, recorded: RecordedEvent) -> None:
        """Hand ``recorded`` to one saga: step it, or count why not; a failed step gets it stuck."""
        cls, _spec, saga_id = target
        key = (cls, saga_id)
        if self.monitor.ignores(key):
            return
        async with self._locks.hold(key):
            try:
                await retry_on_conflict_async(
                    functools.partial(self._attempt, target, recorded), attempts=self.attempts
                )
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                await self._record_failure(key, recorded, exc)

    async def _attempt(self, target: Target, recorded: RecordedEvent) -> None:
        cls, spec, saga_id = target
        saga = self.monitor.admit(await self._load(cls, saga_id), target, recorded)
        if saga is None:
            return
        await self._drive(saga, spec.method(saga, recorded.event), recorded.event_id)
        self._stepped(saga)

    async def _drive(self, saga: Saga, outcome: Any, cause: uuid.UUID | None) -> None:
        steps = _commands(outcome)
        for command in steps:
            await self._save(saga, cause)
            await self.check_lease(f"dispatch {type(command).__name__}")
            try:
                result = await _io.dispatch(self.dispatcher, command)
            except LeaseLostError:
                raise  # not the saga's business: the runner stops, the new holder goes on
            except Exception as exc:
                steps.throw_next(exc)
            else:
                steps.send_next(result)
        await self._save(saga, cause)

    async def _save(self, saga: Saga, cause: uuid.UUID | None) -> None:
        saved = await self.repository.save_async(saga, correlation_id=_correlation(saga), causation_id=cause)
        if saved is not None:
            self.monitor.saved(saga)

    async def _load(self, cls: type[Saga], saga_id: str) -> Saga | None:
        saga = cls(saga_id)
        for recorded in await _io.read_stream(self.store, cls.stream_name(saga_id)):
            saga._replay(recorded)
        return saga if saga.version >= 0 else None

    def _stepped(self, saga: Saga) -> None:
        if saga.version < 0:
            raise SagaError(f"{type(saga).__name__} {saga.id!r}: a start handler must raise an event")
        self.monitor.stepped(saga)

    # -- failures -------------------------------------------------------------------------------

    async def _record_failure(self, key: SagaKey, recorded: RecordedEvent, exc: Exception) -> None:
        cls, saga_id = key
        self.monitor.failed(key, recorded, exc)

        async def record() -> None:
            saga = await self._load(cls, saga_id) or cls(saga_id)
            if self._stuck_event(saga, recorded, exc):
                await self._save(saga, recorded.event_id)

        await retry_on_conflict_async(record, attempts=self.attempts)

    def _stuck_event(self, saga: Saga, recorded: RecordedEvent, exc: Exception) -> bool:
        if saga.completed:
            return False
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConcurrencyError):
            reason = f"still conflicting after {self.attempts} attempts: {exc}"
        position = recorded.position if recorded.version >= 0 else saga.stuck_event_position
        saga.raise_event(SagaStuck(saga.id or "", reason, recorded.event_type, position, self.clock()))
        self.monitor.saved(saga)
        return True

    # -- retries --------------------------------------------------------------------------------

    async def retry(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Clear a recorded stuck state and resume the saga; see :meth:`SagaRunner.retry`."""
        key = (saga_type, saga_id)
        async with self._locks.hold(key):
            # The failure is recorded under the fence too: a runner that lost its lease while
            # the step ran must not write the saga stuck after the new holder took over.
            with fenced(await self.fence()):
                try:
                    return await retry_on_conflict_async(
                        functools.partial(self._retry_once, saga_type, saga_id), attempts=self.attempts
                    )
                except (StoreError, LeaseLostError):
                    raise
                except Exception as exc:
                    await self._record_failure(key, self._trigger(saga_type, saga_id), exc)
                    return await self.repository.load_async(saga_type, saga_id)

    async def _retry_once(self, saga_type: type[Saga], saga_id: str) -> Saga:
        saga = await self.repository.load_async(saga_type, saga_id)
        if saga.completed:
            return saga
        position = saga.stuck_event_position
        if saga.stuck_reason is not None:
            saga.raise_event(SagaRetried(saga.id or "", self.clock()))
            self.monitor.saved(saga)
        outcome = saga.resume()
        cause = None
        if outcome is None and position:
            # A saga with nothing to resume from its state is handed its trigger again.
            trigger = await self._read_at(position)
            spec = type(saga).handlers.get(type(trigger.event)) if trigger is not None else None
            if trigger is not None and spec is not None:
                self.monitor.delivered()
                outcome = spec.method(saga, trigger.event)
                cause = trigger.event_id
        await self._drive(saga, outcome, cause)
        self._stepped(saga)
        return saga

    async def _read_at(self, position: int) -> RecordedEvent | None:
        if position <= 0:
            return None
        found = await _io.read_all(self.store, position - 1, 1)
        return found[0] if found and found[0].position == position else None

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
