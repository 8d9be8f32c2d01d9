"""Projections: read models fed from the store's global order, each with its own checkpoint.

A :class:`Projection` holds a read model (a dict, a table, a search index) and marks its handler
methods with :func:`projects`; a :class:`ProjectionRunner` reads pages of events after the
checkpoints and hands each event to the projections that handle its type. Several projections
in one runner share one read of the log and keep separate checkpoints, so one that was added
later (or is being rebuilt) catches up while the others skip what they have seen.

Delivery is at-least-once: a projection's checkpoint is stored after each page it handled, so
after a crash the events of at most one page are handled again. Handlers must then be
idempotent (set a value, don't add to it), unless the projection stores its own position:

* exactly-once effect: a projection whose model lives in a database can store the position it
  has reached *in the same transaction* as its data, in :meth:`Projection.commit` (called after
  each page, before the checkpoint) and report it from :meth:`Projection.position`. The runner
  then starts from that position and never hands it an event at or below it, so every event
  takes effect once, whatever the checkpoint says. :meth:`Projection.rollback` discards a page
  that failed half-way.

A handler that raises stops the runner with :class:`ProjectionError`; the failing projection's
checkpoint stays before the failing event (which is logged with its position and type), so
nothing is ever skipped silently. Fix the cause and run again: the runner reloads its positions.

Long replays show progress: when a runner is more than ``catch_up_threshold`` events behind
the store (and always while rebuilding), it logs at INFO on the ``orchestrix.projections``
logger at most once per ``progress_every`` seconds (events done of total, events/s, ETA), and
once when it has caught up; the optional ``progress`` callback receives the same figures as
:class:`ProjectionProgress` records.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from orchestrix.core.errors import OrchestrixError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution._paging import PageLoop
from orchestrix.core.execution.checkpoint import CheckpointStore
from orchestrix.core.messaging.messages import RecordedEvent

__all__ = [
    "Projection",
    "ProjectionError",
    "ProjectionProgress",
    "ProjectionRunner",
    "ProjectionStats",
    "projects",
]

log = logging.getLogger("orchestrix.projections")

F = TypeVar("F", bound=Callable[..., Any])

_HOOKS = ("position", "reset", "commit", "rollback")


class ProjectionError(OrchestrixError):
    """A projection's handler or hook failed; the runner stopped before ``position``.

    ``event_type`` and ``stream`` name the event whose handler raised (None when a hook such as
    ``commit`` failed); the original exception is the ``__cause__``.
    """

    def __init__(
        self,
        projection: str,
        position: int,
        message: str,
        *,
        event_type: str | None = None,
        stream: str | None = None,
    ) -> None:
        super().__init__(f"projection {projection!r} at position {position}: {message}")
        self.projection = projection
        self.position = position
        self.event_type = event_type
        self.stream = stream


def projects(*event_types: type) -> Callable[[F], F]:
    """Mark a projection method as the handler of ``event_types``.

    The method takes ``(self, event)`` or ``(self, event, recorded)``, where ``recorded`` is the
    :class:`~orchestrix.core.messaging.messages.RecordedEvent` envelope (stream, version,
    position, time). Dispatch is by exact type, resolved once per class.
    """
    if not event_types:
        raise TypeError("projects() needs at least one event type")
    for event_type in event_types:
        if not isinstance(event_type, type):
            hint = " (write @projects(EventType), not @projects)" if callable(event_type) else ""
            raise TypeError(f"projects() takes event classes, not {event_type!r}{hint}")

    def mark(func: F) -> F:
        if not inspect.isfunction(func):
            raise TypeError(f"@projects decorates a plain method, not {func!r}")
        marks = getattr(func, "__orchestrix_projects__", ())
        func.__orchestrix_projects__ = (*marks, *event_types)  # type: ignore[attr-defined]
        return func

    return mark


@attrs.frozen
class _Handler:
    method: Callable[..., Any]
    name: str
    with_envelope: bool


def _takes_envelope(cls: type, name: str, func: Callable[..., Any]) -> bool:
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in params if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD]
    keyword_only = [p for p in required if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not positional or len(required) > 2 or keyword_only:
        raise TypeError(
            f"{cls.__name__}.{name}: a projection handler takes (self, event) or (self, event, recorded)"
        )
    return len(positional) >= 2


class Projection:
    """Base class of read models fed from the global order.

    Subclasses mark handlers with :func:`projects` and set ``name`` (the checkpoint name; as a
    class attribute or the constructor argument). Events of types without a handler are
    skipped and counted. Override :meth:`reset` to allow rebuilds, and :meth:`position` with
    :meth:`commit` (and :meth:`rollback`) to store the position with the model for an
    exactly-once effect. In the asyncio forms of the runner, handlers and hooks may be
    ``async def``.
    """

    name: str | None = None
    """The checkpoint name; keep it stable, or the projection starts again from the beginning."""

    _handlers: ClassVar[dict[type, _Handler]] = {}
    _async_parts: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        by_type: dict[type, str] = {}
        for klass in reversed(cls.__mro__):
            own: dict[type, str] = {}
            for attr, member in vars(klass).items():
                marks = getattr(member, "__orchestrix_projects__", ())
                if marks:  # a re-marked override handles its own types, not the base method's
                    by_type = {t: a for t, a in by_type.items() if a != attr}
                for event_type in dict.fromkeys(marks):
                    if event_type in own:
                        raise TypeError(
                            f"{cls.__name__}: {event_type.__name__} is handled by both "
                            f"{own[event_type]}() and {attr}()"
                        )
                    own[event_type] = attr
            by_type.update(own)
        handlers = {}
        for event_type, attr in by_type.items():
            # Looked up by name, so a subclass that overrides a handler's method is the one called.
            method = getattr(cls, attr)
            handlers[event_type] = _Handler(method, attr, _takes_envelope(cls, attr, method))
        cls._handlers = handlers
        parts = {h.name for h in handlers.values() if inspect.iscoroutinefunction(h.method)}
        parts.update(hook for hook in _HOOKS if inspect.iscoroutinefunction(getattr(cls, hook)))
        cls._async_parts = tuple(sorted(parts))

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    @classmethod
    def handled_types(cls) -> frozenset[type]:
        """The event types this projection has handlers for."""
        return frozenset(cls._handlers)

    def position(self) -> int | None:
        """The position the model has durably reached, if it stores one; None to trust the checkpoint.

        Return 0 for an empty model that stores its position. Read when a runner starts, and again
        after a failure.
        """
        return None

    def commit(self, position: int) -> None:
        """Called after the events of a page up to ``position`` were handled, before the checkpoint.

        A projection that stores its own position writes it here, atomically with its data.
        """

    def rollback(self) -> None:
        """Called when a page failed (or was interrupted) before :meth:`commit`: drop its changes."""

    def reset(self) -> None:
        """Empty the model (and its stored position) for a rebuild; a rebuildable projection overrides it."""
        raise NotImplementedError(f"{type(self).__name__} does not define reset(), so it cannot be rebuilt")


@attrs.define
class ProjectionStats:
    """What a runner has handed one projection since the runner was created."""

    events: int = 0
    """Events handed over or skipped (redeliveries included)."""
    handled: int = 0
    """Events whose handler ran."""
    skipped: int = 0
    """Events of a type the projection has no handler for."""


@attrs.frozen
class ProjectionProgress:
    """How a catch-up (or rebuild) is going: reported at most once per ``progress_every`` seconds."""

    name: str
    """The projections being fed, comma-separated."""
    position: int
    """The global position read up to."""
    target: int
    """The store's last position when last asked."""
    events: int
    """Events read since the catch-up began."""
    seconds: float
    """Time since the catch-up began."""
    start: int = 0
    """The position the catch-up began after."""
    done: bool = False
    """True in the one report made when the runner has caught up."""

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
        # Positions, not events, measure both the way done and the way left: they need not be
        # dense (PostgreSQL leaves gaps), but they are what "target" is counted in.
        covered = self.position - self.start
        if covered <= 0 or self.seconds <= 0:
            return None
        return max(0, self.target - self.position) * self.seconds / covered


