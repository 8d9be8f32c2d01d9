"""A group's commit: plan it against the log, write it, sync it, publish it.

A *group* is every append that was queued when its writer took the queue (:mod:`._commit`
decides who writes and when). Its writer plans it (expected versions and event ids checked
against the log, against the groups written but not yet published, and against the requests
before it in the group; positions and versions assigned) and writes all of its records with one
``pwrite``. Then the group is synced and, once every group before it is published, published:
HEAD for other processes, the view for this one. At most a few groups are in flight at once,
so the planner keeps what the groups in flight changed (the log's written end, stream
versions, event ids) until each is published and retires.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from orchestrix.core.errors import OrchestrixError, StoreFailedError
from orchestrix.core.eventsourcing._backend import (
    check_expected_version,
    check_expected_versions,
    find_replayed_append,
    find_replayed_many,
    new_append_result,
)
from orchestrix.core.eventsourcing.store import ANY, AppendResult
from orchestrix.infrastructure.file._format import SEGMENT_HEADER_SIZE, Head, seal_record
from orchestrix.infrastructure.file._index import OFFSET, SEGMENT, SIZE, Entry, last_position
from orchestrix.infrastructure.file._locator import Place
from orchestrix.infrastructure.file._request import ManyRequest, Queued, Request
from orchestrix.infrastructure.file._view import LogView

_new: Callable[..., Any] = tuple.__new__  # builds NamedTuples without their Python-level __new__

Planned = tuple[Request, int, int, AppendResult]
"""A request that will be written: (request, first position, first version, its result)."""


class Group:
    """Requests written together; synced and published as one."""

    __slots__ = ("entries", "error", "interrupted", "planned", "requests", "segment", "seq")

    def __init__(self, seq: int, requests: list[Queued]) -> None:
        self.seq = seq
        self.requests = requests
        self.planned: list[Planned] = []
        self.entries: list[Entry] = []
        self.segment: Any = None
        self.error: StoreFailedError | None = None
        self.interrupted: BaseException | None = None  # Ctrl-C in the writer: raised once retired


class GroupWriter:
    """The steps of one group's commit, and what the groups in flight changed.

    ``written``, ``versions`` and ``ids`` describe the groups written but not yet published:
    ``written`` belongs to the thread whose turn it is to write; ``versions`` and ``ids`` are
    read and changed under the view's state lock. ``fail`` makes the store failed and returns
    its error (the commit owns that state).
    """

    def __init__(self, view: LogView, segment_size: int, fail: Callable[[str], StoreFailedError]) -> None:
        self.view = view
        self.segment_size = segment_size
        self._fail = fail
        syncs = view.log.syncs
        self._sync_records = syncs.records  # looked up once: called for every group
        self._durable = syncs.durable
        self.sync_seconds: float | None = None if syncs.durable else 0.0
        """Moving average of the groups' syncs (None: none yet; 0 without syncs)."""
        self.written = view.end
        self.versions: dict[str, tuple[int, int]] = {}  # stream: (version, seq of the group that wrote it)
        self.ids: dict[bytes, Place] = {}

    def restart(self) -> None:
        """Plan from the view's end: the writer lock was just taken, and nothing is in flight."""
        self.written = self.view.end

    # -- planning ---------------------------------------------------------------------------------

    def plan(self, group: Group) -> list[Planned]:
        """Check each request against the log, the groups in flight and the ones before it (state held)."""
        locator = self.view.locator
        tail_ids, written_ids, versions = locator.ids, self.ids, self.versions
        indexed: dict[bytes, int] = {}
        if locator.bound:
            unknown = [i for r in group.requests for i in r.ids if i not in tail_ids and i not in written_ids]
            if unknown:
                indexed = locator.indexed_positions(unknown)
        position = self.written.position
        seq = group.seq
        planned: list[Planned] = []
        for r in group.requests:
            if isinstance(r, ManyRequest):  # (isinstance: the checkers narrow r to Request below)
                position = self._plan_many(r, indexed, position, seq, planned)
                continue
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
                current = written[0] if written is not None else locator.version(stream)
                if r.expected != current:
                    check_expected_version(stream, r.expected, current)
            except OrchestrixError as exc:
                r.error = exc
                continue
            position = self._place_record(r, current, position, seq, planned)
        return planned

    def _plan_many(
        self, r: ManyRequest, indexed: dict[bytes, int], position: int, seq: int, planned: list[Planned]
    ) -> int:
        """Check a multi-stream append as a whole, then place its records one after another;
        returns the last position placed (state held)."""
        locator, versions, written_ids = self.view.locator, self.versions, self.ids
        tail_ids = locator.ids
        try:
            for i in r.ids:
                if i in tail_ids or i in written_ids or i in indexed:  # perhaps a retry
                    parts = [(p.stream, p.batch, p.expected) for p in r.parts]
                    r.result = find_replayed_many(parts, lambda event_id: self._place(event_id, indexed))
                    if r.result is not None:
                        return position
                    break
            # Each stream's version counting the groups in flight (each stream once in r; an
            # import's later records of a stream expect ANY). The shared check, which names every
            # failing stream, runs only when an expectation is neither ANY nor the version: this
            # is an atomic append's hot path, as plan() is a single append's.
            currents = {}
            matches = True
            for p in r.parts:
                stream, expected = p.stream, p.expected
                written = versions.get(stream)
                current = currents[stream] = written[0] if written is not None else locator.version(stream)
                if expected != current and expected != ANY:
                    matches = False
            if not matches:
                check_expected_versions(
                    [(p.stream, p.batch, p.expected) for p in r.parts], currents.__getitem__
                )
        except OrchestrixError as exc:
            r.error = exc
            return position
        for part in r.parts:
            position = self._place_record(part, currents[part.stream], position, seq, planned)
            currents[part.stream] += len(part.ids)  # an import cut a stream's run into records
        return position

    def _place_record(self, r: Request, current: int, position: int, seq: int, planned: list[Planned]) -> int:
        """Give a checked request its versions and positions after ``position``; returns its last."""
        stream, ids, written_ids = r.stream, r.ids, self.ids
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
        self.versions[stream] = (current + n, seq)
        planned.append((r, position, version, result))
        return position + n - 1

    def _place(self, event_id: uuid.UUID, indexed: dict[bytes, int]) -> Place | None:
        """Where an event id is stored: in a group in flight, or wherever the locator finds it."""
        raw = event_id.bytes
        return self.ids.get(raw) or self.view.locator.place(raw, indexed)

    # -- writing, syncing, publishing -------------------------------------------------------------

    def write(self, group: Group) -> None:
        """Seal the planned records and write them with one ``pwrite`` (not synced).

        A failed write fails the store.
        """
        log = self.view.log
        planned = group.planned
        end = self.written
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
                at = recorded_us if type(r) is Request else r.recorded_us  # type: ignore[attr-defined]
                crc = seal_record(record, durable, position, version, at)
                size = len(record)
                ids = b"".join(r.ids)  # one bytes, not a tuple (see Entry)
                entries.append((position, len(r.ids), version, r.stream, number, offset, size, crc, ids))
                offset += size
            log.write(segment, group_offset, records[0] if len(records) == 1 else b"".join(records))
        except OSError as exc:
            group.error = self._fail(f"failed to write ({exc})")
            return
        group.segment = segment
        self.written = _new(Head, (last_position(entries[-1]), number, offset))

    def sync(self, group: Group) -> None:
        """Make the written group durable; fail the store if that fails (never retried: the kernel
        may have dropped the data)."""
        started = time.perf_counter()
        try:
            self._sync_records(group.segment.fd)
        except OSError as exc:
            group.error = self._fail(f"failed to sync ({exc})")
        if self._durable:  # without syncs the average stays 0: nothing to wait for
            took = time.perf_counter() - started
            average = self.sync_seconds
            self.sync_seconds = took if average is None else average + (took - average) / 8

    def publish(self, group: Group) -> None:
        """Publish the synced group: HEAD for other processes, then the view for this one; and
        forget its plan (the view now knows what the plan knew)."""
        view = self.view
        last = group.entries[-1]
        end = _new(Head, (last_position(last), last[SEGMENT], last[OFFSET] + last[SIZE]))
        with view.state:  # this process's readers must not see the records before they are published
            try:
                view.log.write_head(end)
            except (OSError, ValueError) as exc:  # durable records; only the hint failed
                self._fail(f"cannot update HEAD ({exc})")
            view.publish(group.entries, end)
            self._forget(group)  # in the same hold: one state lock less per group

    def forget(self, group: Group) -> None:
        """Drop what the retiring group's plan added to the in-flight knowledge (a group that
        was not published)."""
        with self.view.state:  # plan reads and writes these under the state lock, not the commit lock
            self._forget(group)

    def _forget(self, group: Group) -> None:
        versions, ids, seq = self.versions, self.ids, group.seq
        for r, _, _, _ in group.planned:
            if versions.get(r.stream, (0, -1))[1] == seq:
                del versions[r.stream]
            for i in r.ids:
                ids.pop(i, None)
