"""Crash recovery: read the log past a known-good point, cut a torn tail, refuse real corruption.

Writers append whole commit groups and fdatasync before anything later is written, so damage can
only be an unfinished write if nothing intact of a *later* group follows it. Every record names
where its group starts, which tells the two cases apart (see ``docs/file-format.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from orchestrix.core.errors import CorruptionError
from orchestrix.infrastructure.file._format import (
    RECORD_MAGIC,
    SEGMENT_HEADER_SIZE,
    Head,
    RecordInfo,
    segment_name,
)
from orchestrix.infrastructure.file._log import WINDOW, Log, Segment, Window

log = logging.getLogger("orchestrix.infrastructure.file")


class recover:
    """Iterate over (segment number, record) for every intact record after ``start``.

    The caller holds the writer lock. A damaged record with nothing of a later commit group
    after it is a write that never finished: the file is cut there, with a warning. A damaged
    record followed by a later group, in a segment that is not the last, or a damaged header,
    raises CorruptionError. Once iterated, :attr:`end` is where the log ends.
    """

    def __init__(self, log_: Log, start: Head) -> None:
        self.log = log_
        self.start = start
        self.end = start

    def __iter__(self) -> Iterator[tuple[int, RecordInfo]]:
        log_, start = self.log, self.start
        numbers = log_.segment_numbers()
        if not numbers:
            log_.create_segment(1, 0)
            numbers = [1]
        numbers = [n for n in numbers if n >= start.segment]
        if not numbers or numbers[0] != start.segment:
            raise CorruptionError(
                os.path.join(log_.path, segment_name(start.segment)), 0, "segment file missing from the log"
            )
        number, offset, position = start.segment, start.offset, start.position
        for k, n in enumerate(numbers):
            last = k == len(numbers) - 1
            if not _open_checked(log_, n, last and (n != start.segment or offset == SEGMENT_HEADER_SIZE)):
                if n == 1:
                    log_.create_segment(1, 0)
                    number, offset = 1, SEGMENT_HEADER_SIZE
                break
            segment = log_.segment(n)
            if n != start.segment:
                if segment.base != position:
                    raise CorruptionError(
                        segment.path, 0, f"segment starts after {segment.base}, not {position}"
                    )
                number, offset = n, SEGMENT_HEADER_SIZE
            end = os.fstat(segment.fd).st_size
            window = Window(segment.fd)
            while offset < end:
                info = log_.info_at(segment, window, offset, end)
                if isinstance(info, RecordInfo):
                    if info.position != position + 1:
                        raise CorruptionError(
                            segment.path,
                            offset,
                            f"record starts at position {info.position}, not {position + 1}",
                        )
                    yield n, info
                    position += info.count
                    offset += info.size
                    continue
                if log_.is_free(segment, offset, end):
                    break  # preallocated space: the log ends here
                if not last:
                    raise CorruptionError(segment.path, offset, info + " (a later segment follows)")
                later = _later_group(log_, segment, offset, end)
                if later is not None:
                    raise CorruptionError(
                        segment.path, offset, f"{info}, but a later commit starts at offset {later}"
                    )
                log.warning(
                    "%s: dropping %d bytes of an unfinished write at offset %d (%s)",
                    segment.path,
                    end - offset,
                    offset,
                    info,
                )
                os.ftruncate(segment.fd, offset)
                log_.fsync(segment.fd)
                segment.allocated = offset
                break
        self.end = Head(position, number, offset)


def _open_checked(log_: Log, number: int, may_be_torn: bool) -> bool:
    """Open segment ``number``; False if it was a torn creation (now removed)."""
    path = os.path.join(log_.path, segment_name(number))
    try:
        log_.segment(number)
        return True
    except CorruptionError:
        if not may_be_torn or os.path.getsize(path) > SEGMENT_HEADER_SIZE:
            raise
    log.warning("%s: removing a segment whose creation never finished", path)
    os.unlink(path)
    log_.fsync_directory()
    return False


def _later_group(log_: Log, segment: Segment, bad: int, end: int) -> int | None:
    """The offset of an intact record of a commit group that began after ``bad``, if any."""
    window = Window(segment.fd)
    at = bad + 1
    while at < end:
        chunk = os.pread(segment.fd, WINDOW, at)
        if len(chunk) < len(RECORD_MAGIC):
            return None
        j = chunk.find(RECORD_MAGIC)
        while j >= 0:
            info = log_.info_at(segment, window, at + j, end)
            if isinstance(info, RecordInfo) and bad < info.group <= info.offset:
                return info.offset
            j = chunk.find(RECORD_MAGIC, j + 1)
        at += len(chunk) - len(RECORD_MAGIC) + 1
    return None
