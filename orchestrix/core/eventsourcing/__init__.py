"""Aggregates, the repository, the EventStore protocol, and snapshots."""

from orchestrix.core.eventsourcing.aggregate import (
    AggregateRepository,
    AggregateRoot,
    applies,
    retry_on_conflict,
    retry_on_conflict_async,
)
from orchestrix.core.eventsourcing.fencing import Fence, Lease, current_fence, fenced
from orchestrix.core.eventsourcing.keys import KEY_EVENTS, KeyRefused, decided_once
from orchestrix.core.eventsourcing.snapshot import Snapshot, SnapshotStore
from orchestrix.core.eventsourcing.store import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventImport,
    EventStore,
    ImportedEvent,
    StreamAppend,
)

__all__ = [
    "ANY",
    "KEY_EVENTS",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AggregateRepository",
    "AggregateRoot",
    "AppendResult",
    "EventImport",
    "EventStore",
    "Fence",
    "ImportedEvent",
    "KeyRefused",
    "Lease",
    "Snapshot",
    "SnapshotStore",
    "StreamAppend",
    "applies",
    "current_fence",
    "decided_once",
    "fenced",
    "retry_on_conflict",
    "retry_on_conflict_async",
]
