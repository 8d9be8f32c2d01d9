"""Group commit: concurrent appends of one process share writes and fdatasyncs, pipelined.

Each caller prepares its record (validation, encoding) on its own thread and queues it. One
thread at a time is the *writer*: it takes everything queued, checks it (expected versions, ids)
and writes it with one ``pwrite`` as a *group*. It then syncs its group, while the next writer
may already write the next group (at most ``MAX_IN_FLIGHT`` groups are written but not yet
durable). Groups are published strictly in log order, each only once it is on disk, and only
then are their callers released: no caller sees its append acknowledged before it is durable,
and no reader sees a position before the ones below it. Overlapping syncs let the kernel commit
several groups in one journal flush.

The process holds the store's ``flock`` from the first write of a burst until ``LEASE`` after
its last group is published (a small keeper thread gives it back; after a long burst up to
``LOCK_HOLD`` later), so back-to-back appends skip retaking it; under constant load it lets go
at least every ``LOCK_HOLD`` seconds, so that other processes get their turn.

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
import logging
import os
import queue
import threading
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from orchestrix.core.errors import OrchestrixError, SerializationError, StoreClosedError, StoreFailedError
from orchestrix.core.eventsourcing.store import (
    AppendResult,
    check_expected_version,
    find_replayed_append,
    new_append_result,
    to_new_events,
    validate_expected_version,
    validate_stream_name,
)
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file._format import (
    FRAME_SIZE,
    MAX_BODY,
    SEAL,
    SEGMENT_HEADER_SIZE,
    U32,
    FormatProblem,
    Head,
    prepare_record,
    type_field,
)
from orchestrix.infrastructure.file._index import Entry
from orchestrix.infrastructure.file._view import LogView
from orchestrix.infrastructure.file.errors import BatchTooLargeError

MAX_IN_FLIGHT = 2
"""Groups that may be written and syncing at once."""
MIN_TO_OVERLAP = 3
"""Appends that must be waiting before a group is written while another one is still syncing."""
LOCK_HOLD = 0.05
"""Seconds after which a busy process stops starting groups, to let other processes write."""
NAMES_CACHED = 4096
"""Stream and type names a store keeps encoded; past that the cache starts over."""
RETAKE_PAUSE = 0.0005
"""Seconds a process waits before it takes the writer lock again, so that a process blocked on it
gets it first (at most once per ``LOCK_HOLD`` under constant load)."""
LEASE = 0.002
"""Seconds an idle process at least keeps the writer lock, so back-to-back appends do not retake it."""

_new: Callable[..., Any] = tuple.__new__  # builds NamedTuples without their Python-level __new__
_crc32 = zlib.crc32
_seal_into = SEAL.pack_into
_u32_into = U32.pack_into


class Request:
    """One caller's append: its encoded record, and then its outcome."""

    __slots__ = (
        "batch",
        "done",
        "error",
        "expected",
        "future",
        "handed",
        "ids",
        "loop",
        "record",
        "result",
        "stream",
        "wake",
    )

    def __init__(
        self, stream: str, batch: list[NewEvent], ids: tuple[bytes, ...], record: bytearray, expected: int
    ) -> None:
        self.stream = stream
        self.batch = batch
        self.ids = ids
        self.record = record
        self.expected = expected
        self.result: AppendResult | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake: threading.Lock | None = None
        self.handed = False  # its caller was told to write the next group
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[None] | None = None


