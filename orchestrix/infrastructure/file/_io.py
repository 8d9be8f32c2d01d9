"""The store's I/O seam, and the one place that decides which syncs run.

Every call by which the file store changes the files of its log (open, write, sync, truncate,
rename, remove) goes through a :class:`FileIO`. A store uses the plain ``os`` functions unless
it is given another ``FileIO`` (see :class:`~._policy.FilePolicy`): a test passes one that
fails a sync, holds it, or records every write and sync in order, which is what a power-loss
test replays (which writes may a crash keep, given the syncs that came before?). HEAD is a
memory-mapped hint and the index is SQLite's own database: neither has to survive a power
loss (both are rebuilt from the segments), so neither goes through here.

:class:`Syncs` decides, once per store, which syncs happen; every sync path of the store calls
one of its members. The callers hold them as bound methods looked up once, so the seam costs
nothing on the append path: with the default ``FileIO`` they are the ``os`` functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING


def fsync_directory(path: str) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileIO:
    """The system calls that change the log's files: override any of them in a subclass.

    Each has the signature of its ``os`` namesake; :meth:`fsync_directory` takes a path.
    :meth:`statvfs` tells the store how much space is left before it reserves any (a test
    passes one that says the disk is nearly full).
    """

    if TYPE_CHECKING:
        # What the store calls and a subclass overrides, declared for the type checkers; at run
        # time they are the os functions themselves (below), so the seam adds no call.
        def open(self, path: str, flags: int, mode: int = 0o777, /) -> int: ...
        def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int, /) -> int: ...
        def write(self, fd: int, data: bytes | bytearray | memoryview, /) -> int: ...
        def fdatasync(self, fd: int, /) -> None: ...
        def fsync(self, fd: int, /) -> None: ...
        def ftruncate(self, fd: int, length: int, /) -> None: ...
        def replace(self, src: str, dst: str, /) -> None: ...
        def unlink(self, path: str, /) -> None: ...
        def fsync_directory(self, path: str, /) -> None: ...
        def statvfs(self, path: str, /) -> os.statvfs_result: ...
    else:
        open = staticmethod(os.open)
        pwrite = staticmethod(os.pwrite)
        write = staticmethod(os.write)
        fdatasync = staticmethod(os.fdatasync)
        fsync = staticmethod(os.fsync)
        ftruncate = staticmethod(os.ftruncate)
        replace = staticmethod(os.replace)
        unlink = staticmethod(os.unlink)
        fsync_directory = staticmethod(fsync_directory)
        statvfs = staticmethod(os.statvfs)


def _skipped(_: object) -> None:
    """A sync the store was told to leave out (``sync=False``)."""


class Syncs:
    """Which syncs the store makes: decided here, once, for every sync path of the store.

    ==========================  ======================================================  ===========
    member                      makes durable                                          sync=False
    ==========================  ======================================================  ===========
    ``records(fd)``             appended records, before their appends are answered     skipped
                                (``fdatasync``)
    ``file(fd)``                a file's size or header: a new segment, reserved        skipped
                                space, a full segment cut to its end, a torn write cut
                                off, records a dead writer left and this one adopts
    ``directory(path)``         a segment file created or removed                       skipped
    ``marker(fd)``,             the STORE file of a new store                           made
    ``marker_directory(path)``                                                          durable
    ==========================  ======================================================  ===========

    The STORE file is made durable even with ``sync=False``: it is written once per store,
    and a directory that kept its segments but lost it after a power cut could not be opened
    again (a non-empty directory without STORE is refused as not a store).
    """

    __slots__ = ("directory", "durable", "file", "marker", "marker_directory", "records")

    def __init__(self, io: FileIO, durable: bool) -> None:
        self.durable = durable
        self.records: Callable[[int], None] = io.fdatasync if durable else _skipped
        self.file: Callable[[int], None] = io.fsync if durable else _skipped
        self.directory: Callable[[str], None] = io.fsync_directory if durable else _skipped
        self.marker: Callable[[int], None] = io.fsync
        self.marker_directory: Callable[[str], None] = io.fsync_directory
