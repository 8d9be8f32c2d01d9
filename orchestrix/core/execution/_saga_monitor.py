"""What a saga runner knows about its sagas: which are open, which completed, which are stuck,
which events nobody could take, and its counts.

The runner's steps report here (admitted, ignored, held, saved, failed, unmatched) and the
runner's public questions are answered here (:meth:`SagaMonitor.open_sagas`,
:meth:`SagaMonitor.stuck`, the stats). Steps may run in several threads at once (the sync forms
called from threads, or ``step_threads``), so every change of the books happens under one lock,
counts included: a count is a read-modify-write, and one taken outside the lock can be lost.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from orchestrix.core import _io
from orchestrix.core.execution.dead_letters import (
    DEAD_LETTER_STREAM,
    DeadLetterDiscardRequested,
    DeadLetterRetryRequested,
)
from orchestrix.core.execution.deadlines import Deadline, DeadlineFired, _DeadlineBook
from orchestrix.core.execution.saga import HandlerSpec, Saga, SagaRetried, SagaRetryRequested
from orchestrix.core.messaging.messages import RecordedEvent

__all__ = ["RunnerStats", "StuckSaga", "UnmatchedEvent"]

_log = logging.getLogger(__name__)

SagaKey = tuple[type[Saga], str]
"""A saga: its class and its id."""
Target = tuple[type[Saga], HandlerSpec, str]
"""Where an event goes: the saga class, the handler for the event, the saga id."""
Request = tuple[type[Saga], str, str, str]
"""An operator's request this runner carries out: saga class, saga id, what, dead-letter id."""

_COMPLETED_KEPT = 10_000  # completed sagas remembered, so their late events skip loading them


@attrs.frozen
class UnmatchedEvent:
    """An event addressed to a saga that does not exist and that it cannot start."""

    saga_type: str
    saga_id: str
    event_type: str
    stream: str
    position: int
    event_id: uuid.UUID


@attrs.frozen
class StuckSaga:
    """A saga that needs attention: recorded as stuck, or without progress for too long."""

    saga_type: str
    saga_id: str
    stream: str
    state: str
    reason: str
    since: datetime
    version: int


@attrs.define
class RunnerStats:
    """What a runner has done since it was created."""

    events: int = 0
    """Events read from the store's global order."""
    deliveries: int = 0
    """Events handed to a saga handler (redeliveries included)."""
    ignored: int = 0
    """Events for completed sagas, which ignore them."""
    held: int = 0
    """Events for stuck sagas, held until a retry."""
    unmatched: int = 0
    """Events addressed to a saga that does not exist."""
    failed: int = 0
    """Steps that raised and got their saga stuck."""
    other_partition: int = 0
    """Events for sagas of another partition."""
    deadlines_fired: int = 0
    """Deadlines this runner fired (appended ``DeadlineFired`` for)."""
    retries_scheduled: int = 0
    """Failed steps given another attempt later by their retry policy."""
    dead_lettered: int = 0
    """Failed steps whose message was parked as a dead letter."""