def prepare(
    serializer: Serializer,
    names: dict[Any, bytes],
    stream: str,
    events: Sequence[NewEvent | Any],
    expected_version: int,
) -> Request:
    """Validate and encode an append outside every lock, so concurrent callers do it in parallel.

    ``names`` caches, per store, the UTF-8 form of stream names already checked and of type
    names already made into record fields: an append usually goes to a stream it has seen.
    """
    raw_stream = names.get(stream) if type(stream) is str else None
    if raw_stream is None:
        raw_stream = validate_stream_name(stream).encode()
        if len(names) >= NAMES_CACHED:
            names.clear()
        names[stream] = raw_stream
    if type(expected_version) is not int or expected_version < 0:  # the named modes, or bad input
        validate_expected_version(expected_version)
    batch = to_new_events(stream, events)
    encode = serializer.encode
    prepared = []
    for new in batch:
        type_name, payload = encode(new.event)
        field = names.get((type_name,))
        if field is None:
            try:
                field = names[(type_name,)] = type_field(type_name)
            except FormatProblem as exc:
                raise SerializationError(type_name, str(exc)) from None
        correlation, causation = new.correlation_id, new.causation_id
        prepared.append(
            (
                new.event_id.int.to_bytes(16, "big"),  # UUID.bytes, without its Python-level property
                None if correlation is None else correlation.bytes,
                None if causation is None else causation.bytes,
                field,
                payload,
            )
        )
    record = prepare_record(raw_stream, prepared)
    if len(record) - FRAME_SIZE > MAX_BODY:
        raise BatchTooLargeError(stream, len(record), MAX_BODY + FRAME_SIZE)
    ids = (prepared[0][0],) if len(prepared) == 1 else tuple([p[0] for p in prepared])
    return Request(stream, batch, ids, record, expected_version)


class _Group:
    """Requests written together; synced and published as one."""

    __slots__ = ("entries", "error", "interrupted", "planned", "requests", "segment", "seq")

    def __init__(self, seq: int, requests: list[Request]) -> None:
        self.seq = seq
        self.requests = requests
        self.planned: list[tuple[Request, int, int, AppendResult]] = []
        self.entries: list[Entry] = []
        self.segment: Any = None
        self.error: StoreFailedError | None = None
        self.interrupted: BaseException | None = None  # Ctrl-C in the writer: raised once retired


