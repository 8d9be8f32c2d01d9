"""Group commit: concurrent appends of one process share one write and one fdatasync.

Each caller prepares its record (validation, encoding) on its own thread, then queues it. If no
commit is running, the caller becomes the *leader*: under the writer lock it checks every queued
batch, writes them all at once, syncs, publishes, and releases their callers. Callers that
queued meanwhile form the next group, which the leader also commits (up to a few rounds after
its own) before handing the lead to the oldest of them.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from orchestrix.core.errors import OrchestrixError, SerializationError, StoreClosedError, StoreFailedError
from orchestrix.core.eventsourcing.store import (
    AppendResult,
    check_expected_version,
    find_replayed_append,
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

LEADER_EXTRA_ROUNDS = 2
"""Commits a leader runs for others after its own, before handing over (throughput vs. its latency)."""

_new: Callable[..., Any] = tuple.__new__  # builds NamedTuples without their Python-level __new__
_crc32 = zlib.crc32
_seal_into = SEAL.pack_into
_u32_into = U32.pack_into


class Request:
    """One caller's append: its encoded record, and then its outcome."""

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


def prepare(
    serializer: Serializer,
    type_fields: dict[str, bytes],
    stream: str,
    events: Sequence[NewEvent | Any],
    expected_version: int,
) -> Request:
    """Validate and encode an append outside every lock, so concurrent callers do it in parallel."""
    validate_stream_name(stream)
    validate_expected_version(expected_version)
    batch = to_new_events(stream, events)
    encode = serializer.encode
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
    return Request(stream, batch, tuple([p[0] for p in prepared]), record, expected_version)


