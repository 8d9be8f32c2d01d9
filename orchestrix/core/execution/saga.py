"""Sagas (process managers): long-running work across aggregates, event-sourced in their own stream.

A saga is an :class:`~orchestrix.core.eventsourcing.aggregate.AggregateRoot` whose stream
``<category>-<saga id>`` records its progress, so a restarted process rebuilds it and resumes
where it stopped. The saga id is the *correlation id*: every event a saga handles carries it in
a named field (``correlation_field``, or ``correlate=`` per handler), and the runner uses it to
find the saga.

Handlers are declared with :func:`handles`. A handler is either a plain method that raises
events, or a generator that *yields commands* and receives each command's result (or has the
command's exception thrown in at the ``yield``)::

    class TransferSaga(Saga):
        category = "transfer"
        correlation_field = "transfer_id"
        terminal_events = (TransferCompleted, TransferFailed)

        @handles(TransferInitiated, start=True)
        def on_initiated(self, event):
            try:
                tx = yield WithdrawMoney(..., idempotency_key=self.key("debit"))
            except DomainError as refused:
                self.raise_event(TransferFailed(...))
                return
            self.raise_event(TransferDebited(...))

The runner saves the saga's pending events *before* it sends each command and after the handler
returns, so every decision is durable before the effect that follows it. Commands carry
deterministic idempotency keys (:meth:`Saga.key`), so a step that is run again after a crash or
a redelivery repeats its commands without repeating their effects. Because a step may run more
than once, a handler must decide from the saga's state, not from the event alone.

Lifecycle: a ``start=True`` handler may create the saga; an event for a saga that does not exist
and whose handler is not a start handler is *unmatched* (the runner logs and counts it).
Applying one of ``terminal_events`` completes the saga, and a completed saga ignores every later
event. A step that fails unexpectedly records :class:`SagaStuck`; a stuck saga holds further
events until :meth:`SagaRunner.retry <orchestrix.core.execution.runner.SagaRunner.retry>`
records :class:`SagaRetried` and runs it again.

Time: a step schedules a durable deadline with :meth:`Saga.schedule_deadline` and a method
marked :func:`~orchestrix.core.execution.deadlines.on_deadline` handles it when it comes due
(see :mod:`orchestrix.core.execution.deadlines`); :meth:`Saga.now` is the runner's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import attrs

from orchestrix._speedups import uuid5_in
from orchestrix.core.errors import InvalidDeadlineError, SagaError
from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies
from orchestrix.core.execution.dead_letters import DEAD_LETTER_EVENTS
from orchestrix.core.execution.deadlines import (
    DEADLINE_EVENTS,
    RESERVED_PREFIX,
    Deadline,
    DeadlineCancelled,
    DeadlineFired,
    DeadlineScheduled,
)
from orchestrix.core.execution.retry import RETRY_DEADLINE, RETRY_EVENTS, RetryPolicy, StepFailed, _set_policy
from orchestrix.core.messaging.messages import Event

__all__ = [
    "SAGA_EVENTS",
    "HandlerSpec",
    "Saga",
    "SagaRetried",
    "SagaRetryRequested",
    "SagaStep",
    "SagaStuck",
    "handles",
    "saga_event_id",
]

SagaStep = Generator[Any, Any, None]
"""What a generator handler is: it yields commands and receives their results."""

_EVENT_IDS = uuid.UUID("2b0f8a7e-5c0d-4e39-8f0e-6f3c1d9a4e21")
_event_id = uuid5_in(_EVENT_IDS)  # uuid.uuid5(_EVENT_IDS, name), a saga event or more per step


def saga_event_id(stream: str, version: int, event: Any) -> uuid.UUID:
    """The deterministic id of a saga event: the same decision at the same place has the same id.

    Re-saving a decision that is already stored is then a no-op in the store; a *different*
    decision at the same version gets a different id and loses the version race instead.
    """
    return _event_id(f"{stream}\x00{version}\x00{type(event).__qualname__}\x00{event!r}")


@attrs.frozen
class SagaStuck(Event):
    """A saga step failed in a way the saga did not handle; the saga waits for a retry."""

    saga_id: str
    reason: str
    event_type: str
    position: int
    occurred_at: datetime


@attrs.frozen
class SagaRetried(Event):
    """An operator (or a sweep) asked a stuck saga to run again."""

    saga_id: str
    occurred_at: datetime


@attrs.frozen
class SagaRetryRequested(Event):
    """Someone (``orchestrix sagas retry``) asked the owning runner to retry this stuck saga."""

    saga_id: str
    requested_at: datetime


SAGA_EVENTS: tuple[type, ...] = (
    SagaStuck,
    SagaRetried,
    SagaRetryRequested,
    *DEADLINE_EVENTS,
    *RETRY_EVENTS,
    *DEAD_LETTER_EVENTS,
)
"""The events every saga stream (and the dead-letter stream) may hold; register them with the
store's serializer."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class HandlerSpec:
    """How one event type reaches a saga: the method, whether it may start one, its correlation."""

    event_type: type
    method: Callable[..., Any]
    start: bool
    correlate: Callable[[Any], str | None]

    def correlation_id(self, event: Any) -> str | None:
        """The saga id ``event`` is addressed to, or None if it is addressed to no saga."""
        value = self.correlate(event)
        if value is None or value == "":
            return None
        return value if isinstance(value, str) else str(value)


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def handles(
    *event_types: type,
    start: bool = False,
    correlate: str | Callable[[Any], Any] | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[_Handler], _Handler]:
    """Mark a saga method as the handler of ``event_types``; the method keeps its own type.

    ``start=True`` lets the event create the saga when none exists for its correlation id.
    ``correlate`` names the event field holding the saga id (default: the saga class's
    ``correlation_field``) or is a function from the event to the saga id; a None or empty id
    means the event is addressed to no saga. ``retry`` overrides the saga's ``retry_policy``
    for this handler.
    """
    if not event_types:
        raise TypeError("handles() needs at least one event type")

    def mark(func: _Handler) -> _Handler:
        marks: list[tuple[tuple[type, ...], bool, str | Callable[[Any], Any] | None]]
        marks = list(getattr(func, "__orchestrix_handles__", ()))
        marks.append((event_types, start, correlate))
        func.__orchestrix_handles__ = tuple(marks)  # type: ignore[attr-defined]
        _set_policy(func, retry)
        return func

    return mark


