"""The writer threads: a few threads that write and sync groups for asyncio callers.

An asyncio task that queues an append holds no thread; when the event loop should not block
for a group's sync itself (see :mod:`._commit`), one of these threads takes the writing turn.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class WriterThreads:
    """Threads that write groups for asyncio callers: at most ``count``, started on demand.

    Not a ``concurrent.futures`` pool: that one refuses work once the interpreter starts to
    exit, which would strand appends of threads still running then. These are daemon threads;
    an append they have not finished when the process ends is not acknowledged, like any
    append cut short by an exit.
    """

    def __init__(self, work: Callable[[], None], count: int) -> None:
        self._work = work
        self._count = count
        self._jobs: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._guard = threading.Lock()

    def start_one(self) -> None:
        """Have one thread run ``work`` once."""
        with self._guard:
            if not self._idle and len(self._threads) < self._count:
                thread = threading.Thread(target=self._serve, name="orchestrix-file-writer", daemon=True)
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._jobs.put(True)

    def stop(self) -> None:
        """End the threads once they are idle (the store is closed: no more work comes)."""
        for _ in self._threads:
            self._jobs.put(False)
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while self._jobs.get():
            with self._guard:
                self._idle -= 1
            try:
                self._work()
            except BaseException:  # a bug: _write_turn fails its groups' callers itself first
                log.exception("orchestrix file store: a writer thread failed")
            with self._guard:
                self._idle += 1
