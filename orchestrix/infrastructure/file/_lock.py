"""The writer lock: one thread of one process at a time, across every process sharing a store."""

from __future__ import annotations

import fcntl
import threading
from types import TracebackType


class WriterLock:
    """``flock`` on the store's LOCK file, plus a thread lock for threads of this process.

    flock belongs to the open file description, so a second thread of the same process would
    be let straight in; the thread lock keeps it out. ``fcntl.lockf`` (POSIX record locks) is
    avoided on purpose: closing *any* descriptor of the file would drop it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._threads = threading.Lock()

    def __enter__(self) -> WriterLock:
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
