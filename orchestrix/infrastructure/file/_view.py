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
import sqlite3
import threading
from collections.abc import Iterator

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
from orchestrix.infrastructure.file._gil import slices
from orchestrix.infrastructure.file._index import (
    EMPTY,
    OFFSET,
    POSITION,
    SEGMENT,
    Covered,
    Entry,
    Index,
    IndexDamaged,
    Mode,
    last_position,
)
from orchestrix.infrastructure.file._io import FileIO, Syncs
from orchestrix.infrastructure.file._locator import Locator, Seen
from orchestrix.infrastructure.file._log import Log
from orchestrix.infrastructure.file._recovery import Known, known_end, recover
from orchestrix.infrastructure.file._scan import Window, read_frame

log = logging.getLogger(__name__)


class LogView:
    """The log as this process knows it. ``state`` guards ``end`` and ``locator``."""

    locator: Locator
    seen: Seen
    """The locator's filters (here too for code that only waits for them to be built)."""

    def __init__(
        self,
        path: str,
        io: FileIO,
        syncs: Syncs,
        segment_size: int,
        checkpoint_events: int,
        read_only: bool = False,
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
        self.read_only = read_only
        self.log = Log.open_read_only(path, io, syncs) if read_only else Log.open(path, io, syncs)
        self.log.segment_size = segment_size
        try:
            if read_only:
                self._open_read_only()
            else:
                with self.log.lock:
                    head = self.log.read_head()
                    self.index = self._open_index()
                    self._recover(known_end((head, "HEAD"), (self._index_claims, "the index")))
        except BaseException:
            index = getattr(self, "index", None)
            if index is not None:
                index.close()
            self.log.close()
            raise
        self._flusher = threading.Thread(target=self._flush_loop, name="orchestrix-file-index", daemon=True)
        self._flusher.start()

    # -- opening -------------------------------------------------------------------------------

    def _open_read_only(self) -> None:
        """Open without the writer lock and change nothing: read up to HEAD, never repair.

        A live writer may be in the middle of a commit, so what lies past HEAD is not read: it
        is not acknowledged yet. Without a HEAD (no writer ever published one, or it is torn)
        the intact records are read up to the first that is not, which is left as it is. The
        index is read as it is, if it matches the log; else a private one is built in memory.
        """
        head = self.log.read_head()
        path = os.path.join(self.path, INDEX_FILE)
        index: Index | None = None
        try:
            index = Index(path, self.log.store_id, mode=Mode.READ_ONLY)
            covered = index.covered()
            if covered != EMPTY and not self._matches_log(covered):
                index.close()
                index = None
        except (IndexDamaged, sqlite3.Error):
            if index is not None:
                index.close()
            index = None
        if index is None:
            index = Index(path, self.log.store_id, mode=Mode.MEMORY)
        self.index = index
        covered = index.covered()
        self.locator = Locator(index, covered.end.position, self.records_from)
        self.seen = self.locator.seen
        self.end = covered.end
        if head is not None and ahead(head, covered.end):
            for number, info in self.log.scan(covered.end, head):
                self._take_in(number, info)
            self.end = head
        elif head is None:
            known = known_end((covered.end, "the index"))
            recovery = recover(self.log, covered.end, known, read_only=True)
            for number, info in recovery:
                self._take_in(number, info)
            self.end = recovery.end

    def _take_in(self, number: int, info: RecordInfo) -> None:
        self.locator.add(entry_of(number, info))
        self.end = Head(info.position + info.count - 1, number, info.offset + info.size)
        if self.locator.events >= self.checkpoint_events and self.index.mode is not Mode.READ_ONLY:
            self.flush()  # into the private index: memory stays bounded

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
        self._index_claims = covered.end  # the index covers only what was acknowledged: the log reached it
        self._stale_index = covered != EMPTY and not self._matches_log(covered)
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

    def _recover(self, known: Known | None) -> None:
        """Scan what the index does not cover, repair a torn tail, publish the end (writer lock held).

        ``known`` is where HEAD or the index say the log reached: a log that ends before it lost
        acknowledged events, and opening it is refused (CorruptionError), nothing cut.
        """
        if self._stale_index:
            # The index covers only acknowledged records: the log must reach as far before the
            # index is dropped (a read-only scan: nothing is cut, nothing changed, if it does not).
            for _ in recover(self.log, EMPTY.end, known, read_only=True):
                pass
            log.warning("%s: the index does not match the log; rebuilding it from the log", self.index.path)
            self.index.reset()
        covered = self.index.covered()
        self.locator = Locator(self.index, covered.end.position, self.records_from)
        self.seen = self.locator.seen
        self.end = covered.end
        added = 0
        recovery = recover(self.log, covered.end, known)
        for number, info in recovery:
            self._take_in(number, info)  # a long uncovered log (a rebuild): indexed as it is read
            added += info.count
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
            wanted = self.locator.events >= self.checkpoint_events and self.index.mode is not Mode.READ_ONLY
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
            if self.read_only:
                return  # no writer has published anything since (a writer repairs HEAD first)
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
        segment, offset, first = self.start_of(position)
        for seg, at, buf, i, length, crc in self.log.frames(segment, offset, self.end, 65536, first):
            yield seg.number, parse_info(buf, i, length, crc, at)

    def start_of(self, position: int) -> tuple[int, int, int]:
        """(segment, offset, first position) of a record at or shortly before the one holding ``position``."""
        with self.state:
            locator = self.locator
            entry = locator.entry_at(position) if position > locator.bound else None
        if entry is not None:
            return entry[SEGMENT], entry[OFFSET], entry[POSITION]
        mark = self.index.mark_before(position)
        if mark is None:
            return 1, SEGMENT_HEADER_SIZE, 1
        return mark[1], mark[2], mark[0]

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
        # In slices, each its own transaction: Python work in one go would hold the GIL for many
        # ms, and every thread waiting for it (an event loop above all) with it (see _gil).
        covered = 0
        for part in slices(entries):
            covered = self.index.add(part)
            if covered < last_position(part[-1]):  # it lacks records before these
                break
        bound = min(covered, end)
        handed = [e for e in entries if e[POSITION] <= bound]
        # the filters first: at every moment a handed-over key is in the tail, the filters or both
        for part in slices(handed):
            self.locator.seen.add(list(part))
        for part in slices(handed):
            with self.state:
                self.locator.trim(last_position(part[-1]))

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


def entry_of(number: int, info: RecordInfo) -> Entry:
    """The index entry of a record found in segment ``number``."""
    return (
        info.position,
        info.count,
        info.version,
        info.stream,
        number,
        info.offset,
        info.size,
        info.crc,
        b"".join(info.ids),  # one bytes, not a tuple (see Entry)
    )


def ahead(head: Head, end: Head) -> bool:
    """Whether ``head`` lies beyond ``end`` in the log."""
    return head.position > end.position or (
        head.position == end.position and (head.segment, head.offset) > (end.segment, end.offset)
    )
