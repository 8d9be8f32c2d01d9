"""Dead letters: messages a saga step or a projection could not take, parked in the store, never dropped.

A step that fails permanently, or runs out of attempts under its
:class:`~orchestrix.core.execution.retry.RetryPolicy`, gets a record in the stream
``orchestrix-dead-letters``: the message (event type, stream, position, id), the saga it was
for, the error, the number of attempts and the first and last failure times. The saga is
recorded stuck at the same time; the rest of its partition goes on.

An operator lists, retries or discards records through :class:`DeadLetters` (or the
``orchestrix dead-letters`` command). Retry and discard are *requests* stored in the same stream;
the saga runner that owns the saga carries them out when it reads them (retry: the saga runs
the step again; discard: the saga is released without it) and records the outcome, so they
work from any process, also one without the saga classes, and survive restarts. Everything
is folded from the stream, so a record's history stays visible.

Projections park events the same way (:class:`ProjectionEventDeadLettered`, ``kind ==
"projection"``) when a handler under a retry policy fails for good; the projection runner that
feeds that projection carries out the requests (retry: the handler runs on the event again;
discard: the record is closed). Under an *ordered* policy the projection stops instead, and
:class:`ProjectionEventFailed` records why in the same stream (not a dead letter: the event is
handed over again when the runner runs again).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import DeadLetterNotFoundError
from orchestrix.core.eventsourcing.store import ANY
from orchestrix.core.messaging.messages import Event

__all__ = [
    "DEAD_LETTER_EVENTS",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadLetterDiscardRequested",
    "DeadLetterResolved",
    "DeadLetterRetryRequested",
    "DeadLetters",
    "MessageDeadLettered",
    "ProjectionEventDeadLettered",
    "ProjectionEventFailed",
    "dead_letter_id",
    "projection_dead_letter_id",
]

DEAD_LETTER_STREAM = "orchestrix-dead-letters"

_IDS = uuid.UUID("c4a1e7d2-8b3f-4e56-a9d0-1f2e3d4c5b6a")


def dead_letter_id(saga_stream: str, position: int) -> str:
    """The id of the dead letter for the message at ``position`` failing in ``saga_stream``."""
    return str(uuid.uuid5(_IDS, f"{saga_stream}\x00{position}"))


def projection_dead_letter_id(projection: str, position: int) -> str:
    """The id of the dead letter for the event at ``position`` failing in projection ``projection``."""
    return str(uuid.uuid5(_IDS, f"projection\x00{projection}\x00{position}"))


@attrs.frozen
class MessageDeadLettered(Event):
    """A message was parked: its step failed permanently or ran out of attempts."""

    dead_letter_id: str
    saga_type: str
    saga_id: str
    saga_stream: str
    event_type: str
    stream: str
    position: int
    event_id: str
    error_type: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


@attrs.frozen
class ProjectionEventDeadLettered(Event):
    """A projection's handler failed for good on an event; the projection went on without it."""

    dead_letter_id: str
    projection: str
    event_type: str
    stream: str
    position: int
    event_id: str
    error_type: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


@attrs.frozen
class ProjectionEventFailed(Event):
    """A projection's handler failed for good under an ordered policy: the projection stopped before it."""

    projection: str
    event_type: str
    stream: str
    position: int
    event_id: str
    error_type: str
    error: str
    attempts: int
    occurred_at: datetime


@attrs.frozen
class DeadLetterRetryRequested(Event):
    """Someone asked the owning runner to run the parked message's step again."""

    dead_letter_id: str
    saga_type: str
    saga_id: str
    requested_at: datetime


@attrs.frozen
class DeadLetterDiscardRequested(Event):
    """Someone gave up on the parked message; the owning runner releases the saga without it."""

    dead_letter_id: str
    saga_type: str
    saga_id: str
    reason: str
    requested_at: datetime


@attrs.frozen
class DeadLetterResolved(Event):
    """The owning runner carried out a request.

    ``outcome`` is ``retried``, ``failed again`` or ``discarded``.
    """

    dead_letter_id: str
    outcome: str
    detail: str
    occurred_at: datetime


DEAD_LETTER_EVENTS: tuple[type, ...] = (
    MessageDeadLettered,
    DeadLetterRetryRequested,
    DeadLetterDiscardRequested,
    DeadLetterResolved,
    ProjectionEventDeadLettered,
    ProjectionEventFailed,
)
"""Register these with the store's serializer (``SAGA_EVENTS`` includes them)."""


@attrs.frozen
class DeadLetter:
    """One dead-letter record as it stands: ``status`` is ``parked``, ``retry requested``,
    ``discard requested``, ``retried`` or ``discarded``.

    ``kind`` is ``saga`` (the saga fields name the saga) or ``projection`` (``projection`` names
    it; the saga fields are empty)."""

    id: str
    saga_type: str
    saga_id: str
    saga_stream: str
    event_type: str
    stream: str
    position: int
    event_id: str
    error_type: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    status: str
    detail: str = ""
    kind: str = "saga"
    projection: str = ""

    @property
    def open(self) -> bool:
        """Parked or waiting for a request to be carried out (not yet retried or discarded)."""
        return self.status in ("parked", "retry requested", "discard requested")


