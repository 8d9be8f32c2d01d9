"""How the ``orchestrix`` command writes events and progress: text lines and JSON objects.

Nothing here prints; :mod:`orchestrix.cli` does. Text lines split at spaces: a stream or type
name that could break that is written as a JSON string (see :func:`name_word`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from orchestrix.core.execution.progress import Progress as ProgressReport
from orchestrix.core.execution.progress import ProgressReporter
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


class Progress:
    """Hands ``report`` a progress record every ``interval`` seconds while a long read goes on.

    The read goes toward position ``target`` (see :mod:`orchestrix.core.execution.progress`,
    which computes and writes the reports); the clock is looked at once per
    :data:`PROGRESS_CHECK` events.
    """

    def __init__(
        self, what: str, interval: float, target: int, report: Callable[[ProgressReport], None]
    ) -> None:
        self._reporter = ProgressReporter(
            what, report, record=ProgressReport, start=0, target=target, every=interval
        )
        self._next_check = PROGRESS_CHECK

    def counted(
        self, events: Iterable[RecordedEvent], position: Callable[[RecordedEvent], int]
    ) -> Iterator[RecordedEvent]:
        """Yield ``events`` unchanged, noting progress; ``position(event)`` measures the way done."""
        for n, event in enumerate(events, 1):
            yield event
            if n >= self._next_check:
                self.tick(n, position(event))

    def tick(self, count: int, position: int) -> None:
        """Note that ``count`` events have been read, reaching ``position``."""
        if count < self._next_check:
            return
        self._next_check = count + PROGRESS_CHECK
        self._reporter.reached(position, count)
