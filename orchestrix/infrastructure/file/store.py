"""The durable file store: an append-only log in a directory, shared safely by threads and processes.

How it works, in short (``docs/file-format.md`` has the bytes):

* Each append batch is one record (length + CRC32 framed) in a segment file; concurrent appends
  of this process are written together and share one ``fdatasync`` (group commit), and a caller
  returns only once its own record is durable.
* Writers of every process take an ``flock`` on the LOCK file, first read the records other
  processes added, then check expected versions and assign positions 1, 2, 3… in log order.
  After syncing they publish the committed end in HEAD, which readers in other processes poll.
* An SQLite index (rebuilt from the log when missing or stale) maps streams to their records
  and event ids to positions; records it does not cover yet are kept in memory (:mod:`._tail`).
* On open the uncovered end of the log is scanned; a torn last write is cut off with a warning,
  damage followed by later data raises :class:`~orchestrix.core.errors.CorruptionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from orchestrix.core.errors import (
    CorruptionError,
    OrchestrixError,
    SerializationError,
    StoreClosedError,
    StoreError,
    StoreFailedError,
    StoreFormatError,
)
from orchestrix.core.eventsourcing.store import (
    ANY,
    NO_STREAM,
    AppendResult,
    AsyncStoreMixin,
    check_expected_version,
    find_replayed_append,
    to_new_events,
    validate_expected_version,
    validate_stream_name,
)
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file._format import (
    FRAME_SIZE,
    HEAD_FILE,
    INDEX_FILE,
    LOCK_FILE,
    MAX_BODY,
    SEGMENT_HEADER_SIZE,
    STORE_FILE,
    FormatProblem,
    Head,
    RecordInfo,
    decode_events,
    parse_info,
    prepare_record,
    seal_record,
    segment_number,
    type_field,
)
from orchestrix.infrastructure.file._index import EMPTY, Covered, Entry, Index, IndexDamaged
from orchestrix.infrastructure.file._log import Log, Window, read_frame
from orchestrix.infrastructure.file._tail import Tail
from orchestrix.infrastructure.file.checkpoint import FileCheckpointStore
from orchestrix.infrastructure.file.errors import BatchTooLargeError

__all__ = ["FileEventStore"]

log = logging.getLogger("orchestrix.infrastructure.file")

CHECKPOINT_FILE = "checkpoints.json"
DEFAULT_SEGMENT_SIZE = 128 * 1024 * 1024
DEFAULT_CHECKPOINT_EVENTS = 16384
LEADER_EXTRA_ROUNDS = 2
"""Commits a leader runs for others after its own, before handing over (throughput vs. its latency)."""
POLL_INTERVAL = 0.02
"""How often a waiting reader looks at HEAD for other processes' appends (seconds)."""


class _Request:
    """One caller's append, waiting in the group-commit queue."""

    __slots__ = ("batch", "done", "error", "expected", "ids", "record", "result", "stream", "wake")

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


