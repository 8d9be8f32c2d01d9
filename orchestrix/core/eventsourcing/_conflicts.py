"""Retrying a decision that lost its version race: reload, decide again, save, with a short
random wait between later attempts so that writers colliding on one stream fall out of step."""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import ConcurrencyError, InvalidArgumentError

__all__ = ["retry_on_conflict", "retry_on_conflict_async"]

T = TypeVar("T")


def retry_on_conflict(operation: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``operation`` (which must reload what it changes) until it wins, at most ``attempts`` times.

    The first retry is immediate; later ones wait a short random time (see :func:`_conflict_backoff`),
    so that writers who keep colliding on one stream fall out of step instead of colliding again.
    """
    # _io.call returns Any (it takes user code of either form): the result is the operation's T.
    return run_sync(
        retry_on_conflict_async(
            cast("Callable[[], Awaitable[T]]", functools.partial(_io.call, operation)), attempts=attempts
        )
    )


async def retry_on_conflict_async(operation: Callable[[], Awaitable[T]], *, attempts: int = 5) -> T:
    """Asyncio form of :func:`retry_on_conflict`; it waits without blocking the loop."""
    if type(attempts) is not int or attempts < 1:
        raise InvalidArgumentError("attempts", attempts, "an int, 1 or more")
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except ConcurrencyError:
            if attempt == attempts:
                raise
        await _io.sleep(_conflict_backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _conflict_backoff(failed_attempts: int) -> float:
    """Seconds to wait before the next attempt: 0 after the first conflict, then up to 1, 2, 4 ... 50 ms."""
    if failed_attempts <= 1:
        return 0.0
    return random.uniform(0, min(0.05, 0.001 * 2 ** (failed_attempts - 2)))
