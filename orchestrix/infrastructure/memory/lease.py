"""A lease granted through an InMemoryEventStore's fences: for tests and single-process runners.

Two leases of the same name on one store behave like two processes' claims of one partition:
the later :meth:`InMemoryLease.claim` takes the lease over, the earlier holder's
:meth:`~InMemoryLease.holds` turns false, and every append it makes under its old fence is
refused by the store. Tests use it to pause one runner and let another take over.
"""

from __future__ import annotations

from orchestrix.core.errors import LeaseLostError
from orchestrix.core.eventsourcing.fencing import Fence
from orchestrix.infrastructure.memory.store import InMemoryEventStore

__all__ = ["InMemoryLease"]


class InMemoryLease:
    """One holder's claim of lease ``name`` on ``store``."""

    def __init__(self, store: InMemoryEventStore, name: str) -> None:
        self.store = store
        self.name = name
        self._fence: Fence | None = None

    def claim(self) -> Fence:
        """Take the lease (over from any other holder) and return the fence of this grant."""
        self._fence = self.store.grant_fence(self.name)
        return self._fence

    def release(self) -> None:
        """Give the lease up; appends under its fence stay allowed until someone claims it again."""
        self._fence = None

    def holds(self) -> bool:
        """True while no later claim of this lease was granted."""
        return self._fence is not None and self.store.fence_generation(self.name) == self._fence.generation

    @property
    def fence(self) -> Fence:
        """The fence of this holder's grant; LeaseLostError once it no longer holds the lease."""
        if self._fence is None or not self.holds():
            raise LeaseLostError(self.name, "another holder claimed it, or it was released")
        return self._fence
