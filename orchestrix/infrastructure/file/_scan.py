"""Reading records back from the segment files: a buffered window over a file, one record's
frame, and the log-order scans that check each record starts where the one before ended.

Bytes and file descriptors only, as in ``_log.py``, whose :class:`~._log.Log` opens, creates
and writes the files; it reads them through :class:`LogScans`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from orchestrix.core.errors import CorruptionError
from orchestrix.infrastructure.file._format import (
    FRAME,
    FRAME_SIZE,
    SEGMENT_HEADER_SIZE,
    SHORT_BUFFER,
    Flaw,
    FormatProblem,
    Head,
    RecordInfo,
    RecordProblem,
    check_frame,
    parse_info,
    segment_name,
)

__all__: list[str] = []

WINDOW = 256 * 1024
_SPAN = struct.Struct("<Q16xI")  # a record's first position and its event count
_SPAN_AT = FRAME_SIZE + 8  # after the frame and the durable position


def pread_full(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``; fewer only at the end of the file."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Window:
    """A read buffer over one file, refilled around the offset asked for.

    Each refill reads ``size`` bytes, doubling up to ``grow_to``: a short read stays cheap, a
    long sequential one soon reads big blocks.
    """

    __slots__ = ("buf", "fd", "grow_to", "size", "start")

    def __init__(self, fd: int, size: int = WINDOW, grow_to: int = 0) -> None:
        self.fd = fd
        self.size = size
        self.grow_to = grow_to
        self.buf = b""
        self.start = 0

    def get(self, offset: int, length: int) -> tuple[bytes, int]:
        """(buffer, index): ``buffer[index:index + length]`` is the file's data there (shorter at EOF)."""
        start = self.start
        if start <= offset and offset + length <= start + len(self.buf):
            return self.buf, offset - start
        self.buf = pread_full(self.fd, max(length, self.size), offset)
        self.start = offset
        if self.size < self.grow_to:
            self.size *= 2
        return self.buf, 0


def read_frame(window: Window, offset: int, end: int) -> tuple[bytes, int, int, int] | RecordProblem:
    """(buffer, index, body length, crc) of the intact record at ``offset``, or why there is none.

    ``end`` is where the readable data of the file stops.
    """
    buf, i = window.get(offset, FRAME_SIZE)
    result = check_frame(buf, i, end - offset)
    if result is SHORT_BUFFER:
        length = FRAME.unpack_from(buf, i)[2]
        buf, i = window.get(offset, FRAME_SIZE + length)
        result = check_frame(buf, i, min(end - offset, len(buf) - i))
    if isinstance(result, RecordProblem):
        return result
    return buf, i, result[0], result[1]


class Segment:
    """One open segment file."""

    __slots__ = ("allocated", "base", "fd", "number", "path")

    def __init__(self, number: int, path: str, fd: int, base: int) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.base = base
        self.allocated = 0


