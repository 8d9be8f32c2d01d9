"""Retry policies: which failures of a saga step (or a projection handler) are worth another try, and when.

Projections take the same policy (``Projection.retry_policy``, ``@projects(..., retry=...)``);
:mod:`orchestrix.core.execution.projection._retries` says what it means there.

A saga class sets ``retry_policy = RetryPolicy(...)``; a handler may set its own with
``@handles(..., retry=RetryPolicy(...))`` or ``@on_deadline(name, retry=...)``. When a step
raises (anything but a store failure or a lost lease):

* a *transient* error with attempts left records :class:`StepFailed` (the error, the attempt,
  when the next one is due) and schedules the runner's own retry deadline in the saga's stream.
  The runner goes on with the rest of its partition; the saga holds its other events (its
  deadlines still fire) until the retry deadline fires and the step runs again, from
  :meth:`Saga.resume <orchestrix.core.execution.saga.Saga.resume>` or by handing the saga the
  failed event again;
* a *permanent* error, or the last attempt, parks the message in the store-backed dead-letter
  record (:mod:`orchestrix.core.execution.dead_letters`) and records the saga stuck, visible to
  ``SagaRunner.stuck()``, until an operator retries or discards it. Nothing is dropped.

Without a policy a failed step gets its saga stuck at once, as before (no dead-letter record).
The delay before attempt ``n + 1`` is ``initial_delay * backoff_multiplier ** (n - 1)`` seconds,
stretched by up to ``jitter`` (a fraction) at random and capped at ``max_delay``: never shorter
than the backoff itself, so a retry always waits at least its backoff.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs

from orchestrix.core.errors import InvalidRetryPolicyError
from orchestrix.core.messaging.messages import Event

__all__ = ["RETRY_DEADLINE", "RETRY_EVENTS", "RetryPolicy", "StepFailed", "Transient"]

RETRY_DEADLINE = "orchestrix.retry"
"""The name of the runner's own deadline that runs a failed step again."""

Transient = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _number(name: str, value: object, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRetryPolicyError(name, value, "must be a finite number")
    if value < minimum or (strict and value == minimum):
        raise InvalidRetryPolicyError(name, value, f"must be {'above' if strict else 'at least'} {minimum}")
    return float(value)


@attrs.frozen
class RetryPolicy:
    """How often and how soon a failed saga step is tried again; see the module docstring.

    ``transient`` is a tuple of exception classes, or a predicate on the exception, saying
    which failures are worth a retry; any other failure is permanent at once.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff_multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.0
    transient: Transient = (Exception,)
    ordered: bool = False
    """Projections: stop at an event that failed for good instead of parking it and going on (a
    saga keeps its own events in order whatever this says: it holds them while it retries)."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.ordered, bool):
            raise InvalidRetryPolicyError("ordered", self.ordered, "must be True or False")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InvalidRetryPolicyError("max_attempts", self.max_attempts, "must be an int")
        if self.max_attempts < 1:
            raise InvalidRetryPolicyError("max_attempts", self.max_attempts, "must be at least 1")
        _number("initial_delay", self.initial_delay, minimum=0.0)
        _number("backoff_multiplier", self.backoff_multiplier, minimum=1.0)
        _number("max_delay", self.max_delay, minimum=0.0)
        _number("jitter", self.jitter, minimum=0.0)
        if self.max_delay < self.initial_delay:
            raise InvalidRetryPolicyError("max_delay", self.max_delay, "must not be below initial_delay")
        transient = self.transient
        if isinstance(transient, tuple):
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in transient):
                raise InvalidRetryPolicyError("transient", transient, "must hold exception classes only")
        elif not callable(transient):
            raise InvalidRetryPolicyError("transient", transient, "must be exception classes or a predicate")

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt."""
        if isinstance(self.transient, tuple):
            return isinstance(error, self.transient)
        return bool(self.transient(error))

    def backoff(self, attempt: int) -> float:
        """The least delay, in seconds, after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, not {attempt}")
        exponent = min(attempt - 1, 1024)  # beyond this the cap has long applied
        try:
            raw = self.initial_delay * self.backoff_multiplier**exponent
        except OverflowError:
            raw = math.inf
        return min(raw, self.max_delay)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> timedelta:
        """The wait after failed attempt ``attempt``: its backoff, stretched by jitter, capped."""
        base = self.backoff(attempt)
        return timedelta(seconds=min(base * (1.0 + self.jitter * rand()), max(base, self.max_delay)))

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` with ``error`` gets another one."""
        return attempt < self.max_attempts and self.is_transient(error)


@attrs.frozen
class StepFailed(Event):
    """A saga step failed with a transient error; the runner tries it again at ``retry_at``."""

    saga_id: str
    reason: str
    error_type: str
    event_type: str
    position: int
    attempt: int
    retry_at: datetime
    occurred_at: datetime


RETRY_EVENTS: tuple[type, ...] = (StepFailed,)


def _policy_of(method: Any) -> RetryPolicy | None:
    """The retry policy a handler declared for itself, if any."""
    return getattr(method, "__orchestrix_retry__", None)


def _set_policy(method: Any, policy: RetryPolicy | None) -> None:
    """Attach a handler's own retry policy (None leaves the saga's)."""
    if policy is None:
        return
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry= takes a RetryPolicy, not {type(policy).__name__}")
    method.__orchestrix_retry__ = policy
