"""The durable file store: an append-only log in a directory, shared safely by threads and processes.

How it works, in short (``docs/file-format.md`` has the bytes):

* Each append batch is one record (length + CRC32 framed) in a segment file; concurrent appends
  of this process are written in groups that share one write and one ``fdatasync``, with the
  next group written while the last one syncs (:mod:`._commit`); a caller returns only once its
  own record is durable.
* Writers of every process take an ``flock`` on the LOCK file, first read the records other
  processes added, then check expected versions and assign positions 1, 2, 3… in log order.
  After syncing they publish the committed end in HEAD, which readers in other processes poll.
* An SQLite index (rebuilt from the log when missing or stale) maps streams to their records
  and event ids to positions; records it does not cover yet are kept in memory, and where an
  event id is or what a stream's version is, one locator answers (:mod:`._locator`).
* On open the uncovered end of the log is scanned; a torn last write is cut off with a warning,
  damage that later records prove was once on disk raises
  :class:`~orchestrix.core.errors.CorruptionError` (:mod:`._recovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from types import TracebackType
from typing import Any

from orchestrix.core._checks import (
    check_after,
    check_from_version,
    check_limit,
    check_stream_name,
    check_timeout,
    check_types,
)
from orchestrix.core.errors import CorruptionError, StoreClosedError, StoreFormatError
from orchestrix.core.eventsourcing._backend import AsyncStoreMixin, wanted_names
from orchestrix.core.eventsourcing.store import ANY, AppendResult, ImportedEvent, StreamAppend
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file._commit import GroupCommit
from orchestrix.infrastructure.file._format import (
    FRAME_SIZE,
    HEAD_FILE,
    INDEX_FILE,
    LOCK_FILE,
    SEGMENT_HEADER_SIZE,
    STORE_FILE,
    Head,
    RecordProblem,
    decode_events,
    segment_number,
)
from orchestrix.infrastructure.file._index import VERSION, Entry
from orchestrix.infrastructure.file._io import Syncs
from orchestrix.infrastructure.file._policy import DEFAULT_POLICY, FilePolicy
from orchestrix.infrastructure.file._request import merge_runs, prepare, prepare_import, prepare_many
from orchestrix.infrastructure.file._scan import Window, read_frame
from orchestrix.infrastructure.file._view import LogView, ahead
from orchestrix.infrastructure.file.checkpoint import FileCheckpointStore
from orchestrix.infrastructure.file.errors import InvalidStoreOptionError, ReadOnlyStoreError
from orchestrix.infrastructure.file.snapshot import SNAPSHOT_DIR, FileSnapshotStore

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_CHECKPOINT_EVENTS",
    "DEFAULT_LOOP_SYNC_MAX",
    "DEFAULT_SEGMENT_SIZE",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "FileEventStore",
]

CHECKPOINT_FILE = "checkpoints.json"
DEFAULT_SEGMENT_SIZE = 128 * 1024 * 1024
DEFAULT_CHECKPOINT_EVENTS = 16384
DEFAULT_LOOP_SYNC_MAX = 0.001
MIN_SEGMENT_SIZE = 512  # tiny segments are for tests of rollovers
MAX_SEGMENT_SIZE = 1 << 40  # the index keeps offsets in 40 bits
_STREAM_WINDOW = 4096
"""First read size of a stream read: most streams are short, and their records far apart."""
_POLL_INTERVAL = 0.02
"""How often a waiting reader looks at HEAD for other processes' appends (seconds)."""


