"""Ctrl-C deferral: while the main thread does commit work, a Ctrl-C waits until that work is done.

Python raises KeyboardInterrupt between any two bytecodes of the main thread. Inside the commit
protocol that would leave a group that never retires, or the writing handed to nobody: every
later append hangs, and ``close()`` with them. So while Python's own SIGINT handler is in
place, a Ctrl-C is noted and raised once the work is done (a few ms at most: one write and one
fdatasync). Other threads never get KeyboardInterrupt; a program's own handler (asyncio.run
installs one, which raises nothing here) is left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestrix._speedups import signal_module as _sig

_SIGINT = int(_sig.SIGINT)


class SigintDeferred:
    """A context: in the main thread, under Python's default handler, Ctrl-C is raised on exit."""

    __slots__ = ("caught", "previous")
    active: SigintDeferred | None = None  # the one in force (only ever in the main thread)

    def __enter__(self) -> SigintDeferred:
        self.previous: Any = None
        self.caught = False
        if (
            threading.get_ident() == threading.main_thread().ident
            and _sig.getsignal(_SIGINT) is _sig.default_int_handler
        ):
            self.previous = _sig.signal(_SIGINT, self._note)
            SigintDeferred.active = self
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.caught = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            SigintDeferred.active = None
            _sig.signal(_SIGINT, self.previous)
            if self.caught:
                raise KeyboardInterrupt

    @staticmethod
    def wait_interruptibly(wait: Callable[[], object]) -> None:
        """Run ``wait`` (a wait that may never end: another process's lock) open to Ctrl-C."""
        deferred = SigintDeferred.active
        if deferred is None or threading.get_ident() != threading.main_thread().ident:
            wait()
            return
        _sig.signal(_SIGINT, deferred.previous)
        try:
            if deferred.caught:  # pressed before the wait began
                deferred.caught = False
                raise KeyboardInterrupt
            wait()
        finally:
            _sig.signal(_SIGINT, deferred._note)