class LogScans:
    """The reads of a log's records in log order; :class:`~._log.Log` supplies the open files."""

    path: str

    def segment(self, number: int) -> Segment:
        """The open segment ``number`` (the log opens and checks it)."""
        raise NotImplementedError

    # -- past the committed end ------------------------------------------------------------------

    def dangling(self, end: Head) -> bool:
        """Whether a writer left something after the committed ``end`` (it died mid-commit).

        Either bytes other than preallocated zeros follow ``end``, or the segment stops right
        there (it was cut for a rollover) and the next segment exists. Preallocated zeros after
        ``end``, the common case, need no look at the directory.
        """
        data = os.pread(self.segment(end.segment).fd, FRAME_SIZE, end.offset)
        if data:
            return bool(data.strip(b"\0"))
        return os.path.exists(os.path.join(self.path, segment_name(end.segment + 1)))

    def is_free(self, segment: Segment, offset: int, end: int) -> bool:
        """Whether ``[offset, end)`` holds only zeros: preallocated space, not a torn write."""
        while offset < end:
            chunk = os.pread(segment.fd, min(WINDOW, end - offset), offset)
            if not chunk:
                return True
            if chunk != bytes(len(chunk)):  # a compare with fresh zeros: ~40x faster than strip
                return False
            offset += len(chunk)
        return True

    # -- reading ---------------------------------------------------------------------------------

    def frames(
        self, number: int, offset: int, stop: Head, window_size: int = WINDOW, first: int | None = None
    ) -> Iterator[tuple[Segment, int, bytes, int, int, int]]:
        """The committed records from ``offset`` in segment ``number`` up to ``stop``, in log order.

        Yields (segment, offset, buffer, index in buffer, body length, crc); any damage is corruption.
        ``first``, if given, is the position the record at ``offset`` starts at: then every record
        must start where the one before it ended, and every segment where the one before it
        ended, up to ``stop``, so that damaged storage (a record copied to the end of a segment,
        a segment of another log) is corruption, never a position read twice or skipped.
        """
        expected = first
        while True:
            segment = self.segment(number)
            if expected is not None and offset == SEGMENT_HEADER_SIZE and segment.base != expected - 1:
                raise CorruptionError(
                    segment.path, 0, f"segment starts after {segment.base}, not {expected - 1}"
                )
            end = stop.offset if number == stop.segment else os.fstat(segment.fd).st_size
            window = Window(segment.fd, window_size)
            while offset < end:
                frame = read_frame(window, offset, end)
                if isinstance(frame, RecordProblem):
                    raise CorruptionError(segment.path, offset, str(frame))
                buf, i, length, crc = frame
                if expected is not None:
                    position, count = _SPAN.unpack_from(buf, i + _SPAN_AT)
                    if position != expected:
                        raise CorruptionError(
                            segment.path, offset, f"record starts at position {position}, not {expected}"
                        )
                    expected += count
                yield segment, offset, buf, i, length, crc
                offset += FRAME_SIZE + length
            if number >= stop.segment:
                if expected is not None and expected - 1 != stop.position:
                    raise CorruptionError(
                        segment.path,
                        offset,
                        f"the log should end at position {stop.position}; its records end at {expected - 1}",
                    )
                return
            number += 1
            offset = SEGMENT_HEADER_SIZE

    def scan(self, start: Head, stop: Head) -> Iterator[tuple[int, RecordInfo]]:
        """Yield (segment number, record) for the committed records after ``start`` up to ``stop``.

        Any damage is corruption.
        """
        position, number, offset = start.position, start.segment, start.offset
        for segment, offset, buf, i, length, crc in self.frames(start.segment, start.offset, stop):
            if segment.number != number:
                number = segment.number
                if segment.base != position:
                    raise CorruptionError(
                        segment.path, 0, f"segment starts after {segment.base}, not {position}"
                    )
            try:
                info = parse_info(buf, i, length, crc, offset)
            except (FormatProblem, struct.error) as exc:
                problem = RecordProblem(Flaw.MALFORMED_BODY, exc)
                raise CorruptionError(segment.path, offset, str(problem)) from None
            if info.position != position + 1:
                raise CorruptionError(
                    segment.path, offset, f"record starts at position {info.position}, not {position + 1}"
                )
            yield number, info
            position += info.count
        if position != stop.position:
            raise CorruptionError(
                self.segment(stop.segment).path,
                stop.offset,
                f"HEAD says the log ends at position {stop.position}; the records end at {position}",
            )

    def info_at(self, segment: Segment, window: Window, offset: int, end: int) -> RecordInfo | RecordProblem:
        """The index facts of the intact record at ``offset``, or why there is none."""
        frame = read_frame(window, offset, end)
        if isinstance(frame, RecordProblem):
            return frame
        buf, i, length, crc = frame
        try:
            return parse_info(buf, i, length, crc, offset)
        except (FormatProblem, struct.error) as exc:
            return RecordProblem(Flaw.MALFORMED_BODY, exc)
