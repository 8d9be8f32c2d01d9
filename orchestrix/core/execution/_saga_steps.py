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
* one saga is never stepped twice at once in a runner (a lock per saga);
* firing a deadline is a step too (same lock, fence and lease check): it appends
  ``DeadlineFired`` with the id derived from the schedule, only if the saga's stream still
  holds the deadline pending, so it happens once in effect whoever fires it how often.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from orchestrix._speedups import uuid5_in
from orchestrix.core import _io
from orchestrix.core.errors import ConcurrencyError, LeaseLostError, SagaError, StoreError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository, retry_on_conflict_async
from orchestrix.core.eventsourcing.fencing import Fence, Lease, fenced
from orchestrix.core.eventsourcing.store import ANY
from orchestrix.core.execution._saga_monitor import SagaKey, SagaMonitor, Target
from orchestrix.core.execution.dead_letters import DEAD_LETTER_STREAM, MessageDeadLettered, dead_letter_id
from orchestrix.core.execution.deadlines import Deadline, DeadlineFired, deadline_event_id
from orchestrix.core.execution.retry import RETRY_DEADLINE, RetryPolicy, StepFailed, _policy_of
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

    async def deliver(self, target: Target, recorded: RecordedEvent, head: bool = False) -> None:
        """Hand ``recorded`` to one saga: step it, or count why not; a failed step gets it stuck.

        ``head``: the caller read ``recorded`` as the last event of its stream (see :meth:`_start`).
        """
        cls, _spec, saga_id = target
        key = (cls, saga_id)
        if self.monitor.ignores(key):
            return
        first = [head]

        async def attempt() -> None:
            # Only the first attempt may trust the page; one that lost a version race reads.
            trusted, first[0] = first[0], False
            await self._attempt(target, recorded, trusted)

        async with self._locks.hold(key):
            try:
                await retry_on_conflict_async(attempt, attempts=self.attempts)
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                await self._record_failure(key, recorded, exc)

    async def _attempt(self, target: Target, recorded: RecordedEvent, head: bool = False) -> None:
        cls, spec, saga_id = target
        saga = self._start(cls, saga_id, recorded) if head else None
        if saga is None:
            saga = await self._load(cls, saga_id)
        saga = self.monitor.admit(saga, target, recorded)
        if saga is None:
            return
        saga._clock = self.clock  # a new saga too: its deadlines are due by the runner's time
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
        saga._settle_deadlines()
        saved = await self.repository.save_async(saga, correlation_id=_correlation(saga), causation_id=cause)
        if saved is not None:
            self.monitor.saved(saga)

    def _start(self, cls: type[Saga], saga_id: str, recorded: RecordedEvent) -> Saga | None:
        """The saga rebuilt from ``recorded`` alone, when that is its stream's first event and was
        the stream's last one when the page was read; else None (the caller reads the stream).

        The typical start (``TransferInitiated`` stored in the saga's own stream) then costs no
        read. Should the stream have moved since the page was read (an operator's request, a
        second runner), the step's first save loses its version race and the step runs again
        from the stream; what the step dispatched before that carries its idempotency key.
        """
        if recorded.version != 0 or recorded.stream != cls.stream_name(saga_id):
            return None
        saga = cls(saga_id)
        saga._clock = self.clock
        saga._replay(recorded)
        return saga

    async def _load(self, cls: type[Saga], saga_id: str) -> Saga | None:
        saga = cls(saga_id)
        saga._clock = self.clock
        for recorded in await _io.read_stream(self.store, cls.stream_name(saga_id)):
            saga._replay(recorded)
        return saga if saga.version >= 0 else None

    # -- deadlines ------------------------------------------------------------------------------

    async def fire(self, cls: type[Saga], deadline: Deadline) -> str:
        """Fire ``deadline`` if its saga still holds it pending: ``fired``, ``gone`` or ``held``
        (the saga is stuck; it fires once the saga is retried)."""
        async with self._locks.hold((cls, deadline.saga_id)):
            if deadline.name != RETRY_DEADLINE:
                return await retry_on_conflict_async(
                    functools.partial(self._fire_once, cls, deadline), attempts=self.attempts
                )
            seen: list[RecordedEvent] = []
            try:
                return await retry_on_conflict_async(
                    functools.partial(self._retry_due, cls, deadline, seen), attempts=self.attempts
                )
            except (StoreError, LeaseLostError):
                raise
            except Exception as exc:
                trigger = seen[0] if seen else self._trigger(cls, deadline.saga_id)
                await self._record_failure((cls, deadline.saga_id), trigger, exc)
                return "fired"

    async def _fire_once(self, cls: type[Saga], deadline: Deadline) -> str:
        saga, outcome = await self._take_due(cls, deadline)
        if saga is not None:
            await self._save(saga, None)
        return outcome

    async def _take_due(self, cls: type[Saga], deadline: Deadline) -> tuple[Saga | None, str]:
        """The saga with ``DeadlineFired`` raised (not saved yet) and ``fired``; or None and why not:
        ``gone`` (cancelled, replaced, fired, or the saga completed) or ``held`` (the saga is stuck)."""
        saga = await self._load(cls, deadline.saga_id)
        if saga is None or saga.completed:
            return None, "gone"
        pending = saga.deadlines.get(deadline.name)
        if pending is None or pending.scheduled_version != deadline.scheduled_version:
            return None, "gone"  # cancelled, replaced or fired since it was read
        if saga.stuck_reason is not None:
            return None, "held"
        await self.check_lease(f"fire deadline {deadline.name!r}")
        fired = DeadlineFired(
            cls.category, saga.id or "", pending.name, pending.due_at, pending.scheduled_version, self.clock()
        )
        saga.raise_event(
            fired, event_id=deadline_event_id(saga.stream, pending.name, pending.scheduled_version)
        )
        return saga, "fired"

    def _stepped(self, saga: Saga) -> None:
        if saga.version < 0:
            raise SagaError(f"{type(saga).__name__} {saga.id!r}: a start handler must raise an event")
        self.monitor.stepped(saga)

    # -- failures -------------------------------------------------------------------------------

    async def _record_failure(self, key: SagaKey, recorded: RecordedEvent, exc: Exception) -> None:
        """Record a failed step: a retry due later (transient, attempts left), or stuck and, under
        a retry policy, dead-lettered."""
        cls, saga_id = key
        policy = _policy(cls, recorded)

        async def record() -> str:
            saga = await self._load(cls, saga_id) or cls(saga_id)
            saga._clock = self.clock
            if saga.completed:
                return "completed"
            if recorded.version >= 0:
                position = recorded.position
            else:
                position = saga.failed_position or saga.stuck_event_position
            repeat = saga.failed_position == position and saga.failed_attempts > 0
            attempt = saga.failed_attempts + 1 if repeat else 1
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ConcurrencyError):
                reason = f"still conflicting after {self.attempts} attempts: {exc}"
            now = self.clock()
            if policy is not None and policy.retries(exc, attempt):
                retry_at = now + policy.delay(attempt)
                saga.raise_event(
                    StepFailed(
                        saga_id,
                        reason,
                        type(exc).__name__,
                        recorded.event_type,
                        position,
                        attempt,
                        retry_at,
                        now,
                    )
                )
                saga.schedule_deadline(RETRY_DEADLINE, at=retry_at)
                self.monitor.saved(saga)
                await self._save(saga, recorded.event_id)
                return "retrying"
            if policy is not None:
                first = saga.first_failed_at if repeat and saga.first_failed_at is not None else now
                why = "retries exhausted" if policy.is_transient(exc) else "permanent error"
                plural = "s" if attempt > 1 else ""
                reason = f"{reason} ({why} after {attempt} attempt{plural}; dead-lettered)"
                await self._dead_letter(saga, recorded, position, exc, attempt, first, now)
            if RETRY_DEADLINE in saga.deadlines:  # a stuck saga waits for a person, not a timer
                saga.cancel_deadline(RETRY_DEADLINE, "the saga is stuck")
            if self._stuck_event(saga, recorded, reason, position):
                await self._save(saga, recorded.event_id)
            return "dead-lettered" if policy is not None else "stuck"

        outcome = await retry_on_conflict_async(record, attempts=self.attempts)
        self.monitor.failed(key, recorded, exc, outcome)

    async def _dead_letter(
        self,
        saga: Saga,
        recorded: RecordedEvent,
        position: int,
        exc: Exception,
        attempts: int,
        first: datetime,
        now: datetime,
    ) -> None:
        await self.check_lease("park a dead letter")
        parked = MessageDeadLettered(
            dead_letter_id(saga.stream, position),
            type(saga).category,
            saga.id or "",
            saga.stream,
            recorded.event_type,
            recorded.stream,
            position,
            str(recorded.event_id),
            type(exc).__name__,
            str(exc),
            attempts,
            first,
            now,
        )
        # Parked before the saga is recorded stuck: a crash in between leaves a step that fails
        # again when redelivered, never a stuck saga without its record.
        await _io.append(self.store, DEAD_LETTER_STREAM, [parked], ANY)

    def _stuck_event(self, saga: Saga, recorded: RecordedEvent, reason: str, position: int) -> bool:
        if saga.completed:
            return False
        saga.raise_event(SagaStuck(saga.id or "", reason, recorded.event_type, position, self.clock()))
        self.monitor.saved(saga)
        return True

    # -- retries --------------------------------------------------------------------------------

    async def retry(self, saga_type: type[Saga], saga_id: str, *, only_if_stuck: bool = False) -> Saga:
        """Clear a recorded stuck state and resume the saga; see :meth:`SagaRunner.retry`."""
        key = (saga_type, saga_id)
        async with self._locks.hold(key):
            # The failure is recorded under the fence too: a runner that lost its lease while
            # the step ran must not write the saga stuck after the new holder took over.
            with fenced(await self.fence()):
                try:
                    return await retry_on_conflict_async(
                        functools.partial(self._retry_once, saga_type, saga_id, only_if_stuck),
                        attempts=self.attempts,
                    )
                except (StoreError, LeaseLostError):
                    raise
                except Exception as exc:
                    await self._record_failure(key, self._trigger(saga_type, saga_id), exc)
                    return await self.repository.load_async(saga_type, saga_id)

    async def release(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Clear a recorded stuck state without running anything (a discarded dead letter)."""
        async with self._locks.hold((saga_type, saga_id)):

            async def once() -> Saga:
                saga = await self.repository.load_async(saga_type, saga_id)
                saga._clock = self.clock
                if saga.stuck_reason is not None and not saga.completed:
                    await self.check_lease("release a saga")
                    saga.raise_event(SagaRetried(saga.id or "", self.clock()))
                    await self._save(saga, None)
                return saga

            return await retry_on_conflict_async(once, attempts=self.attempts)

    async def _retry_due(self, cls: type[Saga], deadline: Deadline, seen: list[RecordedEvent]) -> str:
        """The runner's retry deadline came due: run the failed step again, from the saga's state.

        ``DeadlineFired`` is saved with the step's first decisions (before its first command)."""
        saga, skipped = await self._take_due(cls, deadline)
        if saga is None:
            return skipped
        trigger = await self._read_at(saga.failed_position)
        seen[:] = [trigger] if trigger is not None else []
        outcome, cause = saga.resume(), None
        if outcome is None and trigger is not None:
            spec = cls.handlers.get(type(trigger.event))
            if spec is not None:
                self.monitor.delivered()
                outcome, cause = spec.method(saga, trigger.event), trigger.event_id
        await self._drive(saga, outcome, cause)
        self._stepped(saga)
        return "fired"

    async def _retry_once(self, saga_type: type[Saga], saga_id: str, only_if_stuck: bool = False) -> Saga:
        saga = await self.repository.load_async(saga_type, saga_id)
        saga._clock = self.clock
        if saga.completed or (only_if_stuck and saga.stuck_reason is None):
            return saga
        position = saga.stuck_event_position
        if saga.stuck_reason is not None:
            saga.raise_event(SagaRetried(saga.id or "", self.clock()))
            self.monitor.saved(saga)
        if RETRY_DEADLINE in saga.deadlines:  # this retry is the one the deadline waited for
            saga.cancel_deadline(RETRY_DEADLINE, "retried")
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


def _policy(cls: type[Saga], recorded: RecordedEvent) -> RetryPolicy | None:
    """The retry policy for a failed step: the handler's own, else the saga's."""
    event = recorded.event if recorded.version >= 0 else None
    method = None
    if isinstance(event, DeadlineFired):
        method = cls.deadline_handlers.get(event.name)
    elif event is not None:
        spec = cls.handlers.get(type(event))
        method = spec.method if spec is not None else None
    return _policy_of(method) or cls.retry_policy


def _correlation(saga: Saga) -> uuid.UUID:
    """The envelope correlation id of everything a saga writes: derived from its stream."""
    return _stream_correlation(saga.stream)


_stream_correlation = functools.lru_cache(maxsize=4096)(uuid5_in(_CORRELATION))
"""``uuid.uuid5(_CORRELATION, stream)``, remembered for the sagas in flight."""


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
