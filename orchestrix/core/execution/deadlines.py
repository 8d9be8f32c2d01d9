"""Durable deadlines: a saga asks to be woken at a time; the wake-up is an event in its own stream.

A saga step schedules a deadline with :meth:`Saga.schedule_deadline
<orchestrix.core.execution.saga.Saga.schedule_deadline>` (``DeadlineScheduled`` joins the
step's other events, saved before its next command) and cancels it with
:meth:`~orchestrix.core.execution.saga.Saga.cancel_deadline`; a method marked
``@on_deadline("name")`` handles it. No store schema is involved: a deadline is events, so it
survives restarts and is read back like any other state.

Firing is two moves, each on the saga runner's fenced step path:

1. once the runner's clock passes ``due_at``, the runner appends ``DeadlineFired`` to the saga's
   stream, if the deadline is still pending there (not cancelled, not replaced, not fired, the
   saga not completed). Its event id is derived from the stream, the deadline name and the
   version that scheduled it, so a second firing of the same schedule (a crash after the append,
   another runner after a takeover) is a no-op in the store or finds the deadline gone;
2. the runner then reads ``DeadlineFired`` from the store's global order like any event and
   hands it to the ``@on_deadline`` handler: at least once, as every delivery, and the handler
   decides from the saga's state, as every handler does.

A deadline that came due while no runner was up fires when a runner starts (it learns pending
deadlines from the history before its checkpoint, then from each page). A saga that completes
cancels its pending deadlines in the same save (``DeadlineCancelled``), so a reader without the
saga classes (``orchestrix deadlines list``) sees only live deadlines.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.execution.retry import RetryPolicy, _set_policy
from orchestrix.core.messaging.messages import Event

__all__ = [
    "DEADLINE_EVENTS",
    "Deadline",
    "DeadlineCancelled",
    "DeadlineFired",
    "DeadlineScheduled",
    "RESERVED_PREFIX",
    "deadline_event_id",
    "on_deadline",
    "pending_deadlines",
    "pending_deadlines_async",
]

RESERVED_PREFIX = "orchestrix."
"""Deadline names the runner uses itself (a step's retry); user deadlines may not start with it."""

_FIRED_IDS = uuid.UUID("5f1d2c8e-3b7a-4c19-9e0d-7a6b2f4c8d13")


@attrs.frozen
class DeadlineScheduled(Event):
    """A saga asked to be woken at ``due_at`` under ``name`` (replacing a pending one of that name)."""

    saga_id: str
    name: str
    due_at: datetime
    scheduled_at: datetime


@attrs.frozen
class DeadlineCancelled(Event):
    """A pending deadline will not fire: the saga cancelled it, or completed."""

    saga_id: str
    name: str
    reason: str
    occurred_at: datetime


@attrs.frozen
class DeadlineFired(Event):
    """A deadline came due and was fired; ``scheduled_version`` names the schedule it fired.

    ``saga_type`` (the saga's category) addresses the event to one saga class, as several
    classes may share saga ids.
    """

    saga_type: str
    saga_id: str
    name: str
    due_at: datetime
    scheduled_version: int
    fired_at: datetime


DEADLINE_EVENTS: tuple[type, ...] = (DeadlineScheduled, DeadlineCancelled, DeadlineFired)


@attrs.frozen
class Deadline:
    """A pending deadline: which saga, its name, when it is due, and the version that scheduled it."""

    saga_type: str
    saga_id: str
    stream: str
    name: str
    due_at: datetime
    scheduled_version: int


def deadline_event_id(stream: str, name: str, scheduled_version: int) -> uuid.UUID:
    """The id of the one ``DeadlineFired`` a schedule can have: the same in every process and run."""
    return uuid.uuid5(_FIRED_IDS, f"{stream}\x00{name}\x00{scheduled_version}")


def on_deadline(
    name: str, *, retry: RetryPolicy | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a saga method as the handler of its deadline ``name``.

    The method receives the :class:`DeadlineFired` event; like a ``@handles`` method it raises
    events, or is a generator that yields commands. ``retry`` overrides the saga's retry policy
    for this handler.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"on_deadline() needs a non-empty deadline name, not {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise TypeError(f"deadline names starting with {RESERVED_PREFIX!r} are the runner's own")

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        names: list[str] = list(getattr(func, "__orchestrix_deadlines__", ()))
        names.append(name)
        func.__orchestrix_deadlines__ = tuple(names)  # type: ignore[attr-defined]
        _set_policy(func, retry)
        return func

    return mark


class _DeadlineBook:
    """Pending deadlines folded from deadline events, keyed by (stream, name); no saga classes needed."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], Deadline] = {}

    def fold(self, stream: str, version: int, event: Any) -> Deadline | None:
        """Apply one stored event; returns the deadline it scheduled, if it scheduled one."""
        if isinstance(event, DeadlineScheduled):
            saga_type = stream[: len(stream) - len(event.saga_id) - 1]
            deadline = Deadline(saga_type, event.saga_id, stream, event.name, event.due_at, version)
            self.pending[(stream, event.name)] = deadline
            return deadline
        if isinstance(event, DeadlineCancelled | DeadlineFired):
            self.pending.pop((stream, event.name), None)
        return None


def pending_deadlines(store: Any) -> list[Deadline]:
    """Every pending deadline in ``store``, soonest first (read from the whole global order)."""
    return run_sync(pending_deadlines_async(store))


async def pending_deadlines_async(store: Any, page_size: int = 1000) -> list[Deadline]:
    """Asyncio form of :func:`pending_deadlines`."""
    book = _DeadlineBook()
    after = 0
    while True:
        page = await _io.read_all(store, after, page_size)
        for recorded in page:
            book.fold(recorded.stream, recorded.version, recorded.event)
        if len(page) < page_size:
            break
        after = page[-1].position
    return sorted(book.pending.values(), key=lambda d: (d.due_at, d.stream, d.name))