class FileEventStore(AsyncStoreMixin):
    """A durable event store in the directory ``path`` (created if missing).

    ``sync=False`` skips every fdatasync: appends survive a crash of the process but not of the
    machine. It exists for tests and bulk loads; never use it for data you need.
    ``segment_size`` is the size at which a new segment file is started;
    ``checkpoint_events`` how many events may accumulate before they are added to the index.
    Several stores (in this or other processes) may open one directory at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        serializer: Serializer,
        *,
        sync: bool = True,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        checkpoint_events: int = DEFAULT_CHECKPOINT_EVENTS,
    ) -> None:
        self.path = os.fspath(path)
        self._serializer = serializer
        self._segment_size = segment_size
        self._checkpoint_events = max(1, checkpoint_events)
        self._type_fields: dict[str, bytes] = {}
        self._state = threading.RLock()
        self._changed = threading.Condition(self._state)
        self._sync_waiters = 0
        self._queue: list[_Request] = []
        self._queue_cond = threading.Condition(threading.Lock())
        self._leading = False
        self._closed = False
        self._failed: StoreFailedError | None = None
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._flush_cond = threading.Condition(threading.Lock())
        self._flush_wanted = False
        self._log = Log.open(self.path, sync)
        self._log.segment_size = segment_size
        try:
            with self._log.lock:
                self._index = self._open_index()
                self._recover()
        except BaseException:
            index = getattr(self, "_index", None)
            if index is not None:
                index.close()
            self._log.close()
            raise
        self._flusher = threading.Thread(target=self._flush_loop, name="orchestrix-file-index", daemon=True)
        self._flusher.start()

    # -- opening -----------------------------------------------------------------------------

    def _open_index(self) -> Index:
        path = os.path.join(self.path, INDEX_FILE)
        try:
            index = Index(path, self._log.store_id, self._log.sync)
        except IndexDamaged as exc:
            log.warning("%s: rebuilding the index from the log (%s)", path, exc)
            Index.remove(path)
            try:
                index = Index(path, self._log.store_id, self._log.sync)
            except IndexDamaged as again:
                raise StoreError(f"cannot create the index {path}: {again}") from again
        covered = index.covered()
        if covered != EMPTY and not self._matches_log(covered):
            log.warning("%s: the index does not match the log; rebuilding it from the log", path)
            index.reset()
        return index

    def _matches_log(self, covered: Covered) -> bool:
        """Whether the index's last covered record is really in the log, where the index says."""
        end = covered.end
        try:
            if end.segment not in self._log.segment_numbers():
                return False
            segment = self._log.segment(end.segment)
            window = Window(segment.fd, FRAME_SIZE)
            frame = read_frame(window, covered.record_offset, end.offset)
            if isinstance(frame, str):
                return False
            buf, i, length, crc = frame
            info = parse_info(buf, i, length, crc, covered.record_offset)
        except (OSError, OrchestrixError, FormatProblem, ValueError):
            return False
        return (
            crc == covered.record_crc
            and covered.record_offset + info.size == end.offset
            and info.position + info.count - 1 == end.position
        )

    def _recover(self) -> None:
        """Scan what the index does not cover, repair a torn tail, publish the end (writer lock held)."""
        covered = self._index.covered()
        self._tail = Tail(covered.end.position)
        self._end = covered.end
        added = 0
        for number, info in self._log.recover(covered.end):
            self._tail.add(_entry(number, info))
            self._end = Head(info.position + info.count - 1, number, info.offset + info.size)
            added += info.count
            if self._tail.events >= self._checkpoint_events:
                self._flush()  # a long uncovered log (a rebuild): index as we go, memory stays bounded
        self._end = self._log.recovered
        if added and self._log.sync:
            # the records may sit in the page cache of a writer that died before syncing them
            os.fsync(self._log.segment(self._end.segment).fd)
        self._log.write_head(self._end)

    # -- appending ---------------------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events durably, or raise ConcurrencyError and write none."""
        request = self._prepare(stream, events, expected_version)
        self._submit(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _prepare(self, stream: str, events: Sequence[NewEvent | Any], expected_version: int) -> _Request:
        """Validate and encode outside every lock, so concurrent callers do this work in parallel."""
        validate_stream_name(stream)
        validate_expected_version(expected_version)
        batch = to_new_events(stream, events)
        encode = self._serializer.encode
        type_fields = self._type_fields
        prepared = []
        for new in batch:
            type_name, payload = encode(new.event)
            field = type_fields.get(type_name)
            if field is None:
                try:
                    field = type_fields[type_name] = type_field(type_name)
                except FormatProblem as exc:
                    raise SerializationError(type_name, str(exc)) from None
            correlation, causation = new.correlation_id, new.causation_id
            prepared.append(
                (
                    new.event_id.bytes,
                    None if correlation is None else correlation.bytes,
                    None if causation is None else causation.bytes,
                    field,
                    payload,
                )
            )
        record = prepare_record(stream.encode(), prepared)
        if len(record) - FRAME_SIZE > MAX_BODY:
            raise BatchTooLargeError(stream, len(record), MAX_BODY + FRAME_SIZE)
        return _Request(stream, batch, tuple([p[0] for p in prepared]), record, expected_version)

    def _submit(self, request: _Request) -> None:
        """Queue ``request``; lead commits if nobody is, else wait until a leader finished it.

        The leader writes everything queued with one write and one fdatasync, then takes what
        queued up meanwhile, so concurrent callers share syncs. Once its own request is done it
        hands over to the oldest waiter after a few rounds, so no caller waits for ever.
        """
        with self._queue_cond:
            self._check_writable()
            self._queue.append(request)
            if self._leading:
                request.wake = threading.Lock()
                request.wake.acquire()
            else:
                self._leading = True
        if request.wake is not None:
            request.wake.acquire()  # released when the request is done, or when it is to lead
            if request.done:
                return
        self._lead(request)

    def _lead(self, mine: _Request) -> None:
        rounds_after_mine = 0
        while True:
            with self._queue_cond:
                group, self._queue = self._queue, []
                if not group:
                    self._leading = False
                    self._queue_cond.notify_all()
                    return
            try:
                self._commit(group)
            except BaseException as exc:  # a bug or an unexpected error: each caller sees it
                for r in group:
                    if r.result is None and r.error is None:
                        r.error = exc
            for r in group:
                r.done = True
                if r.wake is not None:
                    r.wake.release()
            if mine.done:
                rounds_after_mine += 1
                if rounds_after_mine > LEADER_EXTRA_ROUNDS:
                    break
        with self._queue_cond:
            if self._queue:
                heir = self._queue[0]
                assert heir.wake is not None
                heir.wake.release()  # it wakes not done, and leads
            else:
                self._leading = False
                self._queue_cond.notify_all()

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the file store at {self.path} is closed")
        if self._failed is not None:
            raise self._failed

    def _commit(self, group: list[_Request]) -> None:
        """Write the group's records with one write and one fdatasync, under the writer lock."""
        if self._failed is not None:
            for r in group:
                r.error = self._failed
            return
        with self._log.lock:
            self._catch_up_locked()
            with self._state:
                planned = self._plan(group)
            if planned:
                self._write(planned)

    def _plan(self, group: list[_Request]) -> list[tuple[_Request, int, int, AppendResult]]:
        """Check each request against the log and the ones before it; keep those to be written."""
        tail = self._tail
        tail_ids = tail.ids
        indexed: dict[bytes, int] = {}
        if tail.bound:
            unknown = [i for r in group for i in r.ids if i not in tail_ids]
            if unknown:
                indexed = self._index.positions_of(unknown)
        pending_ids: dict[bytes, tuple[str, int, int]] = {}
        pending_versions: dict[str, int] = {}
        position = self._end.position
        planned = []
        several = len(group) > 1

        def place(event_id: uuid.UUID) -> tuple[str, int, int] | None:
            raw = event_id.bytes
            found = pending_ids.get(raw) or tail_ids.get(raw)
            if found is None and raw in indexed:
                found = self._place_at(indexed[raw], raw)
            return found

        for r in group:
            stream = r.stream
            try:
                for i in r.ids:
                    if i in tail_ids or i in pending_ids or i in indexed:  # perhaps a retry
                        r.result = find_replayed_append(stream, r.batch, place)
                        break
                if r.result is not None:
                    continue
                current = pending_versions.get(stream)
                if current is None:
                    current = self._version_locked(stream)
                check_expected_version(stream, r.expected, current)
            except OrchestrixError as exc:
                r.error = exc
                continue
            n = len(r.ids)
            result = AppendResult(
                stream,
                tuple(range(current + 1, current + 1 + n)),
                tuple(range(position + 1, position + 1 + n)),
            )
            if several:
                for k, i in enumerate(r.ids):
                    pending_ids[i] = (stream, current + 1 + k, position + 1 + k)
                pending_versions[stream] = current + n
            planned.append((r, position + 1, current + 1, result))
            position += n
        return planned

    def _write(self, planned: list[tuple[_Request, int, int, AppendResult]]) -> None:
        log_ = self._log
        end = self._end
        recorded_us = time.time_ns() // 1000
        try:
            size = len(planned[0][0].record) if len(planned) == 1 else sum(len(p[0].record) for p in planned)
            if end.offset > SEGMENT_HEADER_SIZE and end.offset + size > self._segment_size:
                log_.seal(log_.segment(end.segment), end.offset)
                segment = log_.create_segment(end.segment + 1, end.position)
                end = Head(end.position, segment.number, SEGMENT_HEADER_SIZE)
                with self._state:
                    log_.write_head(end)  # readers and writers move on to the new file
                    self._end = end
            else:
                segment = log_.segment(end.segment)
            offset = end.offset
            number = segment.number
            entries = []
            for r, position, version, _ in planned:
                record = r.record
                crc = seal_record(record, end.offset, position, version, recorded_us)
                entries.append(
                    Entry(position, len(r.ids), version, r.stream, number, offset, len(record), crc, r.ids)
                )
                offset += len(record)
            data = planned[0][0].record if len(planned) == 1 else b"".join(r.record for r, _, _, _ in planned)
            log_.write(segment, end.offset, data)
        except OSError as exc:
            self._failed = StoreFailedError(
                f"the file store at {self.path} failed to write ({exc}); nothing more is written until "
                "it is reopened, and the last appends may or may not be stored"
            )
            for r, _, _, _ in planned:
                r.error = self._failed
            return
        last = entries[-1]
        new_end = Head(last.position + last.count - 1, number, offset)
        with self._state:  # readers of this process must not scan these records before they are published
            try:
                log_.write_head(new_end)
            except (OSError, ValueError) as exc:  # the records are durable; only the hint for others failed
                self._failed = StoreFailedError(f"the file store at {self.path} cannot update HEAD: {exc}")
            self._publish(entries, new_end)
        for r, _, _, result in planned:
            r.result = result

    def _publish(self, entries: list[Entry], end: Head) -> None:
        """Make committed records visible to this process and wake its waiters."""
        with self._changed:
            add = self._tail.add
            for entry in entries:
                add(entry)
            self._end = end
            if self._sync_waiters:
                self._changed.notify_all()
            wanted = self._tail.events >= self._checkpoint_events
        if self._async_waiters:
            for loop, event in list(self._async_waiters):
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(event.set)
        if wanted:
            with self._flush_cond:
                self._flush_wanted = True
                self._flush_cond.notify()

    def _catch_up_locked(self) -> None:
        """Take in what other processes committed; repair what a dead writer left (writer lock held)."""
        head = self._log.read_head()
        if head is self._end:  # nobody else wrote since this process did
            if self._log.has_data_at(self._log.segment(head.segment), head.offset):
                with self._state:
                    self._repair_locked()  # a writer died after writing: adopt whole records, cut a torn one
            return
        with self._state:
            end = self._end
            if head is not None and _ahead(head, end):
                self._publish([_entry(n, info) for n, info in self._log.scan(end, head)], head)
            elif head != end:
                self._repair_locked()  # HEAD is missing, torn or behind: trust the segment files
                return
            if self._log.has_data_at(self._log.segment(self._end.segment), self._end.offset):
                self._repair_locked()  # a writer died after writing: adopt whole records, cut a torn one

    def _repair_locked(self) -> None:
        """Recover the log after this process's end (writer lock and state lock held)."""
        entries = [_entry(n, info) for n, info in self._log.recover(self._end)]
        end = self._log.recovered
        if entries and self._log.sync:
            os.fsync(self._log.segment(end.segment).fd)
        self._log.write_head(end)
        self._publish(entries, end)

    def _refresh(self) -> None:
        """Take in what other processes committed (cheap when nothing changed: one pread)."""
        head = self._log.read_head()
        if head is None:
            with self._log.lock:
                self._catch_up_locked()
            return
        if head == self._end or not _ahead(head, self._end):
            return
        with self._state:
            end = self._end
            head = self._log.read_head()
            if head is not None and _ahead(head, end):
                self._publish([_entry(n, info) for n, info in self._log.scan(end, head)], head)

    def _version_locked(self, stream: str) -> int:
        """The stream's current version (state lock held, caught up with the log)."""
        version = self._tail.version(stream)
        if version is None:
            found = self._index.stream_version(stream, self._tail.bound) if self._tail.bound else None
            version = NO_STREAM if found is None else found
            self._tail.remember(stream, version)
        return version

    def _place_at(self, position: int, event_id: bytes) -> tuple[str, int, int]:
        """(stream, version, position) of the indexed event ``event_id`` at ``position``."""
        for _, info in self._records_from(position):
            if info.position <= position < info.position + info.count:
                if info.ids[position - info.position] != event_id:
                    break
                return info.stream, info.version + position - info.position, position
        path = os.path.join(self.path, INDEX_FILE)
        raise StoreError(f"{path}: the index disagrees with the log about position {position}; delete it")

    def _records_from(self, position: int) -> Iterator[tuple[int, RecordInfo]]:
        """The records from the one holding ``position`` on (it must be committed)."""
        start = self._start_of(position)
        for segment, offset, buf, i, length, crc in self._log.frames(start[0], start[1], self._end, 65536):
            yield segment.number, parse_info(buf, i, length, crc, offset)

    def _start_of(self, position: int) -> tuple[int, int]:
        """(segment, offset) of a record at or shortly before the one holding ``position``."""
        with self._state:
            entry = self._tail.entry_at(position) if position > self._tail.bound else None
        if entry is not None:
            return entry.segment, entry.offset
        mark = self._index.mark_before(position)
        if mark is None:
            return 1, SEGMENT_HEADER_SIZE
        return mark[1], mark[2]

    # -- reading -----------------------------------------------------------------------------

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        """Yield the stream's events from ``from_version`` on, decoding one at a time."""
        validate_stream_name(stream)
        self._check_open()
        self._refresh()
        from_version = max(from_version, 0)
        with self._state:
            bound = self._tail.bound
            tail = self._tail.stream_entries(stream, from_version)
        return self._stream_events(stream, from_version, bound, tail)

    def _stream_events(
        self, stream: str, from_version: int, bound: int, tail: list[Entry]
    ) -> Iterator[RecordedEvent]:
        windows: dict[int, Window] = {}
        if bound and (not tail or tail[0].version > from_version):
            for _, _, position, segment, offset in self._index.stream_records(stream, from_version, bound):
                yield from self._record_events(windows, segment, offset, position, from_version)
        for e in tail:
            yield from self._record_events(windows, e.segment, e.offset, e.position, from_version)

    def _record_events(
        self, windows: dict[int, Window], number: int, offset: int, position: int, from_version: int
    ) -> Iterator[RecordedEvent]:
        self._check_open()
        segment = self._log.segment(number)
        window = windows.get(number)
        if window is None:
            window = windows[number] = Window(segment.fd, 65536)
        frame = read_frame(window, offset, 1 << 62)
        if isinstance(frame, str):
            raise CorruptionError(segment.path, offset, frame)
        buf, i, _, _ = frame
        if _record_position(buf, i) != position:
            raise CorruptionError(segment.path, offset, f"expected the record of position {position} here")
        yield from decode_events(buf, i, self._serializer.decode, from_version)

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        """Yield every event with a position greater than ``after``, in global order, lazily."""
        self._check_open()
        self._refresh()
        end = self._end
        start = max(after, 0) + 1
        if start > end.position or (limit is not None and limit <= 0):
            return iter(())
        return self._all_events(start, end, limit)

    def _all_events(self, start: int, end: Head, limit: int | None) -> Iterator[RecordedEvent]:
        segment, offset = self._start_of(start)
        decode = self._serializer.decode
        remaining = -1 if limit is None else limit
        for _, _, buf, i, _, _ in self._log.frames(segment, offset, end):
            self._check_open()
            for event in decode_events(buf, i, decode, 0, start):
                yield event
                remaining -= 1
                if remaining == 0:
                    return

    def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, or NO_STREAM (-1) if it has none."""
        validate_stream_name(stream)
        self._check_open()
        self._refresh()
        with self._state:
            return self._version_locked(stream)

    def last_position(self) -> int:
        """The highest committed global position (0 for an empty store)."""
        self._check_open()
        self._refresh()
        return self._end.position

    def verify(self) -> int:
        """Read the whole log and check every record's checksum and position; return the event count.

        Opening checks only what the index does not cover; this checks everything and raises
        CorruptionError (naming file and offset) at the first damage.
        """
        self._check_open()
        self._refresh()
        end = self._end
        events = 0
        for _, info in self._log.scan(Head(0, 1, SEGMENT_HEADER_SIZE), end):
            events += info.count
        return events

    def checkpoints(self) -> FileCheckpointStore:
        """A CheckpointStore kept beside the log, in ``checkpoints.json`` of the store directory."""
        return FileCheckpointStore(os.path.join(self.path, CHECKPOINT_FILE))

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        """Delete the file store at ``path`` with everything it holds, to start afresh.

        Refuses (StoreFormatError) a path that is not a file store, so a mistyped path cannot
        wipe other data. No store may have it open.
        """
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, STORE_FILE)):
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
        with contextlib.suppress(OSError):  # files of the user's own stay, and so does the directory
            os.rmdir(path)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the file store at {self.path} is closed")

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event after ``after`` is committed (by any process) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._closed:
                self._refresh()
            with self._changed:
                if self._end.position > after:
                    return True
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return False
                self._sync_waiters += 1
                try:
                    self._changed.wait(min(remaining, POLL_INTERVAL))
                finally:
                    self._sync_waiters -= 1

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`; holds no thread while it waits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        token = (loop, woken)
        self._async_waiters.add(token)
        try:
            while True:
                if self._end.position > after:
                    return True
                if self._closed:
                    return False
                head = self._log.read_head()
                if head is None or _ahead(head, self._end):
                    await asyncio.to_thread(self._refresh)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                woken.clear()
                if self._end.position > after:
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, POLL_INTERVAL))
        finally:
            self._async_waiters.discard(token)

    # -- the index checkpoint ----------------------------------------------------------------

    def _flush_loop(self) -> None:
        while True:
            with self._flush_cond:
                while not self._flush_wanted and not self._closed:
                    self._flush_cond.wait()
                if self._closed:
                    return
                self._flush_wanted = False
            try:
                self._flush()
            except Exception:  # the index is only an accelerator: the log stays complete
                log.exception("%s: adding records to the index failed", self.path)

    def _flush(self) -> None:
        """Add the tail's records to the index, then drop them from memory."""
        with self._state:
            entries = list(self._tail.entries)
            end = self._end.position
        if not entries:
            return
        covered = self._index.add(entries)
        with self._state:
            self._tail.trim(min(covered, end))

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the commit in progress, checkpoint the index, release files and wake waiters."""
        with self._queue_cond:
            if self._closed:
                return
            self._closed = True  # refuse new appends; the ones already queued are still written
            while self._leading:
                self._queue_cond.wait()
        with self._flush_cond:
            self._flush_cond.notify_all()
        self._flusher.join()
        if self._failed is None:
            try:
                self._flush()
            except Exception:
                log.exception("%s: final index checkpoint failed; the next open rescans the log", self.path)
        with self._changed:
            self._changed.notify_all()
        for loop, event in list(self._async_waiters):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        self._index.close()
        self._log.close()

    def __enter__(self) -> FileEventStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileEventStore({self.path!r})"


def _entry(number: int, info: RecordInfo) -> Entry:
    return Entry(
        info.position,
        info.count,
        info.version,
        info.stream,
        number,
        info.offset,
        info.size,
        info.crc,
        info.ids,
    )


def _ahead(head: Head, end: Head) -> bool:
    """Whether ``head`` lies beyond ``end`` in the log."""
    return head.position > end.position or (
        head.position == end.position and (head.segment, head.offset) > (end.segment, end.offset)
    )


def _record_position(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at + FRAME_SIZE + 8 : at + FRAME_SIZE + 16], "little")
