"""The projection runner: feeds projections from the store's global order, each with its own checkpoint.

Each behaviour (start, feed a page, commit, roll back, checkpoint, rebuild, ask how far the
store goes) is written once, as a coroutine that reaches the store, the checkpoints and the
projections' code only through :mod:`orchestrix.core._io`; the sync methods run that same
coroutine with :func:`~orchestrix.core._io.run_sync`, so the two forms cannot drift.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import EventLoopRequiredError, ProjectionError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution._paging import PageLoop
from orchestrix.core.execution.checkpoint import CheckpointStore
from orchestrix.core.execution.progress import ProgressReporter, ProjectionProgress
from orchestrix.core.execution.projection._retries import Retries, policy_for, start_handler
from orchestrix.core.execution.projection.base import Projection, _Handler
from orchestrix.core.messaging.messages import RecordedEvent

if TYPE_CHECKING:
    import asyncio

__all__ = ["ProjectionRunner", "ProjectionStats"]

_log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.define
class ProjectionStats:
    """What a runner has handed one projection since the runner was created."""

    events: int = 0
    """Events handed over or skipped (redeliveries included)."""
    handled: int = 0
    """Events whose handler ran."""
    skipped: int = 0
    """Events of a type the projection has no handler for."""
    retried: int = 0
    """Failed handler attempts tried again under a retry policy."""
    dead_lettered: int = 0
    """Events parked as dead letters under a retry policy (the projection went on without them)."""


class ProjectionRunner(PageLoop):
    """Feeds projections from a store's global order; sync (``run_*``) and asyncio (``*_async``) forms.

    ``checkpoints`` keeps each projection's position under its ``name``. The runner reads
    ``page_size`` events at a time, from the lowest position of its projections. ``progress``,
    ``progress_every``, ``catch_up_threshold`` and ``clock`` (seconds, monotonic) control
    progress reports. A runner is driven from one thread or one event loop at a time.

    A projection (or handler) with a retry policy has a failing handler tried again after its
    backoff and, failing for good, its event parked as a dead letter while the projection goes
    on (see :mod:`orchestrix.core.execution.projection._retries`); ``now`` gives the times those
    records carry and ``sleep`` (plain or ``async``; default: ``time.sleep`` or ``asyncio.sleep``,
    by driver) waits the backoff, both injectable for virtual time.
    """

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        checkpoints: CheckpointStore,
        *,
        page_size: int = 500,
        progress: Callable[[ProjectionProgress], None] | None = None,
        progress_every: float = 2.0,
        catch_up_threshold: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        if not projections:
            raise ValueError("a projection runner needs at least one projection")
        names: dict[str, Projection] = {}
        for projection in projections:
            if not isinstance(projection, Projection):
                raise TypeError(f"{projection!r} is not a Projection instance")
            name = projection.name
            if not isinstance(name, str) or not name:
                raise TypeError(f"{type(projection).__name__} needs a name (class attribute or argument)")
            if name in names:
                raise ValueError(f"two projections are named {name!r}; each needs its own checkpoint")
            if not type(projection)._handlers:
                raise TypeError(f"{type(projection).__name__} has no @projects handlers")
            names[name] = projection
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if progress_every < 0 or catch_up_threshold < 0:
            raise ValueError("progress_every and catch_up_threshold must not be negative")
        self.store = store
        self.projections: tuple[Projection, ...] = tuple(projections)
        self.checkpoints = checkpoints
        self.page_size = page_size
        self.progress = progress
        self.progress_every = progress_every
        self.catch_up_threshold = catch_up_threshold
        self.clock = clock
        self.stats: dict[str, ProjectionStats] = {name: ProjectionStats() for name in names}
        self._by_name = names
        self._label = ", ".join(names)
        self._positions: dict[str, int] | None = None
        self._catch_up: ProgressReporter[ProjectionProgress] | None = None
        self._retries = Retries(store, now, sleep)
        self._busy = threading.Lock()  # one page (or rebuild) at a time: a runner is not re-entrant
        self._driven = 0  # run_forever loops going on; a rebuild must not pull the model from under one
        self._driven_guard = threading.Lock()

    @property
    def positions(self) -> dict[str, int] | None:
        """Each projection's position (None until the runner has started or after a failure)."""
        return None if self._positions is None else dict(self._positions)

    def run_once(self) -> int:
        """Hand the next page of events to the projections and store their checkpoints.

        Returns the number of events read (0 when every projection is caught up).
        """
        return run_sync(self.run_once_async())

    async def run_once_async(self) -> int:
        """Asyncio form of :meth:`run_once`."""
        with self._exclusive("run_once"):
            began = self.clock()
            try:
                positions = await self._start()
                after = min(positions.values())
                page = await _io.read_all(self.store, after, self.page_size)
                for name, projection in self._by_name.items():
                    await self._feed(name, projection, page)
                target = await _io.last_position(self.store) if self._wants_target(len(page)) else None
            except BaseException:
                self._forget()
                raise
            self._track(after, len(page), began, target)
            return len(page)

    async def run_forever_async(
        self, stop: asyncio.Event | threading.Event | None = None, idle_timeout: float = 0.5
    ) -> None:
        """Asyncio form of :meth:`run_forever`; also ends when its task is cancelled."""
        with self._driving():
            await super().run_forever_async(stop, idle_timeout)

    def rebuild(self, *names: str) -> int:
        """Reset the named projections (default: all), set their checkpoints to 0 and catch up.

        Returns the events read. The checkpoint goes to 0 *before* the reset, so a crash in
        between replays into the old model rather than leaving an empty one behind a checkpoint.
        """
        return run_sync(self.rebuild_async(*names))

    async def rebuild_async(self, *names: str) -> int:
        """Asyncio form of :meth:`rebuild`."""
        chosen = self._choose(names)
        with self._exclusive("rebuild"):
            self._refuse_while_driven()
            try:
                positions = await self._start()
                for name, projection in chosen:
                    await _io.save_checkpoint(self.checkpoints, name, 0)
                    positions[name] = 0
                    await _io.call(projection.reset)
                    self._check_reset(name, await _io.call(projection.position))
                self._begin_rebuild(await _io.last_position(self.store))
            except BaseException:
                self._forget()
                raise
        return await self.run_until_idle_async()

    async def _start(self) -> dict[str, int]:
        if self._positions is None:
            positions = {}
            for name, projection in self._by_name.items():
                own = self._own_position(name, await _io.call(projection.position))
                positions[name] = await _io.load_checkpoint(self.checkpoints, name) if own is None else own
            self._positions = positions
        return self._positions

    async def _feed(self, name: str, projection: Projection, page: list[RecordedEvent]) -> None:
        due = self._due(name, page)
        if not due:
            return
        # Per event only what differs between events: the lookups below are the page's (a
        # catch-up spends about a microsecond per event here, as much as decoding the JSON).
        stats, retries = self.stats[name], self._retries
        handlers = type(projection)._handlers
        try:
            for recorded in due:
                if retries.is_request(recorded):
                    await retries.carry_out(name, projection, recorded)
                stats.events += 1
                handler = handlers.get(type(recorded.event))
                if handler is None:
                    stats.skipped += 1
                    continue
                policy = policy_for(projection, handler)
                if policy is not None:
                    error = await retries.handle(name, projection, handler, recorded, policy, stats)
                    if error is not None:
                        raise self._failed(name, recorded, handler, error) from error
                    stats.handled += 1
                    continue
                try:
                    result = start_handler(handler, projection, recorded)
                    if result is not None:  # an async handler's awaitable
                        await _io.settle(result)
                except EventLoopRequiredError:
                    raise  # the wrong form was called, the handler did not fail: say so as it is
                except Exception as exc:
                    raise self._failed(name, recorded, handler, exc) from exc
                stats.handled += 1
            last = due[-1].position
            try:
                await _io.call(projection.commit, last)
            except EventLoopRequiredError:
                raise
            except Exception as exc:
                raise self._failed(name, due[0], None, exc) from exc
        except BaseException:
            await self._rollback(name, projection)
            raise
        await _io.save_checkpoint(self.checkpoints, name, last)
        self._positions[name] = last  # type: ignore[index]

    async def _rollback(self, name: str, projection: Projection) -> None:
        try:
            await _io.call(projection.rollback)
        except Exception:
            _log.exception("projection %r: rollback() failed after a failed page", name)

    # -- one runner, driven from one place at a time ------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        if not _io.is_sync():
            what += "_async"
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"ProjectionRunner for {self._label} is busy: {what} cannot start while another "
                "page or rebuild runs; drive a runner from one thread or task at a time"
            )
        try:
            yield
        finally:
            self._busy.release()

    @contextlib.contextmanager
    def _driving(self) -> Iterator[None]:
        with self._driven_guard:
            self._driven += 1
        try:
            yield
        finally:
            with self._driven_guard:
                self._driven -= 1

    def _refuse_while_driven(self) -> None:
        if self._driven:
            raise RuntimeError(
                f"ProjectionRunner for {self._label}: stop run_forever before rebuilding (a live "
                "loop would go on feeding the model the rebuild empties)"
            )

    # -- shared -----------------------------------------------------------------------------

    def _choose(self, names: tuple[str, ...]) -> list[tuple[str, Projection]]:
        for name in names:
            if name not in self._by_name:
                raise KeyError(f"no projection named {name!r} in this runner (have: {self._label})")
        wanted = set(names) or set(self._by_name)
        chosen = [(name, p) for name, p in self._by_name.items() if name in wanted]
        for _name, projection in chosen:
            if type(projection).reset is Projection.reset:
                raise TypeError(
                    f"{type(projection).__name__} does not define reset(), so it cannot be rebuilt"
                )
        return chosen

    def _own_position(self, name: str, own: Any) -> int | None:
        if own is not None and (type(own) is not int or own < 0):
            raise ProjectionError(name, 0, f"position() must return None or an int >= 0, not {own!r}")
        return own

    def _check_reset(self, name: str, own: int | None) -> None:
        if own not in (None, 0):
            raise ProjectionError(
                name,
                0,
                f"after reset(), position() still returns {own!r}, not 0: the model was emptied but "
                "still claims that position, so runs would not refill it; make reset() clear the "
                "stored position too, then rebuild again",
            )

    def _read_position(self) -> int:
        return 0 if self._positions is None else min(self._positions.values())

    def _due(self, name: str, page: list[RecordedEvent]) -> list[RecordedEvent]:
        position = self._positions[name]  # type: ignore[index]
        if not page or page[0].position > position:
            return page
        return [recorded for recorded in page if recorded.position > position]

    def _failed(
        self, name: str, recorded: RecordedEvent, handler: _Handler | None, exc: BaseException
    ) -> ProjectionError:
        if handler is None:
            _log.error(
                "projection %r stopped: commit() of the page from position %d raised %s: %s",
                name,
                recorded.position,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return ProjectionError(name, recorded.position, f"commit() raised {type(exc).__name__}: {exc}")
        _log.error(
            "projection %r stopped: %s() for %s at position %d (stream %r) raised %s: %s",
            name,
            handler.name,
            recorded.event_type,
            recorded.position,
            recorded.stream,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return ProjectionError(
            name,
            recorded.position,
            f"{handler.name}() for {recorded.event_type} raised {type(exc).__name__}: {exc}",
            event_type=recorded.event_type,
            stream=recorded.stream,
        )

    def _forget(self) -> None:
        # After a failure the durable state (checkpoints, position()) is the truth again.
        self._positions = None
        self._catch_up = None

    # -- progress ---------------------------------------------------------------------------

    def _wants_target(self, read: int) -> bool:
        """Whether to ask the store how far it goes: only after a full page, so live runs pay nothing."""
        if read < self.page_size:
            return False
        catch_up = self._catch_up
        return catch_up is None or self._read_position() >= catch_up.target

    def _begin_rebuild(self, target: int) -> None:
        self._catch_up = self._reporter(self._read_position(), target, self.clock())

    def _track(self, after: int, read: int, began: float, target: int | None) -> None:
        catch_up = self._catch_up
        position = self._read_position()
        if catch_up is None:
            if target is None or target - position <= self.catch_up_threshold:
                return
            catch_up = self._catch_up = self._reporter(after, target, began)
        events = catch_up.events + read
        if read < self.page_size:
            self._catch_up = None
            catch_up.finish(position, events, target)
        else:
            catch_up.reached(position, events, target)

    def _reporter(self, start: int, target: int, began: float) -> ProgressReporter[ProjectionProgress]:
        return ProgressReporter(
            self._label,
            self._report,
            record=ProjectionProgress,
            start=start,
            target=target,
            every=self.progress_every,
            clock=self.clock,
            began=began,
        )

    def _report(self, report: ProjectionProgress) -> None:
        _log.info("%s", report.text())
        if self.progress is not None:
            self.progress(report)
