"""Errors only the file backend raises; each derives from the core hierarchy.

::

    InvalidStoreOptionError (ValueError) a FileEventStore option out of its range
    ReadOnlyStoreError (StoreError)     a write to a store opened with ``read_only=True``

``BatchTooLargeError`` (``limit_name == "record_bytes"``) and ``InvalidCheckpointError`` are
the core's (:mod:`orchestrix.core.errors`), shared with the other stores; the names are kept
here so that older imports work.
"""

from __future__ import annotations

from orchestrix.core import errors as _core
from orchestrix.core.errors import OrchestrixError, StoreError

__all__ = ["BatchTooLargeError", "InvalidCheckpointError", "InvalidStoreOptionError", "ReadOnlyStoreError"]

BatchTooLargeError = _core.BatchTooLargeError
"""The core's :class:`~orchestrix.core.errors.BatchTooLargeError`, by its older import path."""

InvalidCheckpointError = _core.InvalidCheckpointError
"""The core's :class:`~orchestrix.core.errors.InvalidCheckpointError`, by its older import path."""


class InvalidStoreOptionError(OrchestrixError, ValueError):
    """A ``FileEventStore`` option is out of its range; nothing was opened or created."""

    def __init__(self, name: str, value: object, reason: str) -> None:
        super().__init__(f"FileEventStore option {name}={value!r}: {reason}")
        self.name = name
        self.value = value
        self.reason = reason


class ReadOnlyStoreError(StoreError):
    """An append or a checkpoint save on a file store opened read-only; nothing was written."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{what}: the file store at {path} is open read-only (read_only=True)")
        self.path = path