class SagaMonitor:
    """The books of one runner: open and completed sagas, unmatched events, stats; and the
    questions asked of them (open sagas, stuck sagas)."""

    def __init__(
        self,
        store: Any,
        sagas: Sequence[type[Saga]],
        mine: Callable[[str], bool],
        *,
        stuck_after: timedelta | None,
        clock: Callable[[], datetime],
        unmatched_kept: int,
    ) -> None:
        self.store = store
        self.sagas = tuple(sagas)
        self.mine = mine
        self.stuck_after = stuck_after
        self.clock = clock
        self.stats = RunnerStats()
        self.unmatched: collections.deque[UnmatchedEvent] = collections.deque(maxlen=unmatched_kept)
        self._open: dict[SagaKey, None] = {}
        self._completed: collections.OrderedDict[SagaKey, None] = collections.OrderedDict()
        self._lock = threading.RLock()
        # Pending deadlines as read (a hint: firing checks the saga's stream), and a heap of them
        # by due time with stale entries skipped when popped; deadlines of a stuck saga wait in
        # _held until the saga is retried.
        self._book = _DeadlineBook()
        self._due: list[tuple[datetime, int, Deadline, type[Saga]]] = []
        self._held: dict[str, list[tuple[Deadline, type[Saga]]]] = {}
        self._order = itertools.count()

    # -- what the runner reads ----------------------------------------------------------------

    def wanted_types(self) -> frozenset[type]:
        """Every event class :meth:`observe`, :meth:`targets` and :meth:`request` look at.

        The runner reads only these (``read_all(types=...)``): the events its sagas handle, every
        event a saga stream can hold (a saga applies each event of its stream, the library's
        stuck, retry and deadline events included: anything else would fail its load), and the
        operators' requests. Other events, such as the accounts' own in the banking demo, would
        be decoded only to be passed over.
        """
        wanted: set[type] = {SagaRetryRequested, DeadLetterRetryRequested, DeadLetterDiscardRequested}
        for cls in self.sagas:
            wanted.update(cls.handlers, cls._appliers, cls.terminal_events)
        return frozenset(wanted)

    def observe(self, recorded: RecordedEvent) -> None:
        """Track which sagas are open from the events of their own streams."""
        with self._lock:
            for cls in self.sagas:
                prefix = cls.category + "-"
                if not recorded.stream.startswith(prefix):
                    continue
                saga_id = recorded.stream[len(prefix) :]
                if not self.mine(saga_id):
                    continue
                key = (cls, saga_id)
                if type(recorded.event) in cls.terminal_events:
                    self._open.pop(key, None)
                    self._remember_completed(key)
                elif key not in self._completed:
                    self._open[key] = None
                scheduled = self._book.fold(recorded.stream, recorded.version, recorded.event)
                if scheduled is not None:
                    self._push(scheduled, cls)
                elif isinstance(recorded.event, SagaRetried):
                    for deadline, held_cls in self._held.pop(recorded.stream, ()):
                        self._push(deadline, held_cls)

    def targets(self, recorded: RecordedEvent) -> list[Target]:
        """The sagas of this runner's partition the event is addressed to."""
        targets = []
        for cls in self.sagas:
            spec = cls.handlers.get(type(recorded.event))
            if spec is None:
                continue
            saga_id = spec.correlation_id(recorded.event)
            if saga_id is None:
                continue
            if not self.mine(saga_id):
                with self._lock:
                    self.stats.other_partition += 1
                continue
            targets.append((cls, spec, saga_id))
        return targets

    def request(self, recorded: RecordedEvent) -> Request | None:
        """The operator's request ``recorded`` holds, if it is one for a saga of this runner."""
        event = recorded.event
        if isinstance(event, SagaRetryRequested):
            what, dead_letter, category = "retry saga", "", recorded.stream[: -len(event.saga_id) - 1]
        elif recorded.stream == DEAD_LETTER_STREAM and isinstance(event, DeadLetterRetryRequested):
            what, dead_letter, category = "retry", event.dead_letter_id, event.saga_type
        elif recorded.stream == DEAD_LETTER_STREAM and isinstance(event, DeadLetterDiscardRequested):
            what, dead_letter, category = "discard", event.dead_letter_id, event.saga_type
        else:
            return None
        for cls in self.sagas:
            if cls.category == category and self.mine(event.saga_id):
                return (cls, event.saga_id, what, dead_letter)
        return None

    def read(self, events: int) -> None:
        """Count a page of events handled (its checkpoint stored)."""
        with self._lock:
            self.stats.events += events

    # -- what the steps report ----------------------------------------------------------------

    def ignores(self, key: SagaKey) -> bool:
        """True (and the event counted as ignored) if the saga is known to have completed."""
        with self._lock:
            if key not in self._completed:
                return False
            self.stats.ignored += 1
            return True

    def admit(self, saga: Saga | None, target: Target, recorded: RecordedEvent) -> Saga | None:
        """The saga to run the handler on, or None (and the reason counted) if it must not run."""
        cls, spec, saga_id = target
        with self._lock:
            if saga is None:
                if not spec.start:
                    self._unmatched(target, recorded)
                    return None
                saga = cls(saga_id)
            if saga.completed:
                self.stats.ignored += 1
                self._remember_completed((cls, saga_id))
                return None
            # A saga waiting for a retry holds its events too (their order matters to it), but
            # its own deadlines still fire: a timeout may well be what ends the waiting.
            waiting = saga.retrying is not None and not isinstance(recorded.event, DeadlineFired)
            if saga.stuck_reason is not None or waiting:
                self.stats.held += 1
                return None
            self.stats.deliveries += 1
            return saga

    def delivered(self) -> None:
        """Count an event handed to a handler outside :meth:`admit` (a retry's trigger)."""
        with self._lock:
            self.stats.deliveries += 1

    def saved(self, saga: Saga) -> None:
        """A saga's events were stored: an unfinished saga is open."""
        if not saga.completed:
            with self._lock:
                self._open[(type(saga), saga.id or "")] = None

    def stepped(self, saga: Saga) -> None:
        """A step of the saga ended: it is open, or completed."""
        key = (type(saga), saga.id or "")
        with self._lock:
            if saga.completed:
                self._open.pop(key, None)
                self._remember_completed(key)
            else:
                self._open[key] = None

    def failed(self, key: SagaKey, recorded: RecordedEvent, exc: Exception, outcome: str = "stuck") -> None:
        """A step raised: count it and log it (``outcome``: ``retrying``, ``dead-lettered``, ``stuck``)."""
        cls, saga_id = key
        with self._lock:
            if outcome == "retrying":
                self.stats.retries_scheduled += 1
            else:
                self.stats.failed += 1
                if outcome == "dead-lettered":
                    self.stats.dead_lettered += 1
        if outcome == "retrying":  # expected under a retry policy: worth a line, not an alarm
            _log.info(
                "%s %r: step for %s at position %d raised %s: %s; retry scheduled",
                cls.__name__,
                saga_id,
                recorded.event_type,
                recorded.position,
                type(exc).__name__,
                exc,
            )
            return
        _log.error(
            "%s %r is stuck%s: step for %s at position %d raised %s: %s",
            cls.__name__,
            saga_id,
            " (dead-lettered)" if outcome == "dead-lettered" else "",
            recorded.event_type,
            recorded.position,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )

    # -- what the runner is asked -------------------------------------------------------------

    def open_sagas(self) -> list[SagaKey]:
        """The sagas that have started and not completed, as far as read."""
        with self._lock:
            return list(self._open)

    async def stuck(self, now: datetime | None) -> list[StuckSaga]:
        """Open sagas recorded as stuck, or (with ``stuck_after``) without progress for that long."""
        found = []
        for cls, saga_id in self.open_sagas():
            saga, last = cls(saga_id), None
            for recorded in await _io.read_stream(self.store, cls.stream_name(saga_id)):
                saga._replay(recorded)
                last = recorded.recorded_at
            entry = self._stuck_entry(saga, last, now)
            if entry is not None:
                found.append(entry)
        return found

    def _stuck_entry(self, saga: Saga, last: datetime | None, now: datetime | None) -> StuckSaga | None:
        if last is None or saga.completed:
            with self._lock:
                self._open.pop((type(saga), saga.id or ""), None)
            return None
        if saga.stuck_reason is not None:
            reason = saga.stuck_reason
        elif self.stuck_after is not None and (now or self.clock()) - last >= self.stuck_after:
            reason = f"no progress since {last.isoformat(timespec='seconds')}"
        else:
            return None
        return StuckSaga(
            type(saga).category, saga.id or "", saga.stream, saga.state, reason, last, saga.version
        )

    # -- deadlines ----------------------------------------------------------------------------

    def due(self, now: datetime) -> list[tuple[type[Saga], Deadline]]:
        """Take the pending deadlines due at ``now`` (soonest first) for the runner to fire."""
        found = []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _when, _n, deadline, cls = heapq.heappop(self._due)
                if self._book.pending.get((deadline.stream, deadline.name)) == deadline:
                    found.append((cls, deadline))
        return found

    def fired(self, cls: type[Saga], deadline: Deadline, outcome: str) -> None:
        """The runner tried to fire ``deadline``: ``fired``, ``gone`` (nothing to do) or ``held``."""
        with self._lock:
            if outcome == "fired":
                self.stats.deadlines_fired += 1
                self._book.pending.pop((deadline.stream, deadline.name), None)
            elif outcome == "held":
                self._held.setdefault(deadline.stream, []).append((deadline, cls))
            elif self._book.pending.get((deadline.stream, deadline.name)) == deadline:
                del self._book.pending[(deadline.stream, deadline.name)]

    def next_due(self) -> datetime | None:
        """When the soonest pending deadline is due (None if none is pending)."""
        with self._lock:
            while self._due:
                deadline = self._due[0][2]
                if self._book.pending.get((deadline.stream, deadline.name)) == deadline:
                    return deadline.due_at
                heapq.heappop(self._due)
            return None

    def deadlines(self) -> list[Deadline]:
        """Pending deadlines of this runner's sagas as read, soonest first."""
        with self._lock:
            pending = list(self._book.pending.values())
        return sorted(pending, key=lambda d: (d.due_at, d.stream, d.name))

    # -- under the lock -----------------------------------------------------------------------

    def _push(self, deadline: Deadline, cls: type[Saga]) -> None:
        heapq.heappush(self._due, (deadline.due_at, next(self._order), deadline, cls))

    def _remember_completed(self, key: SagaKey) -> None:
        self._completed[key] = None
        if len(self._completed) > _COMPLETED_KEPT:
            self._completed.popitem(last=False)

    def _unmatched(self, target: Target, recorded: RecordedEvent) -> None:
        cls, _spec, saga_id = target
        self.stats.unmatched += 1
        entry = UnmatchedEvent(
            cls.category, saga_id, recorded.event_type, recorded.stream, recorded.position, recorded.event_id
        )
        self.unmatched.append(entry)
        _log.warning(
            "unmatched event: %s at position %d (stream %r) is addressed to %s %r, which does not exist",
            recorded.event_type,
            recorded.position,
            recorded.stream,
            cls.__name__,
            saga_id,
        )