class FileEventStore(AsyncStoreMixin):
    """A durable event store in the directory ``path`` (created if missing).

    ``sync=False`` skips every fdatasync: appends survive a crash of the process but not of the
    machine. It exists for tests and bulk loads; never use it for data you need.
    ``segment_size`` is the size at which a new segment file is started;
    ``checkpoint_events`` how many events may accumulate before they are added to the index.
    ``loop_sync_max``: asyncio appends are committed by the event loop itself, which then
    blocks for one fdatasync, while the disk's syncs average at most this many seconds (1 ms by
    default: a hand-over to a writer thread and back costs more than a fast sync, 30% of 8
    tasks' throughput, while such a sync adds well under 1 ms to the loop's p99 lag);
    ``0`` keeps every sync off the loop. ``policy`` sets how long the writer lock is kept and
    which calls do the file I/O (:class:`~orchestrix.infrastructure.file._policy.FilePolicy`;
    its defaults suit production, tests and fault injection pass their own). Several stores
    (in this or other processes) may open one directory at once.

    ``read_only=True`` opens an existing store to read it only (what ``orchestrix inspect``,
    ``verify`` and ``tail`` do): it takes no writer lock, creates and writes no file, never
    cuts a torn tail (it reads up to where the last writer published), and refuses appends
    and checkpoint saves with :class:`~orchestrix.infrastructure.file.errors.ReadOnlyStoreError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        serializer: Serializer,
        *,
        sync: bool = True,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        checkpoint_events: int = DEFAULT_CHECKPOINT_EVENTS,
        loop_sync_max: float = DEFAULT_LOOP_SYNC_MAX,
        policy: FilePolicy = DEFAULT_POLICY,
        read_only: bool = False,
    ) -> None:
        _check_options(segment_size, checkpoint_events, loop_sync_max, policy)
        if type(read_only) is not bool:
            raise InvalidStoreOptionError("read_only", read_only, "True or False")
        self.path: str = os.fspath(path)
        self.read_only = read_only
        self._serializer = serializer
        self._names: dict[Any, bytes] = {}
        syncs = Syncs(policy.io, sync)
        self._view = LogView(self.path, policy.io, syncs, segment_size, checkpoint_events, read_only)
        self._view.log.reserve_margin = policy.reserve_margin
        self._commits = None if read_only else GroupCommit(self._view, segment_size, loop_sync_max, policy)
        self._closing = threading.RLock()  # one close at a time: two would close each file twice

    checks_fences = False
    """Appends made under a fence are not checked: the file store grants no leases (its writers,
    on one machine, take turns through a file lock)."""

    # -- appending ---------------------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events durably, or raise ConcurrencyError and write none.

        Returns once the events are on disk; appends from concurrent threads share one fdatasync.
        """
        commits = self._writable()
        request = prepare(self._serializer, self._names, stream, events, expected_version)
        commits.submit(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of :meth:`append`: holds no thread while the append is in flight.

        Concurrent tasks share groups, writes and fdatasyncs with each other and with threads.
        """
        commits = self._writable()
        request = prepare(self._serializer, self._names, stream, events, expected_version)
        await commits.submit_async(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def append_many(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Append to several streams at once, durably, all or nothing (see ``EventStore.append_many``).

        The streams' records are written together, with consecutive positions, by one write and
        made durable by one fdatasync; recovery keeps them all or none.
        """
        request = prepare_many(self._serializer, self._names, appends)
        self._writable().submit(request)
        return request.results()

    async def append_many_async(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`append_many`: holds no thread while the append is in flight."""
        request = prepare_many(self._serializer, self._names, appends)
        await self._writable().submit_async(request)
        return request.results()

    def import_events(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Store events recorded elsewhere with their versions, ids and times (see ``EventImport``),
        durably and all or nothing, as one multi-stream append."""
        request = prepare_import(self._serializer, self._names, events)
        self._writable().submit(request)
        return merge_runs(request.results())

    async def import_events_async(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`import_events`."""
        request = prepare_import(self._serializer, self._names, events)
        await self._writable().submit_async(request)
        return merge_runs(request.results())

    def _writable(self) -> GroupCommit:
        if self._commits is None:
            self._check_open()
            raise ReadOnlyStoreError(self.path, "cannot append")
        return self._commits

    # -- reading -----------------------------------------------------------------------------

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        """Yield the stream's events from ``from_version`` on, decoding one at a time."""
        check_stream_name(stream)
        check_from_version(from_version)
        self._check_open()
        self._view.refresh()
        view = self._view
        with view.state:
            bound = view.locator.bound
            tail = view.locator.stream_entries(stream, from_version)
        return self._stream_events(stream, from_version, bound, tail)

    def _stream_events(
        self, stream: str, from_version: int, bound: int, tail: list[Entry]
    ) -> Iterator[RecordedEvent]:
        windows: dict[int, Window] = {}
        if bound and (not tail or tail[0][VERSION] > from_version):
            for _, _, position, segment, offset in self._view.index.stream_records(
                stream, from_version, bound
            ):
                yield from self._record_events(windows, segment, offset, position, from_version)
        for position, _, _, _, segment, offset, _, _, _ in tail:
            yield from self._record_events(windows, segment, offset, position, from_version)

    def _record_events(
        self, windows: dict[int, Window], number: int, offset: int, position: int, from_version: int
    ) -> Iterator[RecordedEvent]:
        self._check_open()
        segment = self._view.log.segment(number)
        window = windows.get(number)
        if window is None:
            window = windows[number] = Window(segment.fd, _STREAM_WINDOW, 65536)
        frame = read_frame(window, offset, 1 << 62)
        if isinstance(frame, RecordProblem):
            raise CorruptionError(segment.path, offset, str(frame))
        buf, i, _, _ = frame
        if _record_position(buf, i) != position:
            raise CorruptionError(segment.path, offset, f"expected the record of position {position} here")
        yield from decode_events(buf, i, self._serializer.decode, from_version)

    def read_all(
        self, after: int = 0, limit: int | None = None, *, types: Collection[type] | None = None
    ) -> Iterator[RecordedEvent]:
        """Yield every event with a position greater than ``after``, in global order, lazily (only
        those of ``types``, if given, told apart by their stored type name before decoding)."""
        check_after(after)
        check_limit(limit)
        taken = check_types(types)
        self._check_open()
        self._view.refresh()
        end = self._view.end
        start = after + 1
        if start > end.position or limit == 0:
            return iter(())
        wanted = None if taken is None else wanted_names(self._serializer.class_of, taken)
        return self._all_events(start, end, limit, wanted)

    def _all_events(
        self, start: int, end: Head, limit: int | None, wanted: Callable[[str], bool] | None
    ) -> Iterator[RecordedEvent]:
        segment, offset, first = self._view.start_of(start)
        decode = self._serializer.decode
        remaining = -1 if limit is None else limit
        for _, _, buf, i, _, _ in self._view.log.frames(segment, offset, end, first=first):
            self._check_open()
            for event in decode_events(buf, i, decode, 0, start, wanted):
                yield event
                remaining -= 1
                if remaining == 0:
                    return

    # The asyncio forms of reads run on the event loop: they read the page cache and the local
    # index, a few microseconds per event, where a thread hop would cost more than the read.
    # Taking in another process's appends may scan the log, so that part goes to a thread.
    # Long reads give the loop a turn every ``page_size`` events.

    async def read_stream_async(self, stream: str, from_version: int = 0) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_stream`."""
        await self._refresh_async()
        async for event in self._on_loop(self.read_stream(stream, from_version)):
            yield event

    async def read_all_async(
        self, after: int = 0, limit: int | None = None, *, types: Collection[type] | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_all`."""
        await self._refresh_async()
        async for event in self._on_loop(self.read_all(after, limit, types=types)):
            yield event

    async def _on_loop(self, events: Iterator[RecordedEvent]) -> AsyncIterator[RecordedEvent]:
        try:
            for n, event in enumerate(events, 1):
                yield event
                if n % self.page_size == 0:
                    await asyncio.sleep(0)
        finally:
            close = getattr(events, "close", None)
            if close is not None:  # a generator left early lets go of its files now
                close()

    async def stream_version_async(self, stream: str) -> int:
        """Asyncio form of :meth:`stream_version`."""
        await self._refresh_async()
        return self.stream_version(stream)

    async def last_position_async(self) -> int:
        """Asyncio form of :meth:`last_position`."""
        await self._refresh_async()
        return self.last_position()

    async def _refresh_async(self) -> None:
        view = self._view
        if view.closed:
            return  # the sync form raises StoreClosedError
        head = view.log.read_head()
        if head is None or ahead(head, view.end):
            await asyncio.to_thread(view.refresh)

    def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, or NO_STREAM (-1) if it has none."""
        check_stream_name(stream)
        self._check_open()
        self._view.refresh()
        with self._view.state:
            return self._view.locator.version(stream)

    def last_position(self) -> int:
        """The highest committed global position (0 for an empty store)."""
        self._check_open()
        self._view.refresh()
        return self._view.end.position

    def verify(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Read the whole log and check every record's checksum and position; return the event count.

        Opening checks only what the index does not cover; this checks everything and raises
        CorruptionError (naming file and offset) at the first damage. ``progress``, if given, is
        called after each record with (events checked so far, events in the log).
        """
        self._check_open()
        self._view.refresh()
        end = self._view.end
        events = 0
        for _, info in self._view.log.scan(Head(0, 1, SEGMENT_HEADER_SIZE), end):
            events += info.count
            if progress is not None:
                progress(events, end.position)
        return events

    def checkpoints(self) -> FileCheckpointStore:
        """A CheckpointStore kept beside the log, in ``checkpoints.json`` of the store directory.

        On a store opened read-only it loads, and refuses saves (ReadOnlyStoreError).
        """
        return FileCheckpointStore(os.path.join(self.path, CHECKPOINT_FILE), read_only=self.read_only)

    def snapshots(self) -> FileSnapshotStore:
        """A SnapshotStore in the ``snapshots`` directory of the store directory, encoding with
        this store's serializer and syncing as it does."""
        return FileSnapshotStore(
            os.path.join(self.path, SNAPSHOT_DIR), self._serializer, sync=self._view.log.syncs.durable
        )

    @staticmethod
    def is_store(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a file store (its STORE marker), without opening or creating one."""
        return os.path.isfile(os.path.join(os.fspath(path), STORE_FILE))

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        """Delete the file store at ``path`` with everything it holds, to start afresh.

        Refuses (StoreFormatError) a path that is not a file store, so a mistyped path cannot
        wipe other data. No store may have it open.
        """
        path = os.fspath(path)
        if not FileEventStore.is_store(path):
            raise StoreFormatError(path, "not an orchestrix file store (no STORE file); not deleting it")
        ours = {STORE_FILE, LOCK_FILE, HEAD_FILE, CHECKPOINT_FILE, CHECKPOINT_FILE + ".lock"}
        for name in os.listdir(path):
            if (
                name in ours
                or name.startswith(INDEX_FILE)
                or segment_number(name) is not None
                or name.endswith(".tmp")
            ):
                os.unlink(os.path.join(path, name))
        FileSnapshotStore.destroy(os.path.join(path, SNAPSHOT_DIR))
        with contextlib.suppress(OSError):  # files of the user's own stay, and so does the directory
            os.rmdir(path)

    def _check_open(self) -> None:
        if self._view.closed:
            raise StoreClosedError(f"the file store at {self.path} is closed")

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event after ``after`` is committed (by any process) or ``timeout`` passes."""
        check_after(after)
        check_timeout(timeout)
        view = self._view
        deadline = time.monotonic() + timeout
        while True:
            if not view.closed:
                view.refresh()
            with view.changed:
                if view.end.position > after:
                    return True
                remaining = deadline - time.monotonic()
                if view.closed or remaining <= 0:
                    return False
                view.sync_waiters += 1
                try:
                    view.changed.wait(min(remaining, _POLL_INTERVAL))
                finally:
                    view.sync_waiters -= 1

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`; holds no thread while it waits."""
        check_after(after)
        check_timeout(timeout)
        view = self._view
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        token = (loop, woken)
        view.async_waiters.add(token)
        try:
            while True:
                if view.end.position > after:
                    return True
                if view.closed:
                    return False
                head = view.log.read_head()
                if head is None or ahead(head, view.end):
                    await asyncio.to_thread(view.refresh)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                woken.clear()
                if view.end.position > after:
                    return True
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that lands in
                # the loop turn in which the event is set, and the task would wait on for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, _POLL_INTERVAL)):
                        await woken.wait()
        finally:
            view.async_waiters.discard(token)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the appends already queued, checkpoint the index, release files, wake waiters."""
        with self._closing:  # a second thread waits until the store is closed
            if self._view.closed:
                return
            if self._commits is None:
                self._view.close(checkpoint=False)
                return
            self._commits.close()
            self._view.close(checkpoint=self._commits.failed is None)

    def __enter__(self) -> FileEventStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileEventStore({self.path!r})"


def _check_options(
    segment_size: object, checkpoint_events: object, loop_sync_max: object, policy: object
) -> None:
    if type(segment_size) is not int or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidStoreOptionError(
            "segment_size", segment_size, f"an int from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE} bytes"
        )
    if type(checkpoint_events) is not int or checkpoint_events < 1:
        raise InvalidStoreOptionError("checkpoint_events", checkpoint_events, "an int of at least 1")
    if type(loop_sync_max) not in (int, float) or not 0 <= loop_sync_max < math.inf:  # type: ignore[operator]
        raise InvalidStoreOptionError("loop_sync_max", loop_sync_max, "a finite number of seconds, 0 or more")
    if not isinstance(policy, FilePolicy):
        raise InvalidStoreOptionError("policy", policy, "a FilePolicy")


def _record_position(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at + FRAME_SIZE + 8 : at + FRAME_SIZE + 16], "little")