class GroupCommit:
    """The append side of one store: the queue, the writer hand-over, and the commit itself."""

    def __init__(self, view: LogView, segment_size: int, loop_sync_max: float) -> None:
        self.view = view
        self.segment_size = segment_size
        self.loop_sync_max = loop_sync_max
        self.failed: StoreFailedError | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._turn_waiters = 0
        self._queue: list[Request] = []
        self._writing = False
        self._in_flight: deque[_Group] = deque()
        self._locked_since: float | None = None
        self._idle_since: float | None = None
        self._lease = threading.Condition(threading.Lock())  # the keeper's own: see _keep_lease
        self._keeper: threading.Thread | None = None
        self._keeper_parked = False  # waiting for the lock to be taken (the lease keeper's own lock)
        self._released_at = -1.0  # when this process last let go of the writer lock
        self._writers: _WriterThreads | None = None  # for asyncio callers
        # loops with a writer start scheduled; plain weak references, as a WeakSet's Python-level
        # lookup cost every asyncio append a microsecond (a loop that dies leaves a dead key)
        self._kicking: set[weakref.ref[asyncio.AbstractEventLoop]] = set()
        self._seq = 0
        self._done = 0  # groups completed: how the lease keeper tells that appends went on
        self._sync_seconds: float | None = None  # moving average of fdatasync times; None: none yet
        # what the groups written but not yet published changed, for planning the next ones
        self._written = view.end
        self._versions: dict[str, tuple[int, int]] = {}
        self._ids: dict[bytes, tuple[str, int, int]] = {}

    # -- the queue and who writes -------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Commit ``request``; when this returns its ``result`` or ``error`` is set.

        Ctrl-C may end the caller's wait for its turn (its append is then taken back, unless a
        writer has it); the commit work itself finishes first (see :class:`_SigintDeferred`).
        """
        with _SigintDeferred():
            with self._lock:
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
            with _SigintDeferred():
                self._withdraw(request)
            raise
        if request.done:
            return
        with _SigintDeferred():
            self._write_turn(request)

    def _withdraw(self, request: Request) -> None:
        """Take back the append of a caller interrupted while waiting, if no writer has taken it.

        If it had just been told to write, the writing passes on; if a group holds it, it runs
        its course (its outcome is then unknown to the caller, as for any interrupted append).
        """
        with self._lock:
            if not self._take_back(request):
                return
            if request.handed:  # it was told to write (its wait may have ended, or not, before the interrupt)
                self._writing = False
                self._settle_lock()
                self._hand_over()
            if self._turn_waiters:
                self._turn.notify_all()

    def _take_back(self, request: Request) -> bool:
        """Remove ``request`` from the queue if no writer took it and it is not done (lock held)."""
        if request.done or request not in self._queue:
            return False
        self._queue.remove(request)
        return True

    async def submit_async(self, request: Request) -> None:
        """Asyncio form of :meth:`submit`: awaits the outcome without holding a thread.

        If the awaiting task is cancelled, the append still completes (or fails) on its own,
        like an append whose caller timed out: it may or may not be stored.
        """
        loop = asyncio.get_running_loop()
        request.loop = loop
        request.future = future = loop.create_future()
        with self._lock:
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
        with self._lock:
            self._kicking.discard(weakref.ref(loop))
            if not (self._queue and self._may_start()):
                return
            self._writing = True
            if not self._may_write_inline():
                self._start_writer()
                return
        with _SigintDeferred():  # asyncio.run's own handler raises nothing; a bare loop's would
            self._write_turn()

    def _may_write_inline(self) -> bool:
        """Whether the event loop may write and sync the next group itself (lock held).

        Handing a group to a writer thread and its outcome back costs two thread wake-ups, on
        a fast disk more than the fdatasync itself. So while syncs stay short, the loop commits
        inline, blocking only for that long; never when it would have to wait for another
        process's ``flock`` or for an earlier group, and never once syncs grow slow.
        """
        if self._locked_since is None or self._in_flight:
            return False
        return self._sync_seconds is not None and self._sync_seconds <= self.loop_sync_max

    def _write_turn(self, own: Request | None = None) -> None:
        """Write the queue as one group, let the next writer in, then sync and publish the group.

        ``own`` is the append of the thread that writes, when it is a caller: interrupted before
        its group took the queue (waiting for another process's lock), it takes that append back.
        """
        group = None
        try:
            group = self._write_group()
        except BaseException:
            if own is not None:
                with self._lock:
                    self._take_back(own)
            raise
        finally:
            with self._lock:
                self._writing = False
                self._settle_lock()  # nothing written (the store failed): no group completes to do it
                self._hand_over()  # the next group may be written while this one syncs
                if self.closed:
                    self._turn.notify_all()
        if group is not None:
            self._sync_and_publish(group)
            if group.interrupted is not None:
                raise group.interrupted

    def _start_writer(self) -> None:
        """Write the next group in a pool thread, for a queue headed by an asyncio caller (lock held)."""
        if self._writers is None:
            self._writers = _WriterThreads(self._write_turn, MAX_IN_FLIGHT)
        self._writers.start_one()

    def close(self) -> None:
        """Refuse new appends; return once the ones already queued are written."""
        with self._lock:
            self.closed = True
            while self._writing or self._in_flight or self._queue:
                # An asyncio append may wait for a writer start scheduled on its loop, which may
                # never run (the loop stopped, or it is this very thread, blocked in close).
                self._hand_over()
                self._wait_turn()
            if self._locked_since is not None:
                self._release_lock()
        with self._lease:
            self._lease.notify_all()
        if self._keeper is not None:
            self._keeper.join()
        if self._writers is not None:
            self._writers.stop()

    def _settle_lock(self) -> None:
        """Once nothing is being written or in flight: let the writer lock go, or start its lease.

        (Lock held.) Whoever ends the last piece of work does it: the last group to complete, or
        a writer that wrote nothing because the store failed while it was starting.
        """
        if self._in_flight or self._writing or self._locked_since is None:
            return
        if self._draining() or self.failed is not None or self.closed:
            self._release_lock()
        elif not self._queue:
            self._idle_since = time.monotonic()  # kept for LEASE: the next append may follow

    def _release_lock(self) -> None:
        """Give the writer lock back to other processes (lock held, nothing writing or in flight)."""
        self._locked_since = self._idle_since = None
        self._released_at = time.monotonic()
        self.view.log.lock.__exit__(None, None, None)

    def _keep_lease(self) -> None:
        """Release the writer lock once this process has been idle for ``LEASE`` seconds.

        While appends keep coming, the keeper looks less and less often (up to every
        ``LOCK_HOLD``): each look takes the GIL from the appenders, and looking every ``LEASE``
        cost a fifth of the throughput without fsync. A look that finds the process idle for
        ``LEASE`` lets go at once, so sparse appends still free the lock within a few ``LEASE``
        and a burst's end within ``LOCK_HOLD + LEASE``, the longest another process waits under
        load anyway. The keeper reads the commit state under its own lock and takes the commit
        lock only to let go.
        """
        lease = self._lease
        seen, wait = -1, LEASE
        while True:
            with lease:
                if self._locked_since is None:
                    if self.closed:
                        return
                    seen, wait = -1, LEASE
                    self._keeper_parked = True
                    lease.wait()
                    self._keeper_parked = False
                    continue
                done, idle_since = self._done, self._idle_since
                if idle_since is None or self._writing or self._in_flight:
                    left = LEASE
                else:
                    left = LEASE - (time.monotonic() - idle_since)
                if left > 0:
                    if done != seen:  # appends went on since the last look: look later
                        seen, left = done, wait
                        wait = min(wait * 2, LOCK_HOLD)
                    else:
                        wait = LEASE
                    lease.wait(left)
                    continue
            with self._lock:
                idle_since = self._idle_since
                if (
                    self._locked_since is not None
                    and idle_since is not None
                    and not (self._writing or self._in_flight)
                    and time.monotonic() - idle_since >= LEASE
                ):
                    self._release_lock()
                    self._hand_over()

    def _draining(self) -> bool:
        return self._locked_since is not None and time.monotonic() - self._locked_since > LOCK_HOLD

    def _may_start(self) -> bool:
        """Whether a new group may be written now (lock held)."""
        if self._writing or len(self._in_flight) >= MAX_IN_FLIGHT:
            return False
        if self._in_flight and len(self._queue) < MIN_TO_OVERLAP:
            return False  # a tiny group would only take a sync from a bigger one: wait a little
        if self._draining():
            if self._in_flight:
                return False  # held long enough: finish what is in flight, then let others in
            self._release_lock()
        return True

    def _hand_over(self) -> None:
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

    # -- writing a group ------------------------------------------------------------------------

    def _write_group(self) -> _Group | None:
        """Take the queue, check it, and write it (not yet synced); the writer lock is taken if needed."""
        view = self.view
        log = view.log
        if self.failed is not None:  # never touch the log again: no repair, no second fsync
            self._abandon(self.failed)
            return None
        if self._locked_since is None:  # nothing in flight: this process does not hold the lock yet
            # flock is not fair: retaken at once, after a drain, it was often this process's again
            pause = self._released_at + RETAKE_PAUSE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                _SigintDeferred.wait_interruptibly(log.lock.__enter__)
            except Exception as exc:
                self._abandon(exc)
                return None
            # (Ctrl-C while waiting for the lock goes up from here; the queued appends are
            # handed to the next writer, not failed with it.)
            with self._lock:
                self._locked_since = time.monotonic()
                if self._keeper is None:
                    self._keeper = threading.Thread(
                        target=self._keep_lease, name="orchestrix-file-lease", daemon=True
                    )
                    self._keeper.start()
            with self._lease:
                if self._keeper_parked:  # only then: a keeper woken early would look too often
                    self._lease.notify()
            try:
                end = view.end
                if log.read_head() is not end or log.dangling(end):
                    view.catch_up_locked()  # another process wrote, or a writer died mid-commit
            except BaseException as exc:
                with self._lock:
                    self._release_lock()
                self._abandon(exc)
                return None
            self._written = view.end
        self._idle_since = None
        with self._lock:
            self._seq += 1
            group = _Group(self._seq, self._queue)
            self._queue = []
            self._in_flight.append(group)
        try:
            if self.failed is not None:
                group.error = self.failed
            else:
                with view.state:
                    group.planned = self._plan(group)
                if group.planned:
                    self._write(group)
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
        with self._lock:
            requests, self._queue = self._queue, []
            for r in requests:
                r.error = exc
            _release(requests)
            self._turn.notify_all()

    def _plan(self, group: _Group) -> list[tuple[Request, int, int, AppendResult]]:
        """Check each request against the log, the groups in flight and the ones before it."""
        view = self.view
        tail_ids, written_ids, versions = view.tail.ids, self._ids, self._versions
        indexed: dict[bytes, int] = {}
        if view.tail.bound:
            unknown = [i for r in group.requests for i in r.ids if i not in tail_ids and i not in written_ids]
            if unknown:
                unknown = view.seen.may_hold_ids(unknown)  # fresh ids: certainly not in the index
            if unknown:
                indexed = view.index.positions_of(unknown)
        position = self._written.position
        seq = group.seq
        in_tail = view.tail.streams.get
        planned = []
        for r in group.requests:
            stream, ids = r.stream, r.ids
            try:
                for i in ids:
                    if i in tail_ids or i in written_ids or i in indexed:  # perhaps a retry
                        r.result = find_replayed_append(
                            stream, r.batch, lambda event_id: self._place(event_id, indexed)
                        )
                        break
                if r.result is not None:
                    continue
                written = versions.get(stream)
                if written is not None:
                    current = written[0]
                else:
                    mine = in_tail(stream)  # the stream's records this process knows (most appends)
                    current = mine[-1].version + mine[-1].count - 1 if mine else view.version_locked(stream)
                if r.expected != current:
                    check_expected_version(stream, r.expected, current)
            except OrchestrixError as exc:
                r.error = exc
                continue
            version = current + 1
            position += 1
            n = len(ids)
            if n == 1:
                result = new_append_result(stream, (version,), (position,))
                written_ids[ids[0]] = (stream, version, position)
            else:
                result = new_append_result(
                    stream, tuple(range(version, version + n)), tuple(range(position, position + n))
                )
                for k, i in enumerate(ids):
                    written_ids[i] = (stream, version + k, position + k)
            versions[stream] = (current + n, seq)
            planned.append((r, position, version, result))
            position += n - 1
        return planned

    def _place(self, event_id: uuid.UUID, indexed: dict[bytes, int]) -> tuple[str, int, int] | None:
        """Where an event id is stored: in a group in flight, the tail, or (found in the log) the index."""
        raw = event_id.bytes
        found = self._ids.get(raw) or self.view.tail.ids.get(raw)
        if found is None and raw in indexed:
            found = self.view.place_at(indexed[raw], raw)
        return found

    def _write(self, group: _Group) -> None:
        log = self.view.log
        planned = group.planned
        end = self._written
        recorded_us = time.time_ns() // 1000
        try:
            records = [p[0].record for p in planned]
            size = sum(map(len, records))
            if end.offset > SEGMENT_HEADER_SIZE and end.offset + size > self.segment_size:
                log.seal(log.segment(end.segment), end.offset)
                segment = log.create_segment(end.segment + 1, end.position)
                end = Head(end.position, segment.number, SEGMENT_HEADER_SIZE)
            else:
                segment = log.segment(end.segment)
            group_offset = offset = end.offset
            number = segment.number
            entries = group.entries
            durable = self.view.end.position  # what recovery needs to tell a torn write from damage
            for r, position, version, _ in planned:
                record = r.record
                _seal_into(record, FRAME_SIZE, durable, position, version, recorded_us)
                crc = _crc32(memoryview(record)[8:])
                _u32_into(record, 4, crc)
                size = len(record)
                fields = (position, len(r.ids), version, r.stream, number, offset, size, crc, r.ids)
                entries.append(_new(Entry, fields))
                offset += size
            log.write(
                segment, group_offset, records[0] if len(records) == 1 else b"".join(records), sync=False
            )
        except OSError as exc:
            group.error = self._fail(f"failed to write ({exc})")
            return
        group.segment = segment
        last = entries[-1]
        self._written = _new(Head, (last.position + last.count - 1, number, offset))

    # -- syncing and publishing -----------------------------------------------------------------

    def _sync_and_publish(self, group: _Group) -> None:
        """Make the group durable, wait for the groups before it, then publish it and release its callers.

        Whatever happens on the way (a bug, or Ctrl-C in a main-thread writer), the group still
        retires in log order and its callers get an outcome; otherwise every later append, and
        close(), would wait for it forever. An interrupt is raised again once that is done.
        """
        view = self.view
        interrupted: BaseException | None = None
        try:
            if group.entries and group.error is None and self.failed is None and view.log.sync:
                # (after another group's failed sync, nothing is synced again: the group fails)
                started = time.perf_counter()
                try:
                    os.fdatasync(group.segment.fd)
                except OSError as exc:  # never retried: the kernel may have dropped the data
                    group.error = self._fail(f"failed to sync ({exc})")
                took = time.perf_counter() - started
                average = self._sync_seconds
                self._sync_seconds = took if average is None else average + (took - average) / 8
            elif not view.log.sync:
                self._sync_seconds = 0.0
        except BaseException as exc:  # the sync's outcome is unknown: as good as failed
            group.error = self._fail(f"failed while syncing ({exc!r})")
            interrupted = exc
        while True:
            try:
                with self._lock:
                    while self._in_flight[0] is not group:
                        self._wait_turn()
                break
            except BaseException as exc:  # keep waiting: the groups before this one finish first
                interrupted = interrupted or exc
        error = group.error or self.failed  # a group before this one failed: this one is not safe
        try:
            if error is None and group.entries:
                last = group.entries[-1]
                end = _new(Head, (last.position + last.count - 1, last.segment, last.offset + last.size))
                with view.state:  # this process's readers must not see the records before they are published
                    try:
                        view.log.write_head(end)
                    except (OSError, ValueError) as exc:  # durable records; only the hint failed
                        self._fail(f"cannot update HEAD ({exc})")
                    view.publish(group.entries, end)
        except BaseException as exc:  # a bug: fail the group rather than leave its callers waiting
            error = self._fail(f"failed to publish ({exc!r})")
            interrupted = interrupted or exc
        self._complete(group, error)
        if interrupted is not None and not isinstance(interrupted, Exception):
            raise interrupted  # Ctrl-C or an exit, now that nobody is left waiting for this group

    def _complete(self, group: _Group, error: StoreFailedError | None) -> None:
        """Give the group's callers their outcome, retire the group, and pass the writing on."""
        if error is None:
            for r, _, _, result in group.planned:
                r.result = result
        else:
            for r in group.requests:
                if r.error is None:
                    r.result, r.error = None, error  # a replay may point into the failed group
        versions, ids, seq = self._versions, self._ids, group.seq
        with self.view.state:  # _plan reads and writes these under the state lock, not the commit lock
            for r, _, _, _ in group.planned:
                if versions.get(r.stream, (0, -1))[1] == seq:
                    del versions[r.stream]
                for i in r.ids:
                    ids.pop(i, None)
        with self._lock:
            self._in_flight.popleft()
            self._done += 1
            self._settle_lock()
            _release(group.requests)
            self._hand_over()
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


log = logging.getLogger("orchestrix.file")

try:  # the C module: signal's own wrappers turn every handler into an enum, ~3 us a call
    import _signal as _sig
except ImportError:  # pragma: no cover - an interpreter without it
    import signal as _sig  # type: ignore[no-redef]
_SIGINT = int(_sig.SIGINT)


class _SigintDeferred:
    """While the main thread does commit work, a Ctrl-C waits until that work is done.

    Python raises KeyboardInterrupt between any two bytecodes of the main thread. Inside the
    commit protocol that leaves a group that never retires, or the writing handed to nobody:
    every later append hangs, and ``close()`` with them. So while Python's own SIGINT handler
    is in place, a Ctrl-C is noted and raised once the work is done (a few ms at most: one
    write and one fdatasync). Other threads never get KeyboardInterrupt; a program's own
    handler (asyncio.run installs one, which raises nothing here) is left alone.
    """

    __slots__ = ("caught", "previous")
    active: _SigintDeferred | None = None  # the one in force (only ever in the main thread)

    def __enter__(self) -> _SigintDeferred:
        self.previous: Any = None
        self.caught = False
        if (
            threading.get_ident() == threading.main_thread().ident
            and _sig.getsignal(_SIGINT) is _sig.default_int_handler
        ):
            self.previous = _sig.signal(_SIGINT, self._note)
            _SigintDeferred.active = self
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.caught = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            _SigintDeferred.active = None
            _sig.signal(_SIGINT, self.previous)
            if self.caught:
                raise KeyboardInterrupt

    @staticmethod
    def wait_interruptibly(wait: Callable[[], object]) -> None:
        """Run ``wait`` (a wait that may never end: another process's lock) open to Ctrl-C."""
        deferred = _SigintDeferred.active
        if deferred is None or threading.get_ident() != threading.main_thread().ident:
            wait()
            return
        _sig.signal(_SIGINT, deferred.previous)
        try:
            if deferred.caught:  # pressed before the wait began
                deferred.caught = False
                raise KeyboardInterrupt
            wait()
        finally:
            _sig.signal(_SIGINT, deferred._note)


class _WriterThreads:
    """Threads that write groups for asyncio callers: at most ``count``, started on demand.

    Not a ``concurrent.futures`` pool: that one refuses work once the interpreter starts to
    exit, which would strand appends of threads still running then. These are daemon threads;
    an append they have not finished when the process ends is not acknowledged, like any
    append cut short by an exit.
    """

    def __init__(self, work: Callable[[], None], count: int) -> None:
        self._work = work
        self._count = count
        self._jobs: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._guard = threading.Lock()

    def start_one(self) -> None:
        """Have one thread run ``work`` once."""
        with self._guard:
            if not self._idle and len(self._threads) < self._count:
                thread = threading.Thread(target=self._serve, name="orchestrix-file-writer", daemon=True)
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._jobs.put(True)

    def stop(self) -> None:
        """End the threads once they are idle (the store is closed: no more work comes)."""
        for _ in self._threads:
            self._jobs.put(False)
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while self._jobs.get():
            with self._guard:
                self._idle -= 1
            try:
                self._work()
            except BaseException:  # a bug: _write_turn fails its groups' callers itself first
                log.exception("orchestrix file store: a writer thread failed")
            with self._guard:
                self._idle += 1


def _release(requests: list[Request]) -> None:
    """Mark requests done and wake their callers: threads directly, asyncio tasks once per loop."""
    loops: dict[asyncio.AbstractEventLoop, list[Request]] = {}
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


def _settle(requests: list[Request]) -> None:
    for r in requests:
        future = r.future
        if future is not None and not future.done():  # a cancelled caller leaves a done future
            future.set_result(None)
