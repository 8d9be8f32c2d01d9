"""One process's view of the log: how far it has read, what the index covers, and the tail between.

The view opens the store (index check, recovery), takes in what other processes commit, finds
where a position's record starts, and moves the tail into the index in the background. Where an
event id is and what a stream's version is, its locator answers (:mod:`._locator`). Appends
(:mod:`._commit`) and reads (:mod:`.store`) both go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator

from orchestrix.core.errors import OrchestrixError, StoreError
from orchestrix.infrastructure.file._format import (
    FRAME_SIZE,
    INDEX_FILE,
    SEGMENT_HEADER_SIZE,
    FormatProblem,
    Head,
    RecordInfo,
    RecordProblem,
    parse_info,
)
from orchestrix.infrastructure.file._index import EMPTY, Covered, Entry, Index, IndexDamaged
from orchestrix.infrastructure.file._io import FileIO, Syncs
from orchestrix.infrastructure.file._locator import Locator, Seen
from orchestrix.infrastructure.file._log import Log, Window, read_frame
from orchestrix.infrastructure.file._recovery import recover

log = logging.getLogger(__name__)


class LogView:
    """The log as this process knows it. ``state`` guards ``end`` and ``locator``."""

    locator: Locator
    seen: Seen
    """The locator's filters (here too for code that only waits for them to be built)."""

    def __init__(
        self, path: str, io: FileIO, syncs: Syncs, segment_size: int, checkpoint_events: int
    ) -> None:
        self.path = path
        self.checkpoint_events = max(1, checkpoint_events)
        self.state = threading.RLock()
        self.changed = threading.Condition(self.state)
        self.sync_waiters = 0
        self.async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.closed = False
        self._flush_cond = threading.Condition(threading.Lock())
        self._flush_wanted = False
        self.log = Log.open(path, io, syncs)
        self.log.segment_size = segment_size
        try:
            with self.log.lock:
                self.index = self._open_index()
                self._recover()
        except BaseException:
            index = getattr(self, "index", None)
            if index is not None:
                index.close()
            self.log.close()
            raise
        self._flusher = threading.Thread(target=self._flush_loop, name="orchestrix-file-index", daemon=True)
        self._flusher.start()

    # -- opening -------------------------------------------------------------------------------

    def _open_index(self) -> Index:
        path = os.path.join(self.path, INDEX_FILE)
        try:
            index = Index(path, self.log.store_id, self.log.syncs.durable)
        except IndexDamaged as exc:
            log.warning("%s: rebuilding the index from the log (%s)", path, exc)
            Index.remove(path)
            try:
                index = Index(path, self.log.store_id, self.log.syncs.durable)
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
            if end.segment not in self.log.segment_numbers():
                return False
            window = Window(self.log.segment(end.segment).fd, FRAME_SIZE)
            frame = read_frame(window, covered.record_offset, end.offset)
            if isinstance(frame, RecordProblem):
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
        covered = self.index.covered()
        self.locator = Locator(self.index, covered.end.position, self.records_from)
        self.seen = self.locator.seen
        self.end = covered.end
        added = 0
        recovery = recover(self.log, covered.end)
        for number, info in recovery:
            self.locator.add(entry_of(number, info))
            self.end = Head(info.position + info.count - 1, number, info.offset + info.size)
            added += info.count
            if self.locator.events >= self.checkpoint_events:
                self.flush()  # a long uncovered log (a rebuild): index as we go, memory stays bounded
        self.end = recovery.end
        if added:
            # the records may sit in the page cache of a writer that died before syncing them
            self.log.syncs.file(self.log.segment(self.end.segment).fd)
        self.log.write_head(self.end)

    # -- taking in what was committed --------------------------------------------------------

    def publish(self, entries: list[Entry], end: Head) -> None:
        """Make committed records visible to this process and wake its waiters."""
        with self.state:
            self.locator.extend(entries)
            self.end = end
            if self.sync_waiters:
                self.changed.notify_all()
            wanted = self.locator.events >= self.checkpoint_events
        if self.async_waiters:
            self.wake_async_waiters()
        if wanted:
            with self._flush_cond:
                self._flush_wanted = True
                self._flush_cond.notify()

    def wake_async_waiters(self) -> None:
        """Wake every ``wait_for_events_async`` of this view, in whichever loop it waits."""
        for loop, event in list(self.async_waiters):
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

    def refresh(self) -> None:
        """Take in what other processes committed (cheap when nothing changed: one memory read)."""
        head = self.log.read_head()
        if head is None:
            with self.log.lock:
                self.catch_up_locked()
            return
        if head is self.end or not ahead(head, self.end):
            return
        with self.state:
            end = self.end
            head = self.log.read_head()
            if head is not None and ahead(head, end):
                self.publish([entry_of(n, info) for n, info in self.log.scan(end, head)], head)

    def catch_up_locked(self) -> None:
        """Take in what other processes committed; repair what a dead writer left (writer lock held)."""
        head = self.log.read_head()
        with self.state:
            end = self.end
            if head is not None and ahead(head, end):
                self.publish([entry_of(n, info) for n, info in self.log.scan(end, head)], head)
            elif head != end:
                self.repair_locked()  # HEAD is missing, torn or behind: trust the segment files
                return
            if self.log.dangling(self.end):
                self.repair_locked()  # a writer died after writing: adopt whole records, cut a torn one

    def repair_locked(self) -> None:
        """Recover the log after this process's end (writer lock and state held)."""
        recovery = recover(self.log, self.end)
        entries = [entry_of(n, info) for n, info in recovery]
        end = recovery.end
        if entries:
            self.log.syncs.file(self.log.segment(end.segment).fd)
        self.log.write_head(end)
        self.publish(entries, end)

    # -- finding records -----------------------------------------------------------------------

    def records_from(self, position: int) -> Iterator[tuple[int, RecordInfo]]:
        """The committed records from the one holding ``position`` on."""
        segment, offset = self.start_of(position)
        for seg, at, buf, i, length, crc in self.log.frames(segment, offset, self.end, 65536):
            yield seg.number, parse_info(buf, i, length, crc, at)

    def start_of(self, position: int) -> tuple[int, int]:
        """(segment, offset) of a record at or shortly before the one holding ``position``."""
        with self.state:
            locator = self.locator
            entry = locator.entry_at(position) if position > locator.bound else None
        if entry is not None:
            return entry.segment, entry.offset
        mark = self.index.mark_before(position)
        if mark is None:
            return 1, SEGMENT_HEADER_SIZE
        return mark[1], mark[2]

    # -- the index checkpoint ------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while True:
            with self._flush_cond:
                while not self._flush_wanted and not self.closed:
                    self._flush_cond.wait()
                if self.closed:
                    return
                self._flush_wanted = False
            try:
                self.flush()
            except Exception:  # the index is only an accelerator: the log stays complete
                log.exception("%s: adding records to the index failed", self.path)

    def flush(self) -> None:
        """Add the tail's records to the index, then drop them from memory."""
        with self.state:
            entries = list(self.locator.entries)
            end = self.end.position
        if not entries:
            return
        covered = self.index.add(entries)
        bound = min(covered, end)
        # the filters first: at every moment a handed-over key is in the tail, the filters or both
        self.locator.seen.add([e for e in entries if e.position <= bound])
        with self.state:
            self.locator.trim(bound)

    def close(self, checkpoint: bool) -> None:
        """Stop the background checkpoint, checkpoint once more if asked, wake waiters, close files."""
        self.closed = True
        with self._flush_cond:
            self._flush_cond.notify_all()
        self._flusher.join()
        if checkpoint:
            try:
                self.flush()
            except Exception:
                log.exception("%s: final index checkpoint failed; the next open rescans the log", self.path)
        with self.changed:
            self.changed.notify_all()
        self.wake_async_waiters()
        self.locator.seen.stop()
        self.index.close()
        self.log.close()


entry_new: Callable[..., Entry] = tuple.__new__


def entry_of(number: int, info: RecordInfo) -> Entry:
    """The index entry of a record found in segment ``number``."""
    return entry_new(
        Entry,
        (
            info.position,
            info.count,
            info.version,
            info.stream,
            number,
            info.offset,
            info.size,
            info.crc,
            info.ids,
        ),
    )


def ahead(head: Head, end: Head) -> bool:
    """Whether ``head`` lies beyond ``end`` in the log."""
    return head.position > end.position or (
        head.position == end.position and (head.segment, head.offset) > (end.segment, end.offset)
    )
