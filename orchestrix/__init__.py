"""orchestrix: event-sourced domain models and durable, compensating sagas."""

import logging as _logging

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

# Every module logs to the logger named after it, all under "orchestrix". A library adds no
# handler of its own beyond this one, which keeps Python's last-resort handler from printing
# orchestrix's warnings to stderr when the application has not configured logging.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

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
