"""orchestrix: event-sourced domain models and durable, compensating sagas."""

from orchestrix.core.errors import (
    AggregateNotFoundError,
    ConcurrencyError,
    DomainError,
    OrchestrixError,
    SerializationError,
)
from orchestrix.core.eventsourcing import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AggregateRepository,
    AggregateRoot,
    AppendResult,
    EventStore,
    applies,
)
from orchestrix.core.messaging import Command, Event, NewEvent, RecordedEvent, Serializer

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AggregateNotFoundError",
    "AggregateRepository",
    "AggregateRoot",
    "AppendResult",
    "Command",
    "ConcurrencyError",
    "DomainError",
    "Event",
    "EventStore",
    "NewEvent",
    "OrchestrixError",
    "RecordedEvent",
    "SerializationError",
    "Serializer",
    "__version__",
    "applies",
]
