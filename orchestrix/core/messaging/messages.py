"""Commands, events and the envelope an event is stored in."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

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


def _uuid4_factory() -> Callable[[], uuid.UUID]:
    """``uuid.uuid4`` without the checks of ``UUID.__init__`` (a third of an append's id cost).

    Checked against the standard constructor at import; a Python whose UUID internals differ
    gets ``uuid.uuid4`` itself.
    """
    new, setattr_, from_bytes, urandom, safe = (
        object.__new__,
        object.__setattr__,
        int.from_bytes,
        os.urandom,
        uuid.SafeUUID.unknown,
    )
    uuid_cls = uuid.UUID
    clear = ~((0xF000 << 64) | (0xC000 << 48))
    version4 = (0x4000 << 64) | (0x8000 << 48)

    def uuid4() -> uuid.UUID:
        u = new(uuid_cls)
        setattr_(u, "int", (from_bytes(urandom(16)) & clear) | version4)
        setattr_(u, "is_safe", safe)
        return u

    try:
        made = uuid4()
        again = uuid.UUID(str(made))
        standard = made == again and hash(made) == hash(again)
        if standard and made.version == 4 and made.variant == uuid.RFC_4122:
            return uuid4
    except Exception:  # pragma: no cover - another Python's UUID internals
        pass
    return uuid.uuid4  # pragma: no cover


_new_id = _uuid4_factory()


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