@attrs.define
class _CatchUp:
    start: int
    target: int
    began: float
    last_report: float
    events: int = 0


class ProjectionRunner(PageLoop):
    """Feeds projections from a store's global order; sync (``run_*``) and asyncio (``*_async``) forms.

    ``checkpoints`` keeps each projection's position under its ``name``. The runner reads
    ``page_size`` events at a time, from the lowest position of its projections. ``progress``,
    ``progress_every``, ``catch_up_threshold`` and ``clock`` (seconds, monotonic) control
    progress reports. A runner is driven from one thread or one event loop at a time.
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
        self.projections = tuple(projections)
        self.checkpoints = checkpoints
        self.page_size = page_size
        self.progress = progress
        self.progress_every = progress_every
        self.catch_up_threshold = catch_up_threshold
        self.clock = clock
        self.stats = {name: ProjectionStats() for name in names}
        self._by_name = names
        self._label = ", ".join(names)
        self._positions: dict[str, int] | None = None
        self._catch_up: _CatchUp | None = None
        self._busy = threading.Lock()  # one page (or rebuild) at a time: a runner is not re-entrant
        self._driven = 0  # run_forever loops going on; a rebuild must not pull the model from under one
        self._driven_guard = threading.Lock()

    @property
    def positions(self) -> dict[str, int] | None:
        """Each projection's position (None until the runner has started or after a failure)."""
        return None if self._positions is None else dict(self._positions)

    # -- sync -------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Hand the next page of events to the projections and store their checkpoints.

        Returns the number of events read (0 when every projection is caught up).
        """
        self._require_sync()
        with self._exclusive("run_once"):
            began = self.clock()
            try:
                positions = self._start()
                after = min(positions.values())
                page = list(self.store.read_all(after, limit=self.page_size))
                for name, projection in self._by_name.items():
                    self._feed(name, projection, page)
                target = self.store.last_position() if self._wants_target(len(page)) else None
            except BaseException:
                self._forget()
                raise
            self._track(after, len(page), began, target)
            return len(page)

    def run_forever(self, stop: threading.Event, idle_timeout: float = 0.5) -> None:
        """Run pages, waiting for new events when caught up, until ``stop`` is set."""
        with self._driving():
            super().run_forever(stop, idle_timeout)

    def rebuild(self, *names: str) -> int:
        """Reset the named projections (default: all), set their checkpoints to 0 and catch up.

        Returns the events read. The checkpoint goes to 0 *before* the reset, so a crash in
        between replays into the old model rather than leaving an empty one behind a checkpoint.
        """
        self._require_sync()
        chosen = self._choose(names)
        with self._exclusive("rebuild"):
            self._refuse_while_driven()
            try:
                positions = self._start()
                for name, projection in chosen:
                    self.checkpoints.save(name, 0)
                    positions[name] = 0
                    _done(projection.reset())
                    self._check_reset(name, _done(projection.position()))
                self._begin_rebuild(self.store.last_position())
            except BaseException:
                self._forget()
                raise
        return self.run_until_idle()

    def _start(self) -> dict[str, int]:
        if self._positions is None:
            positions = {}
            for name, projection in self._by_name.items():
                own = self._own_position(name, _done(projection.position()))
                positions[name] = self.checkpoints.load(name) if own is None else own
            self._positions = positions
        return self._positions

    def _feed(self, name: str, projection: Projection, page: list[RecordedEvent]) -> None:
        due = self._due(name, page)
        if not due:
            return
        try:
            for recorded in due:
                handler = self._handler(name, projection, recorded)
                if handler is None:
                    continue
                try:
                    _done(_call(handler, projection, recorded))
                except Exception as exc:
                    raise self._failed(name, recorded, handler, exc) from exc
                self.stats[name].handled += 1
            last = due[-1].position
            try:
                _done(projection.commit(last))
            except Exception as exc:
                raise self._failed(name, due[0], None, exc) from exc
        except BaseException:
            self._rollback(name, projection)
            raise
        self.checkpoints.save(name, last)
        self._positions[name] = last  # type: ignore[index]

    # -- asyncio ----------------------------------------------------------------------------

    async def run_once_async(self) -> int:
        """Asyncio form of :meth:`run_once`; ``async def`` handlers and hooks are awaited."""
        with self._exclusive("run_once_async"):
            began = self.clock()
            try:
                positions = await self._start_async()
                after = min(positions.values())
                page = [r async for r in self.store.read_all_async(after, limit=self.page_size)]
                for name, projection in self._by_name.items():
                    await self._feed_async(name, projection, page)
                target = await self._last_position_async() if self._wants_target(len(page)) else None
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

    async def rebuild_async(self, *names: str) -> int:
        """Asyncio form of :meth:`rebuild`."""
        chosen = self._choose(names)
        with self._exclusive("rebuild_async"):
            self._refuse_while_driven()
            try:
                positions = await self._start_async()
                for name, projection in chosen:
                    await self.checkpoints.save_async(name, 0)
                    positions[name] = 0
                    await _awaited(projection.reset())
                    self._check_reset(name, await _awaited(projection.position()))
                self._begin_rebuild(await self._last_position_async())
            except BaseException:
                self._forget()
                raise
        return await self.run_until_idle_async()

    async def _start_async(self) -> dict[str, int]:
        if self._positions is None:
            positions = {}
            for name, projection in self._by_name.items():
                own = self._own_position(name, await _awaited(projection.position()))
                positions[name] = await self.checkpoints.load_async(name) if own is None else own
            self._positions = positions
        return self._positions

    async def _feed_async(self, name: str, projection: Projection, page: list[RecordedEvent]) -> None:
        due = self._due(name, page)
        if not due:
            return
        try:
            for recorded in due:
                handler = self._handler(name, projection, recorded)
                if handler is None:
                    continue
                try:
                    await _awaited(_call(handler, projection, recorded))
                except Exception as exc:
                    raise self._failed(name, recorded, handler, exc) from exc
                self.stats[name].handled += 1
            last = due[-1].position
            try:
                await _awaited(projection.commit(last))
            except Exception as exc:
                raise self._failed(name, due[0], None, exc) from exc
        except BaseException:
            await self._rollback_async(name, projection)
            raise
        await self.checkpoints.save_async(name, last)
        self._positions[name] = last  # type: ignore[index]

    async def _last_position_async(self) -> int:
        # Not in the EventStore protocol: stores whose last_position may do I/O add it (file,
        # PostgreSQL); for the others it is a lookup in memory.
        last_position_async = getattr(self.store, "last_position_async", None)
        if last_position_async is not None:
            return int(await last_position_async())
        return self.store.last_position()

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
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

    async def _rollback_async(self, name: str, projection: Projection) -> None:
        try:
            await _awaited(projection.rollback())
        except Exception:
            log.exception("projection %r: rollback() failed after a failed page", name)

    # -- shared -----------------------------------------------------------------------------

    def _require_sync(self) -> None:
        for projection in self.projections:
            if type(projection)._async_parts:
                parts = ", ".join(f"{p}()" for p in type(projection)._async_parts)
                raise TypeError(
                    f"{type(projection).__name__} has async {parts}: run it with the *_async methods"
                )

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

    def _handler(self, name: str, projection: Projection, recorded: RecordedEvent) -> _Handler | None:
        stats = self.stats[name]
        stats.events += 1
        handler = type(projection)._handlers.get(type(recorded.event))
        if handler is None:
            stats.skipped += 1
        return handler

    def _failed(
        self, name: str, recorded: RecordedEvent, handler: _Handler | None, exc: Exception
    ) -> ProjectionError:
        if handler is None:
            log.error(
                "projection %r stopped: commit() of the page from position %d raised %s: %s",
                name,
                recorded.position,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return ProjectionError(name, recorded.position, f"commit() raised {type(exc).__name__}: {exc}")
        log.error(
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

    def _rollback(self, name: str, projection: Projection) -> None:
        try:
            _done(projection.rollback())
        except Exception:
            log.exception("projection %r: rollback() failed after a failed page", name)

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
        now = self.clock()
        self._catch_up = _CatchUp(self._read_position(), target, now, now)

    def _track(self, after: int, read: int, began: float, target: int | None) -> None:
        catch_up = self._catch_up
        position = self._read_position()
        if catch_up is None:
            if target is None or target - position <= self.catch_up_threshold:
                return
            catch_up = self._catch_up = _CatchUp(after, target, began, began)
        elif target is not None:
            catch_up.target = max(catch_up.target, target)
        catch_up.events += read
        now = self.clock()
        if read < self.page_size:
            self._catch_up = None
            self._report(catch_up, position, now, done=True)
        elif now - catch_up.last_report >= self.progress_every:
            catch_up.last_report = now
            self._report(catch_up, position, now, done=False)

    def _report(self, catch_up: _CatchUp, position: int, now: float, *, done: bool) -> None:
        report = ProjectionProgress(
            name=self._label,
            position=position,
            target=max(catch_up.target, position),
            events=catch_up.events,
            seconds=now - catch_up.began,
            start=catch_up.start,
            done=done,
        )
        if done:
            log.info(
                "projections %s: caught up at position %d, %d events in %s (%.0f events/s)",
                report.name,
                report.position,
                report.events,
                _duration(report.seconds),
                report.rate,
            )
        else:
            eta = report.eta
            log.info(
                "projections %s: catching up, %d/%d events (%.1f%%), %.0f events/s, ETA %s",
                report.name,
                report.position - report.start,
                report.target - report.start,
                100 * report.fraction,
                report.rate,
                "unknown" if eta is None else _duration(eta),
            )
        if self.progress is not None:
            self.progress(report)


def _call(handler: _Handler, projection: Projection, recorded: RecordedEvent) -> Any:
    if handler.with_envelope:
        return handler.method(projection, recorded.event, recorded)
    return handler.method(projection, recorded.event)


def _done(result: Any) -> Any:
    """The result of a hook or handler in a sync run, which cannot await a coroutine."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # no "never awaited" warning on top of the error
        raise TypeError("a handler or hook returned an awaitable: run async projections with *_async")
    return result


async def _awaited(result: Any | Awaitable[Any]) -> Any:
    return await result if inspect.isawaitable(result) else result


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
