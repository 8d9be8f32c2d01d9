"""Durable checkpoints in one small file, replaced atomically on every save."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
from typing import Any

from orchestrix.core._checks import check_checkpoint_name, check_checkpoint_position
from orchestrix.core.errors import StoreError, StoreFailedError, StoreFormatError
from orchestrix.infrastructure.file._io import fsync_directory
from orchestrix.infrastructure.file.errors import ReadOnlyStoreError

__all__ = ["FileCheckpointStore"]

_FORMAT = "orchestrix-checkpoints"
_VERSION = 1


class FileCheckpointStore:
    """Named positions in the JSON file ``path``; several processes may share it.

    Each save rewrites the file through a temporary file, fsync, rename and a directory fsync,
    so a crash leaves either the old or the new content, never a mix. ``read_only=True`` (a
    read-only store's checkpoints) loads and refuses every save (ReadOnlyStoreError). Names are data: they
    are keys inside the file, never file names.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path: str = os.fspath(path)
        self.read_only = read_only
        self._lock_path = self.path + ".lock"
        self._tmp_path = self.path + ".tmp"
        self._threads = threading.Lock()
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if os.path.isdir(self.path):
                raise StoreFormatError(self.path, "is a directory, not a checkpoint file")
            if not read_only:
                os.makedirs(directory, exist_ok=True)
            if os.path.exists(self.path):
                self._read()  # refuse a foreign or newer file now, not at the first save
        except OSError as exc:
            raise StoreError(f"cannot open checkpoint file {self.path}: {exc.strerror or exc}") from exc
        self._directory = directory

    def load(self, name: str) -> int:
        """The stored position for ``name``, or 0 if none was saved."""
        check_checkpoint_name(name)
        with self._threads:
            return self._read().get(name, 0)

    def save(self, name: str, position: int) -> None:
        """Store ``position`` for ``name``; durable when this returns."""
        check_checkpoint_name(name)
        check_checkpoint_position(position)
        if self.read_only:
            raise ReadOnlyStoreError(os.path.dirname(self.path), f"cannot save checkpoint {name!r}")
        with self._threads:
            try:
                lock = open(self._lock_path, "a")  # noqa: SIM115  (closed by the with below)
            except OSError as exc:
                reason = exc.strerror or exc
                raise StoreFailedError(f"cannot save checkpoints to {self.path}: {reason}") from exc
            with lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # read-modify-write against other processes
                positions = self._read()
                positions[name] = position
                self._replace(positions)

    async def load_async(self, name: str) -> int:
        """Asyncio form of :meth:`load`."""
        return await asyncio.to_thread(self.load, name)

    async def save_async(self, name: str, position: int) -> None:
        """Asyncio form of :meth:`save`."""
        await asyncio.to_thread(self.save, name, position)

    def _read(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            data: Any = json.loads(raw)
        except ValueError:
            raise StoreFormatError(self.path, "not an orchestrix checkpoint file (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise StoreFormatError(self.path, "not an orchestrix checkpoint file")
        version = data.get("version")
        if type(version) is not int or version > _VERSION:
            raise StoreFormatError(self.path, f"written by a newer format version {version!r}")
        positions = data.get("positions")
        if not isinstance(positions, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in positions.items()
        ):
            raise StoreFormatError(self.path, "malformed positions")
        return positions

    def _replace(self, positions: dict[str, int]) -> None:
        text = json.dumps({"format": _FORMAT, "version": _VERSION, "positions": positions}, sort_keys=True)
        try:
            fd = os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                data = memoryview(text.encode())
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp_path, self.path)
        except OSError as exc:  # a full disk, a file-size limit: the old checkpoints stay in force
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_path)
            raise StoreFailedError(
                f"cannot save checkpoints to {self.path}: {exc.strerror or exc}; the previous "
                "positions are still in force (a runner resumes from them and processes those events again)"
            ) from exc
        try:
            fsync_directory(self._directory)
        except OSError as exc:  # the new file is in place, but it may not survive a power loss
            raise StoreFailedError(
                f"cannot make the checkpoints in {self.path} durable: {exc.strerror or exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"FileCheckpointStore({self.path!r})"
