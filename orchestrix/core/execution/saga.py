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
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import attrs

from orchestrix.core.errors import SagaError
from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies
from orchestrix.core.messaging.messages import Event

__all__ = [
    "SAGA_EVENTS",
    "HandlerSpec",
    "Saga",
    "SagaRetried",
    "SagaStep",
    "SagaStuck",
    "handles",
    "saga_event_id",
]

SagaStep = Generator[Any, Any, None]
"""What a generator handler is: it yields commands and receives their results."""

_EVENT_IDS = uuid.UUID("2b0f8a7e-5c0d-4e39-8f0e-6f3c1d9a4e21")


def saga_event_id(stream: str, version: int, event: Any) -> uuid.UUID:
    """The deterministic id of a saga event: the same decision at the same place has the same id.

    Re-saving a decision that is already stored is then a no-op in the store; a *different*
    decision at the same version gets a different id and loses the version race instead.
    """
    return uuid.uuid5(_EVENT_IDS, f"{stream}\x00{version}\x00{type(event).__qualname__}\x00{event!r}")


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


SAGA_EVENTS: tuple[type, ...] = (SagaStuck, SagaRetried)
"""The events every saga stream may hold; register them with the store's serializer."""


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
) -> Callable[[_Handler], _Handler]:
    """Mark a saga method as the handler of ``event_types``; the method keeps its own type.

    ``start=True`` lets the event create the saga when none exists for its correlation id.
    ``correlate`` names the event field holding the saga id (default: the saga class's
    ``correlation_field``) or is a function from the event to the saga id; a None or empty id
    means the event is addressed to no saga.
    """
    if not event_types:
        raise TypeError("handles() needs at least one event type")

    def mark(func: _Handler) -> _Handler:
        marks: list[tuple[tuple[type, ...], bool, str | Callable[[Any], Any] | None]]
        marks = list(getattr(func, "__orchestrix_handles__", ()))
        marks.append((event_types, start, correlate))
        func.__orchestrix_handles__ = tuple(marks)  # type: ignore[attr-defined]
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

    handlers: ClassVar[dict[type, HandlerSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[type, HandlerSpec] = {}
        for klass in reversed(cls.__mro__):
            for member in vars(klass).values():
                for event_types, start, correlate in getattr(member, "__orchestrix_handles__", ()):
                    for event_type in event_types:
                        if correlate is None:
                            getter = _field_getter(event_type, cls.correlation_field, cls)
                        elif isinstance(correlate, str):
                            getter = _field_getter(event_type, correlate, cls)
                        else:
                            getter = correlate
                        specs[event_type] = HandlerSpec(event_type, member, start, getter)
        cls.handlers = specs

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.completed: bool = False
        self.stuck_reason: str | None = None
        self.stuck_event_position: int = 0

    @property
    def state(self) -> str:
        """A short description of where the saga is; subclasses usually return their status."""
        if self.completed:
            return "completed"
        return "stuck" if self.stuck_reason is not None else "open"

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
