"""Commands, events and the envelope an event is stored in."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from orchestrix.core.messaging._uuids import new_uuid4

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


T = TypeVar("T")


def slots_constructor(cls: type[T], probe: tuple[Any, ...]) -> Callable[..., T]:
    """``cls``'s constructor (all fields, positional) without attrs' frozen ``__setattr__``.

    Stores build these objects for every event they write or read; setting each slot through
    its descriptor costs half of what the generated ``__init__`` does. The result is checked
    against the real constructor on ``probe``; a class that is not a plain slotted attrs class
    gets its own constructor back.
    """
    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    try:
        setters = {f"s{k}": cls.__dict__[name].__set__ for k, name in enumerate(names)}
    except (KeyError, AttributeError):  # not slotted
        return cls
    args = ", ".join(f"a{k}" for k in range(len(names)))
    body = "".join(f"    s{k}(r, a{k})\n" for k in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, **setters}
    source = f"def make({args}):\n    r = new(cls)\n{body}    return r\n"
    exec(compile(source, f"<orchestrix constructor for {cls.__qualname__}>", "exec"), namespace)
    make: Callable[..., T] = namespace["make"]
    if len(probe) == len(names) and make(*probe) == cls(*probe):
        return make
    return cls  # pragma: no cover - attrs changed how it builds these classes


new_event: Callable[[Any, uuid.UUID, uuid.UUID | None, uuid.UUID | None], NewEvent] = slots_constructor(
    NewEvent, (None, uuid.UUID(int=1), None, uuid.UUID(int=2))
)
"""``NewEvent(event, event_id, correlation_id, causation_id)``, all four given, faster."""

new_recorded: Callable[..., RecordedEvent] = slots_constructor(
    RecordedEvent, (uuid.UUID(int=1), "s", 0, 1, datetime(1970, 1, 1, tzinfo=UTC), "T", None, None, None)
)
"""``RecordedEvent(...)`` with every field given, positionally, faster."""
