"""The log: the store directory, its segment files, the HEAD hint, writing and scanning records.

The segment files are the truth. Everything here works on bytes and file descriptors; the
store above decides what the records mean. Whatever changes a file goes through the store's
:class:`~._io.FileIO`, and every sync through its :class:`~._io.Syncs`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import uuid
from collections.abc import Callable, Iterator

from orchestrix.core.errors import CorruptionError, StoreError, StoreFormatError
from orchestrix.infrastructure.file._format import (
    FRAME,
    FRAME_SIZE,
    HEAD_FILE,
    HEAD_STRUCT,
    LOCK_FILE,
    SEGMENT_HEADER_SIZE,
    SHORT_BUFFER,
    STORE_FILE,
    Flaw,
    FormatProblem,
    Head,
    NewerFormat,
    RecordInfo,
    RecordProblem,
    check_frame,
    pack_head,
    pack_segment_header,
    pack_store,
    parse_info,
    segment_name,
    segment_number,
    unpack_head,
    unpack_segment_header,
    unpack_store,
)
from orchestrix.infrastructure.file._io import FileIO, Syncs
from orchestrix.infrastructure.file._lock import WriterLock

log = logging.getLogger(__name__)

STORE_TMP = STORE_FILE + ".tmp"
WINDOW = 256 * 1024
PREALLOCATE = 4 * 1024 * 1024
HEAD_MAP_SIZE = 4096
_SPAN = struct.Struct("<Q16xI")  # a record's first position and its event count
_SPAN_AT = FRAME_SIZE + 8  # after the frame and the durable position
_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


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


class Log:
    """The files of one store directory. Create it with :meth:`open`."""

    def __init__(
        self,
        path: str,
        store_id: bytes,
        lock_fd: int,
        head_fd: int,
        io: FileIO,
        syncs: Syncs,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.store_id = store_id
        self.read_only = read_only
        self.io = io
        self.syncs = syncs
        self._pwrite = io.pwrite  # looked up once: the append path calls it for every group
        self.segment_size = 1 << 62
        self.reserve_margin = 0
        self._preallocating = True
        self.lock = WriterLock(lock_fd)
        self._lock_fd = lock_fd
        self._head_fd = head_fd
        # HEAD is read on every operation and written on every commit: a shared mapping makes
        # both plain memory accesses, coherent across processes through the page cache.
        if not read_only:
            self._head = mmap.mmap(head_fd, HEAD_MAP_SIZE)
        elif head_fd >= 0:
            self._head = mmap.mmap(head_fd, HEAD_MAP_SIZE, prot=mmap.PROT_READ)
        else:  # no HEAD to read (a store whose writers never published one): a blank one, never ahead
            self._head = mmap.mmap(-1, HEAD_MAP_SIZE)
        self._head_cache: tuple[bytes, Head | None] = (b"", None)  # last bytes seen, and their meaning
        self._segments: dict[int, Segment] = {}

    # -- opening and creating ------------------------------------------------------------------

    @classmethod
    def open_read_only(cls, path: str, io: FileIO, syncs: Syncs) -> Log:
        """Open the store at ``path`` to read it only: no lock, no file created or written."""
        head_fd = -1
        try:
            if not os.path.isdir(path):
                what = "is not a directory" if os.path.lexists(path) else "does not exist"
                raise StoreFormatError(path, f"{what}, so it holds no file store (nothing was created)")
            if not os.path.isfile(os.path.join(path, STORE_FILE)):
                raise StoreFormatError(path, "not an orchestrix file store (no STORE file)")
            store_id = _read_store_id(path)
            with contextlib.suppress(FileNotFoundError):
                head_fd = os.open(os.path.join(path, HEAD_FILE), _READ_FLAGS)
            if head_fd >= 0 and os.fstat(head_fd).st_size < HEAD_MAP_SIZE:
                _close_quietly(head_fd)
                head_fd = -1
        except OSError as exc:
            _close_quietly(head_fd)
            raise StoreError(f"cannot open file store at {path}: {exc.strerror or exc}") from exc
        return cls(path, store_id, -1, head_fd, io, syncs, read_only=True)

    @classmethod
    def open(cls, path: str, io: FileIO, syncs: Syncs) -> Log:
        """Open the store at ``path``, creating it if the directory is missing or empty.

        Anything that is not a store (a file, a foreign directory, a newer format) is refused
        before a single byte is written.
        """
        try:
            if os.path.lexists(path) and not os.path.isdir(path):
                raise StoreFormatError(path, "exists and is not a directory")
            os.makedirs(path, exist_ok=True)
            names = set(os.listdir(path))
            if STORE_FILE in names:
                _read_store_id(path)  # refuses a newer format before LOCK is touched
            elif names - {LOCK_FILE, STORE_TMP}:
                raise StoreFormatError(
                    path, "not an orchestrix file store (no STORE file) and the directory is not empty"
                )
            lock_fd = io.open(os.path.join(path, LOCK_FILE), _FLAGS | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open file store at {path}: {exc.strerror or exc}") from exc
        head_fd = -1
        try:
            with WriterLock(lock_fd):
                if not os.path.exists(os.path.join(path, STORE_FILE)):
                    _create_store_file(path, io, syncs)
                store_id = _read_store_id(path)
                head_fd = io.open(os.path.join(path, HEAD_FILE), _FLAGS | os.O_CREAT, 0o644)
                if os.fstat(head_fd).st_size < HEAD_MAP_SIZE:
                    io.ftruncate(head_fd, HEAD_MAP_SIZE)
        except OSError as exc:
            _close_quietly(lock_fd, head_fd)
            raise StoreError(f"cannot open file store at {path}: {exc.strerror or exc}") from exc
        except BaseException:
            _close_quietly(lock_fd, head_fd)
            raise
        return cls(path, store_id, lock_fd, head_fd, io, syncs)

    def close(self) -> None:
        """Close every file descriptor."""
        for segment in self._segments.values():
            _close_quietly(segment.fd)
        self._segments.clear()
        with contextlib.suppress(BufferError, ValueError):
            self._head.close()
        _close_quietly(self._head_fd, self._lock_fd)

    # -- segments --------------------------------------------------------------------------------

    def segment_numbers(self) -> list[int]:
        """The segment numbers present on disk, checked to run 1, 2, … without gaps."""
        numbers = sorted(n for n in map(segment_number, os.listdir(self.path)) if n is not None)
        if numbers and numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise CorruptionError(
                os.path.join(self.path, segment_name(missing[0])), 0, "segment file missing from the log"
            )
        return numbers

    def segment(self, number: int) -> Segment:
        """The open segment ``number``; its header is checked when it is first opened."""
        segment = self._segments.get(number)
        if segment is not None:
            return segment
        path = os.path.join(self.path, segment_name(number))
        try:
            fd = os.open(path, _READ_FLAGS) if self.read_only else self.io.open(path, _FLAGS)
        except FileNotFoundError:
            raise CorruptionError(path, 0, "segment file missing from the log") from None
        try:
            base = self._check_header(path, fd, number)
        except BaseException:
            os.close(fd)
            raise
        segment = self._segments.setdefault(number, Segment(number, path, fd, base))
        if segment.fd != fd:
            os.close(fd)
        return segment

    def _check_header(self, path: str, fd: int, number: int) -> int:
        try:
            _, found, store_id, base = unpack_segment_header(pread_full(fd, SEGMENT_HEADER_SIZE, 0))
        except NewerFormat as exc:
            raise StoreFormatError(path, str(exc)) from None
        except FormatProblem as exc:
            raise CorruptionError(path, 0, str(exc)) from None
        if found != number:
            raise CorruptionError(path, 0, f"header names segment {found}")
        if store_id != self.store_id:
            raise CorruptionError(path, 0, "segment belongs to another store")
        return base

    def create_segment(self, number: int, base: int) -> Segment:
        """Create segment ``number`` holding positions after ``base``; durable before it is used."""
        io = self.io
        path = os.path.join(self.path, segment_name(number))
        try:
            fd = io.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            # A writer died between creating it and using it: it may hold no record.
            fd = io.open(path, _FLAGS)
            leftover = Segment(number, path, fd, base)
            if not self.is_free(leftover, SEGMENT_HEADER_SIZE, os.fstat(fd).st_size):
                os.close(fd)
                raise CorruptionError(
                    path, SEGMENT_HEADER_SIZE, "segment exists beyond the log's end"
                ) from None
        try:
            header = pack_segment_header(number, self.store_id, base)
            io.pwrite(fd, header, 0)
            io.ftruncate(fd, SEGMENT_HEADER_SIZE)
            self.syncs.file(fd)
            self.syncs.directory(self.path)
        except BaseException:
            os.close(fd)
            raise
        old = self._segments.pop(number, None)
        if old is not None:
            _close_quietly(old.fd)
        segment = self._segments[number] = Segment(number, path, fd, base)
        return segment

    def forget_segment(self, number: int) -> None:
        """Close segment ``number`` (recovery is about to delete it)."""
        segment = self._segments.pop(number, None)
        if segment is not None:
            _close_quietly(segment.fd)

    def size(self, number: int) -> int:
        """The current size of segment ``number``'s file."""
        return os.fstat(self.segment(number).fd).st_size

    # -- HEAD ------------------------------------------------------------------------------------

    def read_head(self) -> Head | None:
        """The published committed end, or None if HEAD is missing or unreadable."""
        for _ in range(3):
            raw = self._head[: HEAD_STRUCT.size]
            seen_raw, seen = self._head_cache
            if raw == seen_raw:
                return seen  # unchanged since last time: the common case, made cheap
            head = unpack_head(raw)
            if head is not None:
                self._head_cache = (raw, head)
                return head
        return None

    def write_head(self, head: Head) -> None:
        """Publish the committed end to readers in other processes (a hint: not fsynced)."""
        raw = pack_head(head)
        self._head[: HEAD_STRUCT.size] = raw
        self._head_cache = (raw, head)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, segment: Segment, offset: int, data: bytes | bytearray) -> None:
        """Write ``data`` at ``offset`` (not synced: the commit syncs its whole group)."""
        end = offset + len(data)
        if self._preallocating and end > segment.allocated:
            self._preallocate(segment, end)
        view = memoryview(data)
        pwrite = self._pwrite
        while view:
            written = pwrite(segment.fd, view, offset)
            if written <= 0:
                raise OSError(errno.EIO, "short write")
            view = view[written:]
            offset += written

    def _preallocate(self, segment: Segment, end: int) -> None:
        # Writing into space that is already allocated *and written* spares each fdatasync the
        # journal commit that growing the file costs. The space is filled with real zeros, not
        # posix_fallocate'd: a write into fallocate'd (unwritten) extents converts them, which is
        # metadata again (fdatasync ~25% slower on ext4 here). Zeros read as "no record yet" to
        # readers and recovery. One fsync commits the new size and blocks, once per reservation.
        size = os.fstat(segment.fd).st_size
        if end <= size:  # space reserved before (by this process or an earlier one) still covers it
            segment.allocated = size
            return
        target = max(end, min(size + PREALLOCATE, self.segment_size))
        # Never reserve the last free space: the records themselves, the index and the
        # checkpoints need it. Reserve what fits above the margin, or nothing (the file grows).
        try:
            stat = self.io.statvfs(self.path)
            room = stat.f_bavail * stat.f_frsize - self.reserve_margin
        except OSError:
            room = target - size
        target = min(target, size + room)
        if target < end:
            return  # nearly full: no reservation now; each write grows the file
        try:
            _write_zeros(self._pwrite, segment.fd, size, target - size)
        except OSError:
            # No room after all (another writer took it): give back what was reserved, and
            # reserve no more in this process; files simply grow.
            self._preallocating = False
            self.io.ftruncate(segment.fd, size)
            return
        self.syncs.file(segment.fd)
        segment.allocated = target

    def seal(self, segment: Segment, end: int) -> None:
        """Cut a full segment at its last record (dropping preallocated space) before the next one starts."""
        if os.fstat(segment.fd).st_size > end:
            self.io.ftruncate(segment.fd, end)
        self.syncs.file(segment.fd)
        segment.allocated = end

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


def _read_store_id(path: str) -> bytes:
    store_file = os.path.join(path, STORE_FILE)
    with open(store_file, "rb") as f:
        data = f.read(4096)
    try:
        return unpack_store(data)
    except FormatProblem as exc:
        raise StoreFormatError(store_file, str(exc)) from None


def _create_store_file(path: str, io: FileIO, syncs: Syncs) -> None:
    tmp = os.path.join(path, STORE_TMP)
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        io.write(fd, pack_store(uuid.uuid4().bytes))
        syncs.marker(fd)
    finally:
        os.close(fd)
    io.replace(tmp, os.path.join(path, STORE_FILE))
    syncs.marker_directory(path)


def _close_quietly(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


_ZEROS = bytes(1 << 20)


def _write_zeros(pwrite: Callable[[int, memoryview, int], int], fd: int, offset: int, size: int) -> None:
    while size > 0:
        written = pwrite(fd, memoryview(_ZEROS)[: min(size, len(_ZEROS))], offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write while reserving space")
        offset += written
        size -= written
