"""In-process event store."""

from orchestrix.infrastructure.memory.store import InMemoryEventStore

__all__ = ["InMemoryEventStore"]
