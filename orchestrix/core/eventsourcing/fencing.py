"""Fencing: appends made under a lease are refused by the store once the lease was granted again.

A lease (for example a saga runner's partition lease) tells its holder that it *was* the owner
when it last looked. Between that look and the effect of its next write there can be a pause of
any length (a stop-the-world pause, a VM migration, SIGSTOP), during which another process takes
the lease over. Checking the lease first narrows that window; only the resource can close it.

So every grant of a lease has a *generation* that only grows, and a :class:`Fence` names the
lease and the generation its holder acts under. While a fence is current (:func:`fenced`),
every append of a store that supports fencing checks, in the same transaction as the write,
that no newer generation of that lease has been granted; otherwise it raises
:class:`~orchestrix.core.errors.FencedError` and writes nothing. A new holder is granted its
generation *before* it reads anything, so each write of the old holder is either stored before
the takeover (and seen by the new holder) or refused: whatever the length of the pause.

The fence travels in a context variable, so a runner sets it once around a step and every
append made in that step — the saga's own and those of in-process command handlers, in the same
thread, a worker thread started with ``asyncio.to_thread`` or an awaited coroutine — carries it.
A receiver in another process must be handed :func:`current_fence` with the command.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["Fence", "Lease", "current_fence", "fenced"]


@attrs.frozen
class Fence:
    """A lease's name and the generation of the grant its holder acts under."""

    name: str
    generation: int

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a fence needs a non-empty name, not {self.name!r}")
        if type(self.generation) is not int or self.generation < 1:
            raise ValueError(f"a fence generation is an int >= 1, not {self.generation!r}")


@runtime_checkable
class Lease(Protocol):
    """What a saga runner needs from a lease: is it still held, and the fence of the current grant."""

    def holds(self) -> bool:
        """True while the lease is still this holder's (a check, possibly a round trip)."""
        ...

    @property
    def fence(self) -> Fence:
        """The fence of the current grant; LeaseLostError if the lease is not held."""
        ...


_current: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("orchestrix_fence", default=None)


def current_fence() -> Fence | None:
    """The fence appends made now act under, or None."""
    return _current.get()


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Make ``fence`` current for the appends made inside the block (None: no fence)."""
    token = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(token)