def _fold(records: dict[str, DeadLetter], event: Any) -> None:
    """Apply one dead-letter event to ``records``."""
    if isinstance(event, MessageDeadLettered):
        records[event.dead_letter_id] = DeadLetter(
            event.dead_letter_id,
            event.saga_type,
            event.saga_id,
            event.saga_stream,
            event.event_type,
            event.stream,
            event.position,
            event.event_id,
            event.error_type,
            event.error,
            event.attempts,
            event.first_failed_at,
            event.last_failed_at,
            "parked",
        )
        return
    if isinstance(event, ProjectionEventDeadLettered):
        records[event.dead_letter_id] = DeadLetter(
            event.dead_letter_id,
            "",
            "",
            "",
            event.event_type,
            event.stream,
            event.position,
            event.event_id,
            event.error_type,
            event.error,
            event.attempts,
            event.first_failed_at,
            event.last_failed_at,
            "parked",
            kind="projection",
            projection=event.projection,
        )
        return
    record = records.get(getattr(event, "dead_letter_id", ""))
    if record is None:
        return
    if isinstance(event, DeadLetterRetryRequested) and record.status == "parked":
        records[record.id] = attrs.evolve(record, status="retry requested")
    elif isinstance(event, DeadLetterDiscardRequested) and record.status == "parked":
        records[record.id] = attrs.evolve(record, status="discard requested", detail=event.reason)
    elif isinstance(event, DeadLetterResolved):
        status = "discarded" if event.outcome == "discarded" else "retried"
        if event.outcome == "failed again":
            status = "parked"  # the step failed again: a new MessageDeadLettered usually follows
        records[record.id] = attrs.evolve(record, status=status, detail=event.detail)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeadLetters:
    """The dead-letter records of a store: list them, ask for a retry or a discard."""

    def __init__(self, store: Any, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.store = store
        self.clock = clock

    def list(self, *, include_closed: bool = False) -> builtins.list[DeadLetter]:
        """Open records (parked, or a request pending), oldest failure first; all with ``include_closed``."""
        return run_sync(self.list_async(include_closed=include_closed))

    async def list_async(self, *, include_closed: bool = False) -> builtins.list[DeadLetter]:
        """Asyncio form of :meth:`list`."""
        records = await self._records()
        found = [r for r in records.values() if include_closed or r.open]
        return sorted(found, key=lambda r: (r.first_failed_at, r.id))

    def get(self, dead_letter_id: str) -> DeadLetter:
        """The record with this id; DeadLetterNotFoundError if there is none."""
        return run_sync(self.get_async(dead_letter_id))

    async def get_async(self, dead_letter_id: str) -> DeadLetter:
        """Asyncio form of :meth:`get`."""
        record = (await self._records()).get(dead_letter_id)
        if record is None:
            raise DeadLetterNotFoundError(dead_letter_id)
        return record

    def retry(self, dead_letter_id: str) -> DeadLetter:
        """Ask the owning runner to run the parked step again; returns the record as it now stands.

        Raises DeadLetterNotFoundError for an unknown id or a record that is not parked.
        """
        return run_sync(self.retry_async(dead_letter_id))

    async def retry_async(self, dead_letter_id: str) -> DeadLetter:
        """Asyncio form of :meth:`retry`."""
        record = await self._parked(dead_letter_id)
        request = DeadLetterRetryRequested(record.id, record.saga_type, record.saga_id, self.clock())
        await _io.append(self.store, DEAD_LETTER_STREAM, [request], ANY)
        return attrs.evolve(record, status="retry requested")

    def discard(self, dead_letter_id: str, reason: str = "discarded by an operator") -> DeadLetter:
        """Give up on the parked message: the owning runner releases its saga without it."""
        return run_sync(self.discard_async(dead_letter_id, reason))

    async def discard_async(
        self, dead_letter_id: str, reason: str = "discarded by an operator"
    ) -> DeadLetter:
        """Asyncio form of :meth:`discard`."""
        record = await self._parked(dead_letter_id)
        request = DeadLetterDiscardRequested(
            record.id, record.saga_type, record.saga_id, reason, self.clock()
        )
        await _io.append(self.store, DEAD_LETTER_STREAM, [request], ANY)
        return attrs.evolve(record, status="discard requested", detail=reason)

    async def _parked(self, dead_letter_id: str) -> DeadLetter:
        record = await self.get_async(dead_letter_id)
        if record.status != "parked":
            raise DeadLetterNotFoundError(dead_letter_id, f"is {record.status}, not parked")
        return record

    async def _records(self) -> dict[str, DeadLetter]:
        records: dict[str, DeadLetter] = {}
        for recorded in await _io.read_stream(self.store, DEAD_LETTER_STREAM):
            _fold(records, recorded.event)
        return records
