"""Retry policies for projections: a failing handler tried again with backoff, then parked.

A projection sets ``retry_policy = RetryPolicy(...)``; a handler may set its own with
``@projects(Event, retry=RetryPolicy(...))``. When a handler under a policy raises (anything
but a wrong-driver ``EventLoopRequiredError``):

* a *transient* error with attempts left: the runner waits the policy's backoff (with jitter,
  capped at ``max_delay``) and hands the handler the same event again, in place; the
  projection's later events wait for it, as its order is the point of a projection;
* a *permanent* error, or the last attempt: the event is parked as a dead letter
  (:class:`~orchestrix.core.execution.dead_letters.ProjectionEventDeadLettered` in
  ``orchestrix-dead-letters``: the event, the error, the attempts, the first and last failure
  times), counted in ``stats.dead_lettered``, and the projection goes on with the next event;
  nothing is dropped silently;
* with ``RetryPolicy(ordered=True)`` the projection stops there instead (``ProjectionError``,
  as without a policy), after recording
  :class:`~orchestrix.core.execution.dead_letters.ProjectionEventFailed` in the same stream.

A handler under a policy is called again after it raised, so it must leave no half-made change
behind when it raises (or be idempotent, which at-least-once delivery asks of it anyway).

Operators list, retry or discard parked events with
:class:`~orchestrix.core.execution.dead_letters.DeadLetters` or ``orchestrix dead-letters``. A
request is an event in the global order; the runner feeding that projection carries it out when
its page reaches the request (retry: the handler runs on the parked event once more; discard:
the record is closed) and records the outcome, so a redelivered request does nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from orchestrix.core import _io
from orchestrix.core.errors import DeadLetterNotFoundError, EventLoopRequiredError
from orchestrix.core.eventsourcing.store import ANY
from orchestrix.core.execution.dead_letters import (
    DEAD_LETTER_STREAM,
    DeadLetterDiscardRequested,
    DeadLetterResolved,
    DeadLetterRetryRequested,
    DeadLetters,
    ProjectionEventDeadLettered,
    ProjectionEventFailed,
    projection_dead_letter_id,
)
from orchestrix.core.execution.projection.base import Projection, _Handler
from orchestrix.core.execution.retry import RetryPolicy
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__: list[str] = []

_log = logging.getLogger(__name__)

_PARKED_IDS = uuid.UUID("9b0e3f6a-2d4c-4b8e-8f1a-5c7d9e2b4a61")


def policy_for(projection: Projection, handler: _Handler) -> RetryPolicy | None:
    """The handler's own policy, else its projection's (looked up now, so an override counts)."""
    return handler.policy or type(projection).retry_policy


def start_handler(handler: _Handler, projection: Projection, recorded: RecordedEvent) -> Any:
    """Hand one event to one handler, in the form it takes; what it returns (None, or for an async
    handler the awaitable to settle with ``_io.settle``). A catch-up calls this per event: a
    plain handler costs no coroutine."""
    if handler.with_envelope:
        return handler.method(projection, recorded.event, recorded)
    return handler.method(projection, recorded.event)


async def call_handler(handler: _Handler, projection: Projection, recorded: RecordedEvent) -> None:
    """Hand one event to one handler, in the form it takes, and wait for it."""
    result = start_handler(handler, projection, recorded)
    if result is not None:
        await _io.settle(result)


class Retries:
    """What a projection runner does with a failing handler under a policy, and with requests."""

    def __init__(
        self,
        store: Any,
        now: Callable[[], datetime],
        sleep: Callable[[float], Any] | None,
    ) -> None:
        self.store = store
        self.now = now
        self.sleep = sleep

    async def handle(
        self,
        name: str,
        projection: Projection,
        handler: _Handler,
        recorded: RecordedEvent,
        policy: RetryPolicy,
        stats: Any,
    ) -> BaseException | None:
        """Run the handler under ``policy``: None once it succeeded or its event is parked.

        Returns the error when the policy is ordered and the event failed for good (its
        ``ProjectionEventFailed`` already stored); the runner then stops as without a policy.
        """
        attempt = 0
        first: datetime | None = None
        while True:
            attempt += 1
            try:
                await call_handler(handler, projection, recorded)
                return None
            except EventLoopRequiredError:
                raise  # the wrong form was called, the handler did not fail
            except Exception as exc:
                now = self.now()
                first = first or now
                if policy.retries(exc, attempt):
                    delay = policy.delay(attempt).total_seconds()
                    stats.retried += 1
                    _log.warning(
                        "projection %r: %s() for %s at position %d failed (attempt %d of %d, %s: %s); "
                        "again in %.3f s",
                        name,
                        handler.name,
                        recorded.event_type,
                        recorded.position,
                        attempt,
                        policy.max_attempts,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await self._pause(delay)
                    continue
                if policy.ordered:
                    await self._record_failure(name, recorded, exc, attempt, now)
                    return exc
                await self._park(name, recorded, exc, attempt, first, now)
                stats.dead_lettered += 1
                return None

    async def _pause(self, seconds: float) -> None:
        if self.sleep is None:
            await _io.sleep(seconds)
        else:
            await _io.call(self.sleep, seconds)

    async def _park(
        self,
        name: str,
        recorded: RecordedEvent,
        exc: Exception,
        attempts: int,
        first: datetime,
        last: datetime,
    ) -> None:
        letter = projection_dead_letter_id(name, recorded.position)
        what = _what_failed(recorded, exc)
        parked = ProjectionEventDeadLettered(letter, name, *what, attempts, first, last)
        _log.error(
            "projection %r: %s at position %d (stream %r) parked as dead letter %s after %d attempt%s: "
            "%s: %s",
            name,
            recorded.event_type,
            recorded.position,
            recorded.stream,
            letter,
            attempts,
            "" if attempts == 1 else "s",
            type(exc).__name__,
            exc,
        )
        # A redelivered page parks the same event under the same event id: a no-op in the store.
        event_id = uuid.uuid5(_PARKED_IDS, letter)
        await _io.append(self.store, DEAD_LETTER_STREAM, [NewEvent(parked, event_id=event_id)], ANY)

    async def _record_failure(
        self, name: str, recorded: RecordedEvent, exc: Exception, attempts: int, now: datetime
    ) -> None:
        failed = ProjectionEventFailed(name, *_what_failed(recorded, exc), attempts, now)
        await _io.append(self.store, DEAD_LETTER_STREAM, [failed], ANY)

    # -- operators' requests --------------------------------------------------------------------

    @staticmethod
    def is_request(recorded: RecordedEvent) -> bool:
        """Whether ``recorded`` is an operator's retry or discard request."""
        return recorded.stream == DEAD_LETTER_STREAM and isinstance(
            recorded.event, DeadLetterRetryRequested | DeadLetterDiscardRequested
        )

    async def carry_out(self, name: str, projection: Projection, recorded: RecordedEvent) -> None:
        """Carry out a request for one of ``name``'s dead letters, once; others are not ours."""
        event = recorded.event
        if event.saga_type or event.saga_id:
            return  # a saga's dead letter: its saga runner carries it out
        letters = DeadLetters(self.store, clock=self.now)
        try:
            record = await letters.get_async(event.dead_letter_id)
        except DeadLetterNotFoundError:
            return
        if record.kind != "projection" or record.projection != name:
            return
        if isinstance(event, DeadLetterDiscardRequested):
            if record.status != "discard requested":
                return  # carried out before this redelivery
            outcome, detail = "discarded", record.detail
        else:
            if record.status != "retry requested":
                return
            outcome, detail = await self._retry(projection, record.position)
        resolved = DeadLetterResolved(record.id, outcome, detail, self.now())
        await _io.append(self.store, DEAD_LETTER_STREAM, [resolved], ANY)

    async def _retry(self, projection: Projection, position: int) -> tuple[str, str]:
        found = await _io.read_all(self.store, position - 1, 1)
        if not found or found[0].position != position:
            return "failed again", f"the event at position {position} is no longer in the store"
        original = found[0]
        handler = type(projection)._handlers.get(type(original.event))
        if handler is None:
            return "failed again", f"{type(projection).__name__} no longer handles {original.event_type}"
        try:
            await call_handler(handler, projection, original)
        except EventLoopRequiredError:
            raise
        except Exception as exc:
            return "failed again", f"{type(exc).__name__}: {exc}"
        return "retried", f"{handler.name}() took {original.event_type} at position {position}"


def _what_failed(recorded: RecordedEvent, exc: Exception) -> tuple[str, str, int, str, str, str]:
    """The fields a failure record shares: which event (type, stream, position, id) and which error."""
    return (
        recorded.event_type,
        recorded.stream,
        recorded.position,
        str(recorded.event_id),
        type(exc).__name__,
        str(exc),
    )
