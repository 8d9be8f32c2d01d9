"""Crash recovery: read the log past a known-good point, cut a torn tail, refuse real corruption.

Every record says which position was already on disk when it was written (its *durable*
field). Appends are acknowledged in log order and only once on disk, so when the record that
should hold position P is damaged, the records after it tell the two cases apart:

- all of them were written while P was not yet on disk (durable < P): none of them, and not P's
  record, was ever acknowledged; the damage is a write that never finished (a torn tail), and
  the log is cut there, with a warning;
- one of them was written after P was on disk (durable >= P): P's record was complete and is now
  damaged; that is corruption, and :class:`CorruptionError` names file and offset.

A multi-stream append is several records in a row, each but the last marked as continued
(``BATCH_CONTINUES``). They are written by one write and acknowledged after one sync, so
recovery keeps them only together: records of an append whose last record is missing or torn
were never acknowledged, and are cut off with the torn write (or, if a later record proves
they were on disk, reported as corruption).

See ``docs/file-format.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import NamedTuple

from orchestrix.core.errors import CorruptionError
from orchestrix.infrastructure.file._format import (
    RECORD_MAGIC,
    SEGMENT_HEADER_SIZE,
    Flaw,
    Head,
    RecordInfo,
    RecordProblem,
    segment_name,
)
from orchestrix.infrastructure.file._log import Log
from orchestrix.infrastructure.file._scan import WINDOW, Segment, Window

log = logging.getLogger(__name__)


class recover:
    """Iterate over (segment number, record) for every intact record after ``start``.

    The caller holds the writer lock. Damage is cut off when it is a torn write, and raises
    CorruptionError otherwise (see the module docstring). Once iterated, :attr:`end` is where
    the log ends.
    """

    def __init__(self, log_: Log, start: Head, known: Known | None = None, read_only: bool = False) -> None:
        self.log = log_
        self.start = start
        self.end = start
        self.known = known
        self.read_only = read_only

    def __iter__(self) -> Iterator[tuple[int, RecordInfo]]:
        log_, start, known = self.log, self.start, self.known
        numbers = log_.segment_numbers()
        if known is not None and (not numbers or known.end.segment > numbers[-1]):
            raise CorruptionError(
                os.path.join(log_.path, segment_name(known.end.segment)),
                0,
                f"segment file missing from the log: {known.says()}",
            )
        if not numbers:
            if self.read_only:
                return
            log_.create_segment(1, 0)
            numbers = [1]
        numbers = [n for n in numbers if n >= start.segment]
        if not numbers or numbers[0] != start.segment:
            raise CorruptionError(
                os.path.join(log_.path, segment_name(start.segment)), 0, "segment file missing from the log"
            )
        number, offset, position = start.segment, start.offset, start.position
        held: list[tuple[int, RecordInfo]] = []  # records of a multi-stream append not yet ended
        for k, n in enumerate(numbers):
            last = k == len(numbers) - 1
            may_be_torn = last and (n != start.segment or offset == SEGMENT_HEADER_SIZE)
            if known is not None and n <= known.end.segment:
                may_be_torn = False  # a segment that held an acknowledged record was created whole
            if not _open_checked(log_, n, may_be_torn, self.read_only):
                if n == 1 and not self.read_only:
                    log_.create_segment(1, 0)
                    number, offset = 1, SEGMENT_HEADER_SIZE
                break
            segment = log_.segment(n)
            if n != start.segment:
                if held:  # a multi-stream append is written into one segment, never across two
                    self._cut_held(numbers[k - 1 :], held, None, known)
                    return
                if segment.base != position:
                    raise CorruptionError(
                        segment.path, 0, f"segment starts after {segment.base}, not {position}"
                    )
                number, offset = n, SEGMENT_HEADER_SIZE
            end = os.fstat(segment.fd).st_size
            window = Window(segment.fd)
            while offset < end:
                info = log_.info_at(segment, window, offset, end)
                if isinstance(info, RecordInfo) and info.position == position + 1:
                    position += info.count
                    offset += info.size
                    if info.continues:
                        held.append((n, info))
                        continue
                    if held:
                        yield from held
                        held = []
                    yield n, info
                    continue
                if isinstance(info, RecordInfo):  # intact, but not the next position: never a torn write
                    raise CorruptionError(
                        segment.path, offset, f"record starts at position {info.position}, not {position + 1}"
                    )
                if last and log_.is_free(segment, offset, end):
                    break  # preallocated space: the log ends here
                if held:
                    self._cut_held(numbers[k:], held, info, known)
                    return
                _check_torn_write(log_, numbers[k:], segment, offset, end, position + 1, info, known)
                if not self.read_only:
                    _cut_torn_write(log_, numbers[k:], segment, offset, end, info)
                self.end = Head(position, n, offset)
                return
        if held:
            self._cut_held([held[0][0]], held, None, known)
            return
        self.end = Head(position, number, offset)
        if known is not None and position < known.end.position:
            raise CorruptionError(
                log_.segment(number).path, offset, f"the log ends at position {position}, but {known.says()}"
            )

    def _cut_held(
        self,
        numbers: list[int],
        held: list[tuple[int, RecordInfo]],
        reason: RecordProblem | None,
        known: Known | None,
    ) -> None:
        """Cut the log where the unended multi-stream append in ``held`` starts."""
        number, first = held[0]
        segment = self.log.segment(number)
        why = reason or RecordProblem(Flaw.INCOMPLETE_RECORD)
        why = RecordProblem(Flaw.MALFORMED_BODY, f"a multi-stream append without its last record ({why})")
        end = os.fstat(segment.fd).st_size
        _check_torn_write(self.log, numbers, segment, first.offset, end, first.position, why, known)
        if not self.read_only:
            _cut_torn_write(self.log, numbers, segment, first.offset, end, why)
        self.end = Head(first.position - 1, number, first.offset)


class Known(NamedTuple):
    """Where the log is known to have reached: what HEAD or the index saw acknowledged."""

    end: Head
    source: str

    def says(self) -> str:
        end = self.end
        return (
            f"{self.source} says position {end.position} was stored "
            f"(in {segment_name(end.segment)}, up to offset {end.offset})"
        )


def known_end(*claims: tuple[Head | None, str]) -> Known | None:
    """The furthest of the ends HEAD and the index claim, if any claims a stored event.

    Both are written only once what they name is on disk (HEAD after the records' fdatasync,
    the index after HEAD), so a log that ends before either lost acknowledged events.
    """
    best: Known | None = None
    for end, source in claims:
        if end is not None and end.position > 0 and (best is None or end.position > best.end.position):
            best = Known(end, source)
    return best


def _check_torn_write(
    log_: Log,
    numbers: list[int],
    segment: Segment,
    bad: int,
    end: int,
    wanted: int,
    reason: RecordProblem,
    known: Known | None,
) -> None:
    """Raise CorruptionError unless the bad bytes at ``bad`` are a write that never finished."""
    later = _written_after(log_, numbers, segment, bad, end, wanted)
    if later is not None:
        raise CorruptionError(
            segment.path, bad, f"{reason}; yet {later} was written after position {wanted} was on disk"
        )
    if known is not None and wanted <= known.end.position:
        raise CorruptionError(segment.path, bad, f"{reason}; yet {known.says()}")


def _cut_torn_write(
    log_: Log, numbers: list[int], segment: Segment, bad: int, end: int, reason: RecordProblem
) -> None:
    """Cut the log at ``bad``: a torn write (checked by :func:`_check_torn_write`)."""
    log.warning(
        "%s: dropping %d bytes of an unfinished write at offset %d (%s)", segment.path, end - bad, bad, reason
    )
    log_.io.ftruncate(segment.fd, bad)
    log_.syncs.file(segment.fd)
    segment.allocated = bad
    for n in numbers[1:]:  # later segments hold only writes that were never acknowledged
        path = os.path.join(log_.path, segment_name(n))
        log.warning("%s: dropping a segment of unfinished writes", path)
        log_.forget_segment(n)
        log_.io.unlink(path)
    if len(numbers) > 1:
        log_.syncs.directory(log_.path)


def _written_after(
    log_: Log, numbers: list[int], segment: Segment, bad: int, end: int, wanted: int
) -> str | None:
    """Where an intact record lies that was written after position ``wanted`` was on disk, if any."""
    found = _scan_for(log_, segment, bad + 1, end, wanted)
    if found is not None:
        return f"the record at offset {found}"
    for n in numbers[1:]:
        try:
            later = log_.segment(n)
        except CorruptionError:
            continue  # a damaged header: nothing intact in it to prove anything
        found = _scan_for(log_, later, SEGMENT_HEADER_SIZE, os.fstat(later.fd).st_size, wanted)
        if found is not None:
            return f"the record at offset {found} of {later.path}"
    return None


def _scan_for(log_: Log, segment: Segment, at: int, end: int, wanted: int) -> int | None:
    """The offset of an intact record in ``[at, end)`` whose durable field is at least ``wanted``."""
    window = Window(segment.fd)
    while at < end:
        chunk = os.pread(segment.fd, WINDOW, at)
        if len(chunk) < len(RECORD_MAGIC):
            return None
        j = chunk.find(RECORD_MAGIC)
        while j >= 0:
            info = log_.info_at(segment, window, at + j, end)
            if isinstance(info, RecordInfo) and info.durable >= wanted:
                return info.offset
            j = chunk.find(RECORD_MAGIC, j + 1)
        at += len(chunk) - len(RECORD_MAGIC) + 1
    return None


def _open_checked(log_: Log, number: int, may_be_torn: bool, read_only: bool = False) -> bool:
    """Open segment ``number``; False if it was a torn creation (now removed, unless read-only)."""
    path = os.path.join(log_.path, segment_name(number))
    try:
        log_.segment(number)
        return True
    except CorruptionError:
        if not may_be_torn or os.path.getsize(path) > SEGMENT_HEADER_SIZE:
            raise
    if read_only:
        return False
    log.warning("%s: removing a segment whose creation never finished", path)
    log_.io.unlink(path)
    log_.syncs.directory(log_.path)
    return False
