"""Aggregates, the repository, and the EventStore protocol."""

from orchestrix.core.eventsourcing.aggregate import (
    AggregateRepository,
    AggregateRoot,
    applies,
    retry_on_conflict,
    retry_on_conflict_async,
)
from orchestrix.core.eventsourcing.store import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventStore,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AggregateRepository",
    "AggregateRoot",
    "AppendResult",
    "EventStore",
    "applies",
    "retry_on_conflict",
    "retry_on_conflict_async",
]