def _field_getter(event_type: type, field: str, saga: type) -> Callable[[Any], Any]:
    if attrs.has(event_type) and field not in attrs.fields_dict(event_type):
        raise TypeError(
            f"{saga.__name__}: {event_type.__name__} has no field {field!r} to correlate by; "
            f"every event a saga handles must carry the saga id"
        )
    return lambda event: getattr(event, field)


class Saga(AggregateRoot):
    """Base class of event-sourced sagas; ``id`` is the correlation id.

    Subclasses set ``category`` (stream prefix), ``correlation_field`` (the event field that
    holds the saga id), ``terminal_events`` (events that complete the saga), declare handlers
    with :func:`handles` and apply handlers with :func:`~orchestrix.core.eventsourcing.aggregate.applies`.
    """

    correlation_field: ClassVar[str] = "saga_id"
    """The event field that carries the saga id, unless a handler says otherwise."""

    terminal_events: ClassVar[tuple[type, ...]] = ()
    """Applying one of these completes the saga; it then ignores every later event."""

    retry_policy: ClassVar[RetryPolicy | None] = None
    """How failed steps are retried and then dead-lettered; None: a failed step is stuck at once."""

    handlers: ClassVar[dict[type, HandlerSpec]] = {}

    deadline_handlers: ClassVar[dict[str, Callable[..., Any]]] = {}
    """The ``@on_deadline`` methods, by deadline name."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[type, HandlerSpec] = {}
        deadlines: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for member in vars(klass).values():
                for name in getattr(member, "__orchestrix_deadlines__", ()):
                    deadlines[name] = member
                for event_types, start, correlate in getattr(member, "__orchestrix_handles__", ()):
                    for event_type in event_types:
                        if correlate is None:
                            getter = _field_getter(event_type, cls.correlation_field, cls)
                        elif isinstance(correlate, str):
                            getter = _field_getter(event_type, correlate, cls)
                        else:
                            getter = correlate
                        specs[event_type] = HandlerSpec(event_type, member, start, getter)
        cls.deadline_handlers = deadlines
        if deadlines:
            specs[DeadlineFired] = HandlerSpec(
                DeadlineFired, Saga._deadline_fired, False, _deadline_correlation(cls.category)
            )
        cls.handlers = specs

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.completed: bool = False
        self.stuck_reason: str | None = None
        self.stuck_event_position: int = 0
        self.deadlines: dict[str, Deadline] = {}
        """Pending deadlines, by name."""
        self.retrying: StepFailed | None = None
        """The failure whose step waits for its retry deadline, if one does."""
        self.failed_position: int = 0
        self.failed_attempts: int = 0
        self.first_failed_at: datetime | None = None
        self._clock: Callable[[], datetime] = _utcnow

    @property
    def state(self) -> str:
        """A short description of where the saga is; subclasses usually return their status."""
        if self.completed:
            return "completed"
        if self.stuck_reason is not None:
            return "stuck"
        return "retrying" if self.retrying is not None else "open"

    @property
    def stream(self) -> str:
        """The saga's own stream."""
        if not self.id:
            raise SagaError(f"{type(self).__name__} has no id")
        return self.stream_name(self.id)

    def key(self, step: str) -> str:
        """The deterministic idempotency key of one step of this saga: ``<saga id>:<step>``."""
        if not self.id:
            raise SagaError(f"{type(self).__name__} has no id; a saga's id is its correlation id")
        return f"{self.id}:{step}"

    def now(self) -> datetime:
        """The current time by the clock of the runner driving the saga (the wall clock otherwise)."""
        return self._clock()

    def schedule_deadline(
        self, name: str, *, at: datetime | None = None, after: timedelta | None = None
    ) -> Deadline:
        """Schedule deadline ``name`` at ``at``, or ``after`` from :meth:`now`; replaces a pending one.

        The ``@on_deadline(name)`` handler runs once it is due, unless it is cancelled first or the
        saga completes. Raises InvalidDeadlineError (nothing scheduled) for a name no handler takes
        or a time that is not a timezone-aware datetime.
        """
        if name not in self.deadline_handlers and not (
            isinstance(name, str) and name.startswith(RESERVED_PREFIX)
        ):
            known = ", ".join(sorted(self.deadline_handlers)) or "none"
            raise InvalidDeadlineError(
                type(self).__name__, str(name), f"no @on_deadline handler takes it (handled: {known})"
            )
        if (at is None) == (after is None):
            raise InvalidDeadlineError(type(self).__name__, name, "give exactly one of at= and after=")
        if after is not None:
            if not isinstance(after, timedelta):
                raise InvalidDeadlineError(
                    type(self).__name__, name, f"after= must be a timedelta, not {type(after).__name__}"
                )
            at = self.now() + after
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise InvalidDeadlineError(
                type(self).__name__, name, f"the due time must be a timezone-aware datetime, not {at!r}"
            )
        self.raise_event(DeadlineScheduled(self.id or "", name, at, self.now()))
        return self.deadlines[name]

    def cancel_deadline(self, name: str, reason: str = "cancelled") -> bool:
        """Cancel pending deadline ``name``; False if none of that name is pending."""
        if name not in self.deadlines:
            return False
        self.raise_event(DeadlineCancelled(self.id or "", name, reason, self.now()))
        return True

    def _deadline_fired(self, event: DeadlineFired) -> SagaStep | None:
        handler = self.deadline_handlers.get(event.name)
        if handler is None:
            return None  # a deadline whose handler was removed since: nothing to run
        return handler(self, event)  # type: ignore[no-any-return]

    def _settle_deadlines(self) -> None:
        """A completed saga cancels what is still pending, so the store shows no live deadline."""
        if self.completed:
            for name in sorted(self.deadlines):
                self.raise_event(DeadlineCancelled(self.id or "", name, "saga completed", self.now()))

    def resume(self) -> SagaStep | None:
        """Continue from the current state after a retry; override in sagas driven by their state.

        The default returns None, and the runner then delivers again the event whose step got
        the saga stuck.
        """
        return None

    def mark_stuck(self, reason: str, now: datetime | None = None) -> None:
        """Record that the saga cannot go on by itself (a compensation that cannot be applied).

        It stays open and visible in :meth:`SagaRunner.stuck`; a retry calls :meth:`resume`.
        """
        self.raise_event(SagaStuck(self.id or "", reason, "", 0, now or datetime.now(UTC)))

    def raise_event(self, event: Any, *, event_id: uuid.UUID | None = None) -> None:
        """Apply ``event`` and queue it, with an id derived from the saga stream, version and content."""
        if event_id is None:
            event_id = saga_event_id(self.stream, self.version + 1, event)
        super().raise_event(event, event_id=event_id)

    def _apply(self, event: Any) -> None:
        super()._apply(event)
        if type(event) in self.terminal_events:
            self.completed = True

    @applies(SagaStuck)
    def _stuck(self, event: SagaStuck) -> None:
        self.stuck_reason = event.reason
        self.stuck_event_position = event.position

    @applies(SagaRetried)
    def _retried(self, event: SagaRetried) -> None:
        self.stuck_reason = None
        self.retrying = None
        self.failed_attempts = 0  # an operator's retry starts a fresh budget of attempts

    @applies(SagaRetryRequested)
    def _retry_requested(self, event: SagaRetryRequested) -> None:
        pass  # a request to the runner; the saga's state changes when the retry runs

    @applies(StepFailed)
    def _step_failed(self, event: StepFailed) -> None:
        if event.attempt == 1 or self.first_failed_at is None:
            self.first_failed_at = event.occurred_at
        self.retrying = event
        self.failed_position = event.position
        self.failed_attempts = event.attempt

    @applies(DeadlineScheduled)
    def _deadline_scheduled(self, event: DeadlineScheduled) -> None:
        self.deadlines[event.name] = Deadline(
            type(self).category,
            event.saga_id,
            self.stream_name(event.saga_id),
            event.name,
            event.due_at,
            self.version + 1,
        )

    @applies(DeadlineCancelled, DeadlineFired)
    def _deadline_gone(self, event: DeadlineCancelled | DeadlineFired) -> None:
        self.deadlines.pop(event.name, None)
        if event.name == RETRY_DEADLINE:
            self.retrying = None


def _deadline_correlation(category: str) -> Callable[[Any], str | None]:
    """DeadlineFired reaches the saga class it names; the runner's own deadlines reach no handler."""

    def correlate(event: Any) -> str | None:
        if event.saga_type != category or event.name.startswith(RESERVED_PREFIX):
            return None
        return event.saga_id  # type: ignore[no-any-return]

    return correlate
