"""Long pure-Python work on a background thread, in slices that let other threads in between.

A thread that runs Python code keeps the GIL until the interpreter's switch interval (5 ms by
default) makes it let go; a thread that asks for it meanwhile (the event loop, a caller) waits
that long. The index checkpoint walks thousands of records in Python: done in one go, it made
an event loop's 1 ms ticks wake 5 to 30 ms late (issue 19). So it works in slices of
``SLICE`` records, and between two slices sleeps ``PAUSE`` seconds: a sleep gives the GIL up,
and whoever waits for it takes it (a bare release would often be won back at once).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

SLICE = 1024
"""Items per slice: a few hundred microseconds of Python work for the checkpoint's steps."""
PAUSE = 50e-6
"""Seconds a slicing thread sleeps between two slices (its cost: a few ms per 100k records)."""


def pause() -> None:
    """Give the GIL to whichever thread waits for it."""
    time.sleep(PAUSE)


def slices(items: Sequence[T], size: int = SLICE) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``, pausing before every slice but the first."""
    for start in range(0, len(items), size):
        if start:
            pause()
        yield items[start : start + size]
