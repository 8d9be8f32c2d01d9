"""Progress of a long read: how far, how fast, how long still, and the line that says so.

One reporter serves both the projection runner's catch-up reports and the ``orchestrix``
command's progress lines (``inspect``, ``verify``, ``replay``). A read goes from position
``start`` toward ``target``; :class:`ProgressReporter` hands out a :class:`Progress` record at
most once per ``every`` seconds while it goes on, and one at its end if asked. The record
computes the rate, the fraction done and the ETA, and writes itself as text or as JSON.

Positions, not events, measure both the way done and the way left: they need not be dense
(PostgreSQL leaves gaps), but they are what the target is counted in. A read that counts
something else (a stream's versions, events checked) passes that as its "position".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

__all__ = ["Progress", "ProgressReporter", "ProjectionProgress", "duration"]


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``12s`` (seconds are noise once hours count)."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@attrs.frozen
class Progress:
    """How far a long read has got: reported at most once per interval, and perhaps at its end."""

    name: str
    """What is being read (for a projection runner: the projections fed, comma-separated)."""
    position: int
    """The position read up to."""
    target: int
    """The position the read is heading for (the store's last position when last asked)."""
    events: int
    """Events read since the read began."""
    seconds: float
    """Time since the read began."""
    start: int = 0
    """The position the read began after."""
    done: bool = False
    """True in the one report made when the read has ended (caught up)."""

    @property
    def rate(self) -> float:
        """Events per second so far."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def fraction(self) -> float:
        """How much of the way from ``start`` to ``target`` is done (0.0 .. 1.0)."""
        span = self.target - self.start
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.position - self.start) / span))

    @property
    def eta(self) -> float | None:
        """Estimated seconds left, or None before anything was read."""
        covered = self.position - self.start
        if covered <= 0 or self.seconds <= 0:
            return None
        return max(0, self.target - self.position) * self.seconds / covered

    def _measured(self) -> bool:
        # A read with nowhere to go (an empty span) has no meaningful percentage or ETA.
        return self.target > self.start

    def text(self) -> str:
        """The printed line: ``replay: 2,048 events read (10,240/s), 40%, ETA 3s``."""
        line = f"{self.name}: {self.events:,} events read ({self.rate:,.0f}/s)"
        if self._measured():
            line += f", {100 * self.fraction:.0f}%"
            eta = self.eta
            if eta is not None:
                line += f", ETA {duration(eta)}"
        return line

    def json(self) -> dict[str, Any]:
        """The report as a JSON object of kind ``progress`` (percent and ETA null when unknown)."""
        measured = self._measured()
        eta = self.eta if measured else None
        return {
            "kind": "progress",
            "count": self.events,
            "rate": round(self.rate, 1),
            "percent": round(100 * self.fraction, 1) if measured else None,
            "eta_seconds": None if eta is None else round(eta, 1),
        }


@attrs.frozen
class ProjectionProgress(Progress):
    """How a projection runner's catch-up (or rebuild) is going; its line is the runner's log line."""

    def text(self) -> str:
        """``projections NAMES: catching up, ...`` while on the way, ``caught up at ...`` at the end."""
        if self.done:
            return (
                f"projections {self.name}: caught up at position {self.position}, {self.events} events "
                f"in {duration(self.seconds)} ({self.rate:.0f} events/s)"
            )
        eta = self.eta
        return (
            f"projections {self.name}: catching up, {self.position - self.start}/"
            f"{self.target - self.start} events ({100 * self.fraction:.1f}%), {self.rate:.0f} events/s, "
            f"ETA {'unknown' if eta is None else duration(eta)}"
        )


P = TypeVar("P", bound=Progress)


class ProgressReporter(Generic[P]):
    """Follows one long read and hands ``report`` a record at most once per ``every`` seconds.

    ``record`` builds the records (:class:`Progress` by default); ``clock`` is monotonic
    seconds; ``began`` (default: now) is when the read began. The target only ever grows: a
    store that gained events while it was read is further to go, never less.
    """

    def __init__(
        self,
        name: str,
        report: Callable[[P], None],
        *,
        record: Callable[..., P],
        start: int,
        target: int,
        every: float,
        clock: Callable[[], float] = time.monotonic,
        began: float | None = None,
    ) -> None:
        self.name = name
        self.start = start
        self.target: int = target
        self.events: int = 0
        self._report = report
        self._record = record
        self._every = every
        self._clock = clock
        self.began: float = clock() if began is None else began
        self._last_report = self.began

    def reached(self, position: int, events: int, target: int | None = None) -> None:
        """The read is at ``position`` with ``events`` read in all (``target``: a newer end, if
        known); reports if ``every`` seconds passed since the last report."""
        self._advance(events, target)
        now = self._clock()
        if now - self._last_report >= self._every:
            self._last_report = now
            self._emit(position, now, done=False)

    def finish(self, position: int, events: int, target: int | None = None) -> None:
        """The read ended at ``position`` with ``events`` read in all: report that once."""
        self._advance(events, target)
        self._emit(position, self._clock(), done=True)

    def _advance(self, events: int, target: int | None) -> None:
        self.events = events
        if target is not None:
            self.target = max(self.target, target)

    def _emit(self, position: int, now: float, *, done: bool) -> None:
        self._report(
            self._record(
                name=self.name,
                position=position,
                target=max(self.target, position),
                events=self.events,
                seconds=now - self.began,
                start=self.start,
                done=done,
            )
        )
