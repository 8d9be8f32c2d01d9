"""Durable snapshots in a directory of their own: one small file per stream, replaced atomically.

A file store keeps them in the ``snapshots`` directory inside its own (``FileEventStore.snapshots()``),
apart from the log: a snapshot write never takes the log's writer lock, so it never holds up an
append, and the log's recovery never looks at snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import threading
import uuid
from typing import Any

from orchestrix.core._checks import check_stream_name
from orchestrix.core.errors import StoreError, StoreFormatError
from orchestrix.core.eventsourcing.snapshot import (
    EncodedSnapshot,
    Snapshot,
    check_schema_version,
    decode_wanted,
    encode_snapshot,
    replaces,
)
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file._io import fsync_directory

__all__ = ["SNAPSHOT_DIR", "FileSnapshotStore"]

SNAPSHOT_DIR = "snapshots"
"""The directory, inside a file store's, that ``FileEventStore.snapshots()`` keeps snapshots in."""

_FORMAT = "orchestrix-snapshot"
_VERSION = 1
_LOCK = "LOCK"
_SUFFIX = ".json"


class FileSnapshotStore:
    """A SnapshotStore in the directory ``path`` (created if missing); processes may share it.

    Each stream's snapshot is one JSON file named after a hash of the stream name (names are
    data, never paths). A save writes a temporary file, fsyncs it, renames it over the old one
    and fsyncs the directory, under the directory's own ``LOCK`` file, so a crash leaves the old
    snapshot or the new one, and two writers keep the newer. ``sync=False`` skips the fsyncs
    (for tests, like the file store's own option).
    """

    def __init__(self, path: str | os.PathLike[str], serializer: Serializer, *, sync: bool = True) -> None:
        self.path: str = os.fspath(path)
        self._serializer = serializer
        self._sync = sync
        self._threads = threading.Lock()
        try:
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                raise StoreFormatError(self.path, "is a file, not a snapshot directory")
            if not os.path.isdir(self.path):
                os.makedirs(self.path, exist_ok=True)
                if sync:
                    fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise StoreError(f"cannot open snapshot directory {self.path}: {exc.strerror or exc}") from exc

    def save(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` unless a newer one of the same schema version is kept; durable on return."""
        encoded = encode_snapshot(self._serializer, snapshot)
        path = self._file(snapshot.stream)
        text = json.dumps(
            {
                "format": _FORMAT,
                "format_version": _VERSION,
                "stream": encoded.stream,
                "version": encoded.version,
                "event_id": str(encoded.event_id),
                "schema_version": encoded.schema_version,
                "state_type": encoded.state_type,
                "state": encoded.state,
                "refusals": encoded.refusals,
            },
            ensure_ascii=False,
        )
        with self._locked():
            if replaces(self._read(path, snapshot.stream), encoded):
                self._replace(path, text.encode())

    def load(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """The stream's snapshot (of ``schema_version``, if given), or None."""
        check_stream_name(stream)
        check_schema_version(schema_version)
        return decode_wanted(self._serializer, self._read(self._file(stream), stream), schema_version)

    def delete(self, stream: str) -> None:
        """Forget the stream's snapshot."""
        check_stream_name(stream)
        with self._locked():
            try:
                os.unlink(self._file(stream))
            except FileNotFoundError:
                return
            if self._sync:
                fsync_directory(self.path)

    async def save_async(self, snapshot: Snapshot) -> None:
        """Asyncio form of :meth:`save`."""
        await asyncio.to_thread(self.save, snapshot)

    async def load_async(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """Asyncio form of :meth:`load`."""
        return await asyncio.to_thread(self.load, stream, schema_version)

    async def delete_async(self, stream: str) -> None:
        """Asyncio form of :meth:`delete`."""
        await asyncio.to_thread(self.delete, stream)

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        """Delete the snapshot directory ``path`` and the files this class writes in it."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            return
        for name in os.listdir(path):
            if name == _LOCK or name.endswith((_SUFFIX, ".tmp")):
                os.unlink(os.path.join(path, name))
        with contextlib.suppress(OSError):  # a file of the user's own stays, and so does the directory
            os.rmdir(path)

    # -- files ---------------------------------------------------------------------------------

    def _file(self, stream: str) -> str:
        return os.path.join(self.path, hashlib.sha256(stream.encode()).hexdigest() + _SUFFIX)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        with self._threads, open(os.path.join(self.path, _LOCK), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # read-compare-replace against other processes
            yield

    def _read(self, path: str, stream: str) -> EncodedSnapshot | None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            data: Any = json.loads(raw)
        except ValueError:
            raise StoreFormatError(path, "not an orchestrix snapshot file (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise StoreFormatError(path, "not an orchestrix snapshot file")
        version = data.get("format_version")
        if type(version) is not int or version > _VERSION:
            raise StoreFormatError(path, f"written by a newer format version {version!r}")
        fields = {
            "stream": str,
            "version": int,
            "event_id": str,
            "schema_version": int,
            "state_type": str,
            "state": str,
            "refusals": str,
        }
        for name, kind in fields.items():
            if type(data.get(name)) is not kind:
                raise StoreFormatError(path, f"malformed snapshot file: field {name!r}")
        if data["stream"] != stream:
            raise StoreFormatError(path, f"holds the snapshot of stream {data['stream']!r}, not {stream!r}")
        try:
            event_id = uuid.UUID(data["event_id"])
        except ValueError:
            raise StoreFormatError(path, "malformed snapshot file: field 'event_id'") from None
        return EncodedSnapshot(
            stream,
            data["version"],
            event_id,
            data["schema_version"],
            data["state_type"],
            data["state"],
            data["refusals"],
        )

    def _replace(self, path: str, data: bytes) -> None:
        tmp = path[: -len(_SUFFIX)] + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self._sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._sync:
            fsync_directory(self.path)

    def __repr__(self) -> str:
        return f"FileSnapshotStore({self.path!r})"
