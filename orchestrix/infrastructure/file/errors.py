"""Errors only the file backend raises; each derives from the core hierarchy.

::

    BatchTooLargeError (ValueError)    one append's record would exceed the format's limit
    InvalidCheckpointError (ValueError) a checkpoint name or position that cannot be stored
    InvalidStoreOptionError (ValueError) a FileEventStore option out of its range
    ReadOnlyStoreError (StoreError)     a write to a store opened with ``read_only=True``
"""

from __future__ import annotations

from orchestrix.core.errors import OrchestrixError, StoreError

__all__ = ["BatchTooLargeError", "InvalidCheckpointError", "InvalidStoreOptionError", "ReadOnlyStoreError"]


class BatchTooLargeError(OrchestrixError, ValueError):
    """An append's events do not fit in one record; nothing was written."""

    def __init__(self, stream: str, size: int, limit: int) -> None:
        super().__init__(f"stream {stream!r}: the batch needs {size} bytes; one record holds at most {limit}")
        self.stream = stream
        self.size = size
        self.limit = limit


class InvalidCheckpointError(OrchestrixError, ValueError):
    """A checkpoint name or position is unusable; nothing was saved."""

    def __init__(self, value: object, reason: str) -> None:
        shown = value if not isinstance(value, str) or len(value) <= 60 else value[:60] + "…"
        super().__init__(f"invalid checkpoint {shown!r}: {reason}")
        self.value = value
        self.reason = reason


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
