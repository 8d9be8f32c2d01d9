"""What a file store is given rather than deciding itself: its writer lock's timings and its I/O calls.

Tests pass their own policy (a hold long enough that no turn is given away mid-test, an I/O
that fails, holds or records its syncs) instead of patching module globals; a power-loss test
records every write and sync through :attr:`FilePolicy.io`.
"""

from __future__ import annotations

import math

import attrs

from orchestrix.infrastructure.file._io import FileIO
from orchestrix.infrastructure.file.errors import InvalidStoreOptionError


def _seconds(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if type(value) not in (int, float) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise InvalidStoreOptionError(
            f"policy.{attribute.name}", value, "a finite number of seconds, 0 or more"
        )


def _bytes(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 0:
        raise InvalidStoreOptionError(f"policy.{attribute.name}", value, "an int of bytes, 0 or more")


def _file_io(instance: object, attribute: attrs.Attribute[FileIO], value: object) -> None:
    if not isinstance(value, FileIO):
        raise InvalidStoreOptionError("policy.io", value, "a FileIO")


@attrs.frozen(kw_only=True)
class FilePolicy:
    """How a file store times its hold on the writer lock, and which calls do its file I/O.

    The defaults suit production; see :mod:`._lease` for how the timings interact.
    """

    lease: float = attrs.field(default=0.002, validator=_seconds)
    """Seconds an idle process keeps the writer lock at least, so back-to-back appends do not retake it."""
    lock_hold: float = attrs.field(default=0.05, validator=_seconds)
    """Seconds after which a busy process starts no more groups and lets go, so other processes write."""
    retake_pause: float = attrs.field(default=0.0005, validator=_seconds)
    """Seconds a process waits before it takes the writer lock again after letting go, so that a process
    blocked on the lock gets it first (``flock`` is not fair)."""
    reserve_margin: int = attrs.field(default=64 * 1024 * 1024, validator=_bytes)
    """Bytes of free disk space a segment's reservation always leaves alone: room for the index, the
    checkpoints and the records themselves when the disk is nearly full (reserving is then skipped)."""
    io: FileIO = attrs.field(factory=FileIO, validator=_file_io)
    """The system calls that change the log's files (:class:`~._io.FileIO`: ``os``'s own by default)."""


DEFAULT_POLICY = FilePolicy()
