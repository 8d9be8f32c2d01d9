"""Checkpoints: how far a runner has processed a store's global order.

A runner stores the position of the last event it finished after handling it, so after a
restart it resumes right after that position; an event handled just before a crash may be
handled again (at-least-once), which idempotent handlers make harmless.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from orchestrix.core._checks import check_checkpoint_name, check_checkpoint_position

__all__ = ["CheckpointStore", "InMemoryCheckpointStore"]


@runtime_checkable
class CheckpointStore(Protocol):
    """Named positions that survive as long as the store behind them.

    A name is a non-empty printable str of at most 255 characters, a position an int from 0 to
    2**63-1; anything else raises :class:`~orchestrix.core.errors.InvalidCheckpointError` and
    saves nothing.
    """

    def load(self, name: str) -> int:
        """The stored position for ``name``, or 0 if none was saved."""
        ...

    def save(self, name: str, position: int) -> None:
        """Store ``position`` for ``name``; it must be durable when this returns."""
        ...

    async def load_async(self, name: str) -> int:
        """Asyncio form of :meth:`load`."""
        ...

    async def save_async(self, name: str, position: int) -> None:
        """Asyncio form of :meth:`save`."""
        ...


class InMemoryCheckpointStore:
    """Checkpoints in a dict; for tests and the in-memory store."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> int:
        """The stored position for ``name``, or 0."""
        check_checkpoint_name(name)
        with self._lock:
            return self._positions.get(name, 0)

    def save(self, name: str, position: int) -> None:
        """Store ``position`` for ``name``."""
        check_checkpoint_name(name)
        check_checkpoint_position(position)
        with self._lock:
            self._positions[name] = position

    async def load_async(self, name: str) -> int:
        """Asyncio form of :meth:`load`."""
        return self.load(name)

    async def save_async(self, name: str, position: int) -> None:
        """Asyncio form of :meth:`save`."""
        self.save(name, position)
