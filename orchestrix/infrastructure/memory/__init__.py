"""In-process event store, its snapshots, and a lease granted through its fences."""

from orchestrix.infrastructure.memory.lease import InMemoryLease
from orchestrix.infrastructure.memory.snapshot import InMemorySnapshotStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore

__all__ = ["InMemoryEventStore", "InMemoryLease", "InMemorySnapshotStore"]
