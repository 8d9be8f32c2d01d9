"""How the ``orchestrix`` command writes events and progress: text lines and JSON objects.

Nothing here prints; :mod:`orchestrix.cli` does. Text lines split at spaces: a stream or type
name that could break that is written as a JSON string (see :func:`name_word`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

from orchestrix.core.messaging.messages import RecordedEvent
from orchestrix.core.messaging.serializer import RawEvent, Serializer

PROGRESS_CHECK = 1024
"""Events between two looks at the clock: a clock read per event would show in replay rates."""


def name_word(name: str) -> str:
    """``name`` as one unambiguous word of a text line: bare if it can be, else a JSON string.

    Bare names hold no space and no character that does not print (stream names cannot hold
    those; stored type names might) and do not start with a double quote. So a reader splits
    a line at spaces, and reads a word that starts with ``"`` as a JSON string.
    """
    if name and name.isprintable() and " " not in name and not name.startswith('"'):
        return name
    return json.dumps(name, ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII text kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def timestamp(moment: datetime) -> str:
    """ISO 8601 to the millisecond, with the offset."""
    return moment.isoformat(timespec="milliseconds")


def payload(event: Any) -> str:
    """The text form of an event: its stored JSON if read raw, else the decoded object's repr."""
    if isinstance(event, RawEvent):
        return dumps(dict(event.data))
    return repr(event)


def event_line(recorded: RecordedEvent) -> str:
    """``position stream@version type payload``, one line."""
    r = recorded
    return f"{r.position} {name_word(r.stream)}@{r.version} {name_word(r.event_type)} {payload(r.event)}"


def event_json(recorded: RecordedEvent, serializer: Serializer) -> dict[str, Any]:
    """An event with its envelope as a JSON object; ``data`` is the payload as stored."""
    r = recorded
    event = r.event
    data = dict(event.data) if isinstance(event, RawEvent) else serializer.to_dict(event)[1]
    return {
        "position": r.position,
        "stream": r.stream,
        "version": r.version,
        "type": r.event_type,
        "id": str(r.event_id),
        "recorded_at": timestamp(r.recorded_at),
        "correlation_id": None if r.correlation_id is None else str(r.correlation_id),
        "causation_id": None if r.causation_id is None else str(r.causation_id),
        "data": data,
    }


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``12s``."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Report(NamedTuple):
    """How far a long read has got: events read, their rate, and (when known) fraction done and ETA."""

    events: int
    rate: float
    done: float | None
    eta: float | None

    def text(self, what: str) -> str:
        """``replay: 2,048 events read (10,240/s), 40%, ETA 3s``."""
        line = f"{what}: {self.events:,} events read ({self.rate:,.0f}/s)"
        if self.done is not None:
            line += f", {100 * self.done:.0f}%"
        if self.eta is not None:
            line += f", ETA {duration(self.eta)}"
        return line

    def json(self) -> dict[str, Any]:
        """The report as a JSON object of kind ``progress``."""
        return {
            "kind": "progress",
            "count": self.events,
            "rate": round(self.rate, 1),
            "percent": None if self.done is None else round(100 * self.done, 1),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
        }


class Progress:
    """Hands ``report`` a :class:`Report` every ``interval`` seconds while a long read goes on."""

    def __init__(self, interval: float, report: Callable[[Report], None]) -> None:
        self._interval = interval
        self._report = report
        self._started = self._last = time.monotonic()
        self._next_check = PROGRESS_CHECK

    def counted(
        self, events: Iterable[RecordedEvent], done: Callable[[RecordedEvent], float] | None = None
    ) -> Iterator[RecordedEvent]:
        """Yield ``events`` unchanged, noting progress; ``done(event)`` is the fraction read, if known."""
        for n, event in enumerate(events, 1):
            yield event
            if n >= self._next_check:
                self.tick(n, None if done is None else done(event))

    def tick(self, count: int, done: float | None) -> None:
        """Note that ``count`` events (a fraction ``done`` of all, if known) have been read."""
        if count < self._next_check:
            return
        self._next_check = count + PROGRESS_CHECK
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        eta = None
        if done is not None:
            done = min(max(done, 0.0), 1.0)
            eta = elapsed * (1 - done) / done if done > 0 else None
        self._report(Report(count, count / elapsed, done, eta))


def by_position(after: int, last: int) -> Callable[[RecordedEvent], float] | None:
    """The fraction of (``after``, ``last``] an event's position has reached.

    Exact where positions are dense (the file store); where they have gaps (PostgreSQL) it is
    an estimate, as good as the gaps are even.
    """
    if last <= after:
        return None
    span = last - after
    return lambda e: (e.position - after) / span
