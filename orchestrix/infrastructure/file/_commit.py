"""Group commit: concurrent appends of one process share writes and fdatasyncs, pipelined.

Each caller prepares its record (validation, encoding: :mod:`._request`) on its own thread and
queues it. One thread at a time is the *writer*: it takes everything queued, checks it
(expected versions, ids) and writes it with one ``pwrite`` as a *group* (:mod:`._group`). It
then syncs its group, while the next writer may already write the next group (at most
``MAX_IN_FLIGHT`` groups are written but not yet durable). Groups are published strictly in log
order, each only once it is on disk, and only then are their callers released: no caller sees
its append acknowledged before it is durable, and no reader sees a position before the ones
below it. Overlapping syncs let the kernel commit several groups in one journal flush.

The first writer of a burst takes the store's cross-process writer lock, which the process then
keeps for a short lease (:mod:`._lease`). Commit work in the main thread defers Ctrl-C until it
is done (:mod:`._sigint`).

Callers are threads (:meth:`GroupCommit.submit`: the caller at the head of the queue becomes the
writer) or asyncio tasks (:meth:`GroupCommit.submit_async`: the task awaits a future, and an
asyncio caller holds no thread while its append is in flight). A group of asyncio appends is
committed by the event loop itself while fdatasyncs are short (``loop_sync_max``): on a fast
disk the two thread wake-ups of a hand-over cost more than the sync. Otherwise, and whenever
the loop would have to wait for another process's lock or for an earlier group, a small pool
of writer threads writes and syncs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from typing import NoReturn

from orchestrix.core.errors import StoreClosedError, StoreFailedError
from orchestrix.infrastructure.file._group import Group, GroupWriter
from orchestrix.infrastructure.file._lease import WriterLease
from orchestrix.infrastructure.file._policy import FilePolicy
from orchestrix.infrastructure.file._request import Queued
from orchestrix.infrastructure.file._sigint import SigintDeferred
from orchestrix.infrastructure.file._view import LogView
from orchestrix.infrastructure.file._writer_threads import WriterThreads

MAX_IN_FLIGHT = 2
"""Groups that may be written and syncing at once."""
MIN_TO_OVERLAP = 3
"""Appends that must be waiting before a group is written while another one is still syncing."""


class GroupCommit:
    """The append side of one store: the queue, who writes next, and each group's way to its callers.

    Which lock guards what:

    =================================  ==================================================
    guarded by                         fields
    =================================  ==================================================
    ``lock`` (the commit lock;         ``_queue``, ``_writing``, ``_in_flight``, ``_seq``,
    ``_turn`` is its condition)        ``groups_done``, ``_turn_waiters``, ``_kicking``,
                                       ``_writers``, ``closed``; the lease's
                                       ``locked_since`` and ``idle_since``; a queued
                                       request's ``wake``, ``handed`` and ``done``
    the writing turn (held by the      taking the writer lock and catching up with other
    one thread that set                processes; clearing the lease's ``idle_since``;
    ``_writing``)                      the planner's ``written``; the group it writes
    the view's ``state`` lock          the planner's ``versions`` and ``ids``; the view's
                                       ``end`` and locator
    the lease keeper's own lock        the keeper's ``_keeper_parked``
    nothing                            ``failed``; the planner's ``sync_seconds``
    =================================  ==================================================

    Read without their lock, on purpose: ``failed`` is written once (the first failure wins)
    and read anywhere: a reader that sees it late fails one step later. The lease keeper reads
    ``closed``, ``groups_done``, :meth:`busy` and the lease's fields under its own lock only:
    a stale read just delays its next look. ``sync_seconds`` is a moving average (a race loses
    a sample). A request's ``result`` and ``error`` are set by the thread handling its group,
    before the request is released under the commit lock.
    """

    def __init__(self, view: LogView, segment_size: int, loop_sync_max: float, policy: FilePolicy) -> None:
        self.view = view
        self.loop_sync_max = loop_sync_max
        self.failed: StoreFailedError | None = None
        self.closed = False
        self.lock = threading.Lock()
        self._turn = threading.Condition(self.lock)
        self._turn_waiters = 0
        self._queue: list[Queued] = []
        self._writing = False
        self._in_flight: deque[Group] = deque()
        self._seq = 0
        self.groups_done = 0
        self._writers: WriterThreads | None = None  # for asyncio callers
        # loops with a writer start scheduled; plain weak references, as a WeakSet's Python-level
        # lookup cost every asyncio append a microsecond (a loop that dies leaves a dead key)
        self._kicking: set[weakref.ref[asyncio.AbstractEventLoop]] = set()
        self._lease = WriterLease(view.log.lock, policy, self)
        self._groups = GroupWriter(view, segment_size, self._fail)

    # -- the queue and who writes -------------------------------------------------------------

    def submit(self, request: Queued) -> None:
        """Commit ``request``; when this returns its ``result`` or ``error`` is set.

        Ctrl-C may end the caller's wait for its turn (its append is then taken back, unless a
        writer has it); the commit work itself finishes first (see :mod:`._sigint`).
        """
        with SigintDeferred():
            with self.lock:
                if self.closed or self.failed is not None:
                    self._refuse()
                self._queue.append(request)
                writer = self._may_start()
                if writer:
                    self._writing = True
                else:
                    request.wake = wake = threading.Lock()
                    wake.acquire()
            if writer:
                self._write_turn(request)
                return
        try:
            request.wake.acquire()  # type: ignore[union-attr]  # released when done, or to write
        except BaseException:  # Ctrl-C while waiting: take the append back unless it is under way
            with SigintDeferred():
                self._withdraw(request)
            raise
        if request.done:
            return
        with SigintDeferred():
            self._write_turn(request)

    def _withdraw(self, request: Queued) -> None:
        """Take back the append of a caller interrupted while waiting, if no writer has taken it.

        If it had just been told to write, the writing passes on; if a group holds it, it runs
        its course (its outcome is then unknown to the caller, as for any interrupted append).
        """
        with self.lock:
            if not self._take_back(request):
                return
            if request.handed:  # it was told to write (its wait may have ended, or not, before the interrupt)
                self._writing = False
                self._settle_lock()
                self.hand_over()
            if self._turn_waiters:
                self._turn.notify_all()

    def _take_back(self, request: Queued) -> bool:
        """Remove ``request`` from the queue if no writer took it and it is not done (lock held)."""
        if request.done or request not in self._queue:
            return False
        self._queue.remove(request)
        return True

    async def submit_async(self, request: Queued) -> None:
        """Asyncio form of :meth:`submit`: awaits the outcome without holding a thread.

        If the awaiting task is cancelled, the append still completes (or fails) on its own,
        like an append whose caller timed out: it may or may not be stored.
        """
        loop = asyncio.get_running_loop()
        request.loop = loop
        request.future = future = loop.create_future()
        with self.lock:
            if self.closed or self.failed is not None:
                self._refuse()
            self._queue.append(request)
            key = weakref.ref(loop)
            if key not in self._kicking:
                # Start the writer after the tasks that are ready now have queued their appends too:
                # the callers released by one group come back together, and should share the next.
                # (Per loop: a loop that stops before its kick runs must not hold up the others.)
                self._kicking.add(key)
                loop.call_soon(self._kick, loop)
        await future

    def _refuse(self) -> NoReturn:
        """Raise why nothing more is queued: the store is closed, or it failed (lock held)."""
        failed = self.failed
        if self.closed or failed is None:
            raise StoreClosedError(f"the file store at {self.view.path} is closed")
        raise failed

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            self._kicking.discard(weakref.ref(loop))
            if not (self._queue and self._may_start()):
                return
            self._writing = True
            if not self._may_write_inline():
                self._start_writer()
                return
        with SigintDeferred():  # asyncio.run's own handler raises nothing; a bare loop's would
            self._write_turn()

    def _may_write_inline(self) -> bool:
        """Whether the event loop may write and sync the next group itself (lock held).

        Handing a group to a writer thread and its outcome back costs two thread wake-ups, on
        a fast disk more than the fdatasync itself. So while syncs stay short, the loop commits
        inline, blocking only for that long; never when it would have to wait for another
        process's ``flock`` or for an earlier group, and never once syncs grow slow.
        """
        if self._lease.locked_since is None or self._in_flight:
            return False
        sync_seconds = self._groups.sync_seconds
        return sync_seconds is not None and sync_seconds <= self.loop_sync_max

    def _may_start(self) -> bool:
        """Whether a new group may be written now (lock held)."""
        if self._writing or len(self._in_flight) >= MAX_IN_FLIGHT:
            return False
        if self._in_flight and len(self._queue) < MIN_TO_OVERLAP:
            return False  # a tiny group would only take a sync from a bigger one: wait a little
        if self._lease.draining():
            if self._in_flight:
                return False  # held long enough: finish what is in flight, then let others in
            self._lease.release()
        return True

    def hand_over(self) -> None:
        """Wake the oldest queued caller to write the next group, if one may start (lock held)."""
        if self._queue and self._may_start():
            self._writing = True
            head = self._queue[0]
            wake = head.wake
            if wake is not None:
                head.handed = True
                wake.release()  # the caller wakes not done, and writes
            else:
                self._start_writer()

    def busy(self) -> bool:
        """Whether a group is being written or is in flight (what keeps the writer lock held)."""
        return self._writing or bool(self._in_flight)

    def _start_writer(self) -> None:
        """Write the next group in a pool thread, for a queue headed by an asyncio caller (lock held)."""
        if self._writers is None:
            self._writers = WriterThreads(self._write_turn, MAX_IN_FLIGHT)
        self._writers.start_one()

    def _settle_lock(self) -> None:
        """Once nothing is being written or in flight: let the writer lock go, or start its lease.

        (Lock held.) Whoever ends the last piece of work does it: the last group to complete, or
        a writer that wrote nothing because the store failed while it was starting.
        """
        lease = self._lease
        if self._in_flight or self._writing or lease.locked_since is None:
            return
        if lease.draining() or self.failed is not None or self.closed:
            lease.release()
        elif not self._queue:
            lease.idle()  # kept for the lease: the next append may follow

    def close(self) -> None:
        """Refuse new appends; return once the ones already queued are written."""
        with self.lock:
            self.closed = True
            while self._writing or self._in_flight or self._queue:
                # An asyncio append may wait for a writer start scheduled on its loop, which may
                # never run (the loop stopped, or it is this very thread, blocked in close).
                self.hand_over()
                self._wait_turn()
            if self._lease.locked_since is not None:
                self._lease.release()
        self._lease.close()
        if self._writers is not None:
            self._writers.stop()

    # -- a writer's turn --------------------------------------------------------------------------

    def _write_turn(self, own: Queued | None = None) -> None:
        """Write the queue as one group, let the next writer in, then sync and publish the group.

        ``own`` is the append of the thread that writes, when it is a caller: interrupted before
        its group took the queue (waiting for another process's lock), it takes that append back.
        """
        group = None
        try:
            group = self._write_group()
        except BaseException:
            if own is not None:
                with self.lock:
                    self._take_back(own)
            raise
        finally:
            with self.lock:
                self._writing = False
                self._settle_lock()  # nothing written (the store failed): no group completes to do it
                self.hand_over()  # the next group may be written while this one syncs
                if self.closed:
                    self._turn.notify_all()
        if group is not None:
            self._sync_and_publish(group)
            if group.interrupted is not None:
                raise group.interrupted

    def _write_group(self) -> Group | None:
        """Take the queue, check it, and write it (not yet synced); the writer lock is taken if needed."""
        view, lease, groups = self.view, self._lease, self._groups
        if self.failed is not None:  # never touch the log again: no repair, no second fsync
            self._abandon(self.failed)
            return None
        if lease.locked_since is None:  # nothing in flight: this process does not hold the lock yet
            try:
                lease.take()
            except OSError as exc:  # nothing written: these appends fail, the store stays usable
                self._abandon(
                    StoreFailedError(
                        f"the file store at {view.path} cannot take its writer lock ({exc}); "
                        "the appends waiting for it were not stored"
                    )
                )
                return None
            except Exception as exc:
                self._abandon(exc)
                return None
            # (Ctrl-C while waiting for the lock goes up from here; the queued appends are
            # handed to the next writer, not failed with it.)
            try:
                end = view.end
                if view.log.read_head() is not end or view.log.dangling(end):
                    view.catch_up_locked()  # another process wrote, or a writer died mid-commit
            except BaseException as exc:
                with self.lock:
                    lease.release()
                if isinstance(exc, OSError):  # a repair of the log failed half-way (a full disk)
                    exc = self._fail(f"failed while taking in the log's end ({exc})")
                self._abandon(exc)
                return None
            groups.restart()
        lease.idle_since = None
        with self.lock:
            self._seq += 1
            group = Group(self._seq, self._queue)
            self._queue = []
            self._in_flight.append(group)
        try:
            if self.failed is not None:
                group.error = self.failed
            else:
                with view.state:
                    group.planned = groups.plan(group)
                if group.planned:
                    groups.write(group)
        except BaseException as exc:  # a bug or an unexpected error: each caller of the group sees it
            failed = self._fail(f"failed unexpectedly ({exc!r})")  # the plan may or may not be written
            mine = exc if isinstance(exc, Exception) else failed  # an interrupt is this thread's alone
            for r in group.requests:
                if r.result is None and r.error is None:
                    r.error = mine
            group.entries = []
            if not isinstance(exc, Exception):
                group.interrupted = exc
        return group

    def _abandon(self, exc: BaseException) -> None:
        """Fail every queued request with ``exc``: the lock could not be taken, or catching up failed."""
        with self.lock:
            requests, self._queue = self._queue, []
            for r in requests:
                r.error = exc
            _release(requests)
            self._turn.notify_all()

    def _sync_and_publish(self, group: Group) -> None:
        """Make the group durable, wait for the groups before it, then publish it and release its callers.

        Whatever happens on the way (a bug, or Ctrl-C in a main-thread writer), the group still
        retires in log order and its callers get an outcome; otherwise every later append, and
        close(), would wait for it forever. An interrupt is raised again once that is done.
        """
        groups = self._groups
        interrupted: BaseException | None = None
        try:
            if group.entries and group.error is None and self.failed is None:
                # (after another group's failed sync, nothing is synced again: the group fails)
                groups.sync(group)
        except BaseException as exc:  # the sync's outcome is unknown: as good as failed
            group.error = self._fail(f"failed while syncing ({exc!r})")
            interrupted = exc
        while True:
            try:
                # Usually the group is the oldest in flight already (always for a lone writer):
                # knowing that needs no lock, as only the group's own writer ever retires it.
                if self._in_flight[0] is not group:
                    with self.lock:
                        while self._in_flight[0] is not group:
                            self._wait_turn()
                break
            except BaseException as exc:  # keep waiting: the groups before this one finish first
                interrupted = interrupted or exc
        error = group.error or self.failed  # a group before this one failed: this one is not safe
        published = False
        try:
            if error is None and group.entries:
                groups.publish(group)
                published = True
        except BaseException as exc:  # a bug: fail the group rather than leave its callers waiting
            error = self._fail(f"failed to publish ({exc!r})")
            interrupted = interrupted or exc
        self._complete(group, error, published)
        if interrupted is not None and not isinstance(interrupted, Exception):
            raise interrupted  # Ctrl-C or an exit, now that nobody is left waiting for this group

    def _complete(self, group: Group, error: StoreFailedError | None, published: bool) -> None:
        """Give the group's callers their outcome, retire the group, and pass the writing on.

        A published group's plan was forgotten as it was published.
        """
        if error is None:
            for r, _, _, result in group.planned:
                r.result = result
        else:
            for queued in group.requests:
                if queued.error is None:
                    queued.result, queued.error = None, error  # a replay may point into the failed group
        if not published:
            self._groups.forget(group)
        with self.lock:
            self._in_flight.popleft()
            self.groups_done += 1
            self._settle_lock()
            _release(group.requests)
            self.hand_over()
            if self._turn_waiters:
                self._turn.notify_all()

    def _wait_turn(self) -> None:
        self._turn_waiters += 1
        try:
            self._turn.wait()
        finally:
            self._turn_waiters -= 1

    def _fail(self, what: str) -> StoreFailedError:
        if self.failed is None:
            self.failed = StoreFailedError(
                f"the file store at {self.view.path} {what}; nothing more is written until it is "
                "reopened, and the last appends may or may not be stored"
            )
        return self.failed


def _release(requests: list[Queued]) -> None:
    """Mark requests done and wake their callers: threads directly, asyncio tasks once per loop."""
    loops: dict[asyncio.AbstractEventLoop, list[Queued]] = {}
    for r in requests:
        r.done = True
        if r.wake is not None:
            r.wake.release()
        elif r.loop is not None:
            loops.setdefault(r.loop, []).append(r)
    for loop, waiting in loops.items():
        if loop is _running_loop():  # committed inline by this loop: no thread to hop from
            _settle(waiting)
            continue
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these any more
            loop.call_soon_threadsafe(_settle, waiting)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(requests: list[Queued]) -> None:
    for r in requests:
        future = r.future
        if future is not None and not future.done():  # a cancelled caller leaves a done future
            future.set_result(None)
