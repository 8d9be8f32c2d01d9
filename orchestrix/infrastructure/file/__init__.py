"""The durable, embedded file store: an append-only, checksummed log in a directory."""

from orchestrix.infrastructure.file.checkpoint import FileCheckpointStore
from orchestrix.infrastructure.file.errors import ReadOnlyStoreError
from orchestrix.infrastructure.file.snapshot import FileSnapshotStore
from orchestrix.infrastructure.file.store import FileEventStore

__all__ = ["FileCheckpointStore", "FileEventStore", "FileSnapshotStore", "ReadOnlyStoreError"]
