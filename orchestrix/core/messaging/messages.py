"""Commands, events and the envelope an event is stored in."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import attrs

from orchestrix._speedups import new_uuid4

__all__ = ["Command", "Event", "NewEvent", "RecordedEvent"]


@attrs.frozen
class Command:
    """Base for commands: a request to change state, which may be refused.

    Subclass with ``@attrs.frozen`` and typed fields.
    """


@attrs.frozen
class Event:
    """Base for domain events: a fact that happened, named in the past tense.

    Subclass with ``@attrs.frozen`` and typed fields. Metadata (id, version, position,
    time, correlation) lives in the envelope, not in the event.
    """


_new_id = new_uuid4


@attrs.frozen
class NewEvent:
    """An event on its way into a store, with the id that makes re-appending it a no-op."""

    event: Any
    event_id: uuid.UUID = attrs.field(factory=_new_id)
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None


@attrs.frozen(slots=True)
class RecordedEvent:
    """An event as stored: the domain event inside its envelope."""

    event_id: uuid.UUID
    stream: str
    version: int
    position: int
    recorded_at: datetime
    event_type: str
    event: Any
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