class GroupCommit:
    """The append side of one store: the queue, the leader protocol, and the commit itself."""

    def __init__(self, view: LogView, segment_size: int) -> None:
        self.view = view
        self.segment_size = segment_size
        self.failed: StoreFailedError | None = None
        self.closed = False
        self._queue: list[Request] = []
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._leading = False

    def submit(self, request: Request) -> None:
        """Commit ``request`` (leading, or waiting for a leader); its ``result`` or ``error`` is set."""
        with self._lock:
            if self.closed:
                raise StoreClosedError(f"the file store at {self.view.path} is closed")
            if self.failed is not None:
                raise self.failed
            if self._leading:
                request.wake = wake = threading.Lock()
                wake.acquire()
                self._queue.append(request)
                group = None
            else:
                self._leading = True
                group, self._queue = [*self._queue, request], []
        if group is None:
            request.wake.acquire()  # type: ignore[union-attr]  # released when done, or to lead
            if request.done:
                return
            with self._lock:
                group, self._queue = self._queue, []
        self._lead(request, group)

    def close(self) -> None:
        """Refuse new appends; return once the ones already queued are written."""
        with self._lock:
            self.closed = True
            leading = self._leading
        if leading:
            self._idle.wait()

    def _lead(self, mine: Request, group: list[Request]) -> None:
        rounds_after_mine = 0
        while True:
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
            with self._lock:
                if not self._queue:
                    self._leading = False
                    if self.closed:
                        self._idle.set()
                    return
                if rounds_after_mine > LEADER_EXTRA_ROUNDS:
                    self._queue[0].wake.release()  # type: ignore[union-attr]  # it wakes not done, and leads
                    return
                group, self._queue = self._queue, []

    def _commit(self, group: list[Request]) -> None:
        """Check and write the group with one write and one fdatasync, under the writer lock."""
        if self.failed is not None:
            for r in group:
                r.error = self.failed
            return
        view = self.view
        log = view.log
        with log.lock:
            end = view.end
            if log.read_head() is not end or log.has_data_at(log.segment(end.segment), end.offset):
                view.catch_up_locked()  # another process wrote, or a writer died mid-commit
            with view.state:
                planned = self._plan(group)
            if planned:
                self._write(planned)

    def _plan(self, group: list[Request]) -> list[tuple[Request, int, int, AppendResult]]:
        """Check each request against the log and the ones before it; keep those to be written."""
        view = self.view
        tail_ids = view.tail.ids
        indexed: dict[bytes, int] = {}
        if view.tail.bound:
            unknown = [i for r in group for i in r.ids if i not in tail_ids]
            if unknown:
                indexed = view.index.positions_of(unknown)
        pending_ids: dict[bytes, tuple[str, int, int]] = {}
        pending_versions: dict[str, int] = {}
        position = view.end.position
        planned = []
        several = len(group) > 1
        for r in group:
            stream = r.stream
            try:
                for i in r.ids:
                    if i in tail_ids or i in pending_ids or i in indexed:  # perhaps a retry
                        r.result = find_replayed_append(
                            stream, r.batch, lambda event_id: self._place(event_id, pending_ids, indexed)
                        )
                        break
                if r.result is not None:
                    continue
                current = pending_versions.get(stream) if several else None
                if current is None:
                    current = view.version_locked(stream)
                check_expected_version(stream, r.expected, current)
            except OrchestrixError as exc:
                r.error = exc
                continue
            n = len(r.ids)
            result = AppendResult(
                stream,
                (current + 1,) if n == 1 else tuple(range(current + 1, current + 1 + n)),
                (position + 1,) if n == 1 else tuple(range(position + 1, position + 1 + n)),
            )
            if several:
                for k, i in enumerate(r.ids):
                    pending_ids[i] = (stream, current + 1 + k, position + 1 + k)
                pending_versions[stream] = current + n
            planned.append((r, position + 1, current + 1, result))
            position += n
        return planned

    def _place(
        self, event_id: uuid.UUID, pending: dict[bytes, tuple[str, int, int]], indexed: dict[bytes, int]
    ) -> tuple[str, int, int] | None:
        """Where an event id is stored: in this group, the tail, or (found in the log) the index."""
        raw = event_id.bytes
        found = pending.get(raw) or self.view.tail.ids.get(raw)
        if found is None and raw in indexed:
            found = self.view.place_at(indexed[raw], raw)
        return found

    def _write(self, planned: list[tuple[Request, int, int, AppendResult]]) -> None:
        view = self.view
        log = view.log
        end = view.end
        recorded_us = time.time_ns() // 1000
        try:
            size = len(planned[0][0].record) if len(planned) == 1 else sum(len(p[0].record) for p in planned)
            if end.offset > SEGMENT_HEADER_SIZE and end.offset + size > self.segment_size:
                log.seal(log.segment(end.segment), end.offset)
                segment = log.create_segment(end.segment + 1, end.position)
                end = Head(end.position, segment.number, SEGMENT_HEADER_SIZE)
                with view.state:
                    log.write_head(end)  # readers and writers move on to the new file
                    view.end = end
            else:
                segment = log.segment(end.segment)
            group_offset = offset = end.offset
            number = segment.number
            entries = []
            for r, position, version, _ in planned:
                record = r.record
                _seal_into(record, FRAME_SIZE, group_offset, position, version, recorded_us)
                crc = _crc32(memoryview(record)[8:])
                _u32_into(record, 4, crc)
                size = len(record)
                fields = (position, len(r.ids), version, r.stream, number, offset, size, crc, r.ids)
                entries.append(_new(Entry, fields))
                offset += size
            data = planned[0][0].record if len(planned) == 1 else b"".join(p[0].record for p in planned)
            log.write(segment, group_offset, data)
        except OSError as exc:
            self.failed = StoreFailedError(
                f"the file store at {view.path} failed to write ({exc}); nothing more is written until "
                "it is reopened, and the last appends may or may not be stored"
            )
            for r, _, _, _ in planned:
                r.error = self.failed
            return
        last = entries[-1]
        new_end = _new(Head, (last.position + last.count - 1, number, offset))
        with view.state:  # readers of this process must not scan these records before they are published
            try:
                log.write_head(new_end)
            except (OSError, ValueError) as exc:  # the records are durable; only the hint for others failed
                self.failed = StoreFailedError(f"the file store at {view.path} cannot update HEAD: {exc}")
            view.publish(entries, new_end)
        for r, _, _, result in planned:
            r.result = result
