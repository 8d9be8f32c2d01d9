"""The writer lock lease: how long this process keeps the store's cross-process writer lock.

The process holds the store's ``flock`` from the first write of a burst until ``lease`` seconds
after its last group is published (a small keeper thread gives it back; after a long burst up
to ``lock_hold`` later), so back-to-back appends skip retaking it. Under constant load it lets
go at least every ``lock_hold`` seconds, so that other processes get their turn, and then waits
``retake_pause`` before it takes the lock again: ``flock`` is not fair, and a process that took
it back at once kept it for several holds while another process waited. The timings come from
the store's :class:`~._policy.FilePolicy`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from orchestrix.infrastructure.file._lock import WriterLock
from orchestrix.infrastructure.file._policy import FilePolicy
from orchestrix.infrastructure.file._sigint import SigintDeferred


class LeaseOwner(Protocol):
    """What the lease needs of the commit that holds it."""

    lock: threading.Lock
    """The commit lock: it guards the lease's fields too."""
    closed: bool
    groups_done: int
    """Groups completed so far: how the keeper tells that appends went on."""

    def busy(self) -> bool:
        """Whether a group is being written or is in flight."""
        ...

    def hand_over(self) -> None:
        """Let the next queued caller write, if one may (commit lock held)."""
        ...


class WriterLease:
    """This process's hold on the writer lock, and the keeper thread that gives it back.

    ``locked_since`` (None: not held) and ``idle_since`` (None: appends are under way) are
    guarded by the owner's commit lock, except that the thread whose turn it is to write reads
    ``locked_since`` and clears ``idle_since`` without it. The keeper reads them under its own
    lock only: a stale read just delays its next look, and it checks again under the commit
    lock before letting go.
    """

    def __init__(self, lock: WriterLock, policy: FilePolicy, owner: LeaseOwner) -> None:
        self._writer_lock = lock
        self._owner = owner
        self._lease = policy.lease
        self._lock_hold = policy.lock_hold
        self._retake_pause = policy.retake_pause
        self.locked_since: float | None = None
        self.idle_since: float | None = None
        self._released_at = -1.0  # when this process last let go of the writer lock
        self._keeper_lock = threading.Condition(threading.Lock())
        self._keeper: threading.Thread | None = None
        self._keeper_parked = False  # waiting for the lock to be taken (keeper lock)

    def draining(self) -> bool:
        """Whether the lock has been held past ``lock_hold``: start no more groups, let go."""
        since = self.locked_since
        return since is not None and time.monotonic() - since > self._lock_hold

    def take(self) -> None:
        """Take the writer lock, open to Ctrl-C while waiting for another process (the writing turn's)."""
        # flock is not fair: retaken at once, after a drain, it was often this process's again
        pause = self._released_at + self._retake_pause - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        SigintDeferred.wait_interruptibly(self._writer_lock.__enter__)
        with self._owner.lock:
            self.locked_since = time.monotonic()
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="orchestrix-file-lease", daemon=True)
                self._keeper.start()
        with self._keeper_lock:
            if self._keeper_parked:  # only then: a keeper woken early would look too often
                self._keeper_lock.notify()

    def idle(self) -> None:
        """Nothing is written or in flight now: the lease starts (commit lock held)."""
        self.idle_since = time.monotonic()

    def release(self) -> None:
        """Give the writer lock back to other processes (commit lock held, nothing writing or in flight)."""
        self.locked_since = self.idle_since = None
        self._released_at = time.monotonic()
        self._writer_lock.__exit__(None, None, None)

    def close(self) -> None:
        """Stop the keeper (the owner is closed, and let the lock go)."""
        with self._keeper_lock:
            self._keeper_lock.notify_all()
        if self._keeper is not None:
            self._keeper.join()

    def _keep(self) -> None:
        """Release the writer lock once this process has been idle for ``lease`` seconds.

        While appends keep coming, the keeper looks less and less often (up to every
        ``lock_hold``): each look takes the GIL from the appenders, and looking every ``lease``
        cost a fifth of the throughput without fsync. A look that finds the process idle for
        ``lease`` lets go at once, so sparse appends still free the lock within a few ``lease``
        and a burst's end within ``lock_hold + lease``, the longest another process waits under
        load anyway. The keeper takes the commit lock only to let go.
        """
        owner, keeper_lock, lease, lock_hold = self._owner, self._keeper_lock, self._lease, self._lock_hold
        seen, wait = -1, lease
        while True:
            with keeper_lock:
                if self.locked_since is None:
                    if owner.closed:
                        return
                    seen, wait = -1, lease
                    self._keeper_parked = True
                    keeper_lock.wait()
                    self._keeper_parked = False
                    continue
                done, idle_since = owner.groups_done, self.idle_since
                if idle_since is None or owner.busy():
                    left = lease
                else:
                    left = lease - (time.monotonic() - idle_since)
                if left > 0:
                    if done != seen:  # appends went on since the last look: look later
                        seen, left = done, wait
                        wait = min(wait * 2, lock_hold)
                    else:
                        wait = lease
                    keeper_lock.wait(left)
                    continue
            with owner.lock:
                idle_since = self.idle_since
                if (
                    self.locked_since is not None
                    and idle_since is not None
                    and not owner.busy()
                    and time.monotonic() - idle_since >= lease
                ):
                    self.release()
                    owner.hand_over()
