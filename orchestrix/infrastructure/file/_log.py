"""The log: the store directory, its segment files, the HEAD hint, and writing records.

The segment files are the truth. Everything here works on bytes and file descriptors; the
store above decides what the records mean. Whatever changes a file goes through the store's
:class:`~._io.FileIO`, and every sync through its :class:`~._io.Syncs`. Reading the records
back in log order is ``_scan.py``'s (:class:`~._scan.LogScans`, which :class:`Log` extends).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import uuid
from collections.abc import Callable

from orchestrix.core.errors import CorruptionError, StoreError, StoreFormatError
from orchestrix.infrastructure.file._format import (
    HEAD_FILE,
    HEAD_STRUCT,
    LOCK_FILE,
    SEGMENT_HEADER_SIZE,
    STORE_FILE,
    FormatProblem,
    Head,
    NewerFormat,
    pack_head,
    pack_segment_header,
    pack_store,
    segment_name,
    segment_number,
    unpack_head,
    unpack_segment_header,
    unpack_store,
)
from orchestrix.infrastructure.file._io import FileIO, Syncs
from orchestrix.infrastructure.file._lock import WriterLock
from orchestrix.infrastructure.file._scan import LogScans, Segment, pread_full

log = logging.getLogger(__name__)

STORE_TMP = STORE_FILE + ".tmp"
PREALLOCATE = 4 * 1024 * 1024
HEAD_MAP_SIZE = 4096
_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class Log(LogScans):
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
        pwrite = self._pwrite
        written = pwrite(segment.fd, data, offset)
        if written == len(data):  # the usual case: no memoryview to slice for a short write
            return
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = memoryview(data)[written:]
        offset += written
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
