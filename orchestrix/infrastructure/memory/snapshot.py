"""Snapshots in memory: for tests, and for the in-memory event store."""

from __future__ import annotations

import copy
import threading

from orchestrix.core._checks import check_stream_name
from orchestrix.core.eventsourcing.snapshot import (
    EncodedSnapshot,
    Snapshot,
    check_schema_version,
    decode_wanted,
    encode_snapshot,
    replaces,
)
from orchestrix.core.messaging.serializer import Serializer

__all__ = ["InMemorySnapshotStore"]


class InMemorySnapshotStore:
    """A thread-safe SnapshotStore in a dict.

    With a ``serializer``, each snapshot is encoded on save and decoded on load, exactly as the
    durable stores do. Without one, it is checked the same way (a state that a durable store
    would refuse is refused here too) and kept as a deep copy, so neither the aggregate that was
    saved nor the one loaded later shares state with what is stored.
    """

    def __init__(self, serializer: Serializer | None = None) -> None:
        self._serializer = serializer
        self._kept: dict[str, tuple[EncodedSnapshot, Snapshot | None]] = {}
        self._lock = threading.Lock()

    def save(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` unless a newer one of the same schema version is kept."""
        encoded = encode_snapshot(self._serializer, snapshot)
        kept = None if self._serializer is not None else copy.deepcopy(snapshot)
        with self._lock:
            stored = self._kept.get(snapshot.stream)
            if replaces(None if stored is None else stored[0], encoded):
                self._kept[snapshot.stream] = (encoded, kept)

    def load(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """The stream's snapshot (of ``schema_version``, if given), or None."""
        check_stream_name(stream)
        check_schema_version(schema_version)
        with self._lock:
            stored = self._kept.get(stream)
        if stored is None:
            return None
        encoded, kept = stored
        if self._serializer is None:
            wanted = schema_version is None or encoded.schema_version == schema_version
            return copy.deepcopy(kept) if wanted else None
        return decode_wanted(self._serializer, encoded, schema_version)

    def delete(self, stream: str) -> None:
        """Forget the stream's snapshot."""
        check_stream_name(stream)
        with self._lock:
            self._kept.pop(stream, None)

    async def save_async(self, snapshot: Snapshot) -> None:
        """Asyncio form of :meth:`save`."""
        self.save(snapshot)

    async def load_async(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """Asyncio form of :meth:`load`."""
        return self.load(stream, schema_version)

    async def delete_async(self, stream: str) -> None:
        """Asyncio form of :meth:`delete`."""
        self.delete(stream)
