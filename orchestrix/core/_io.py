"""One source for sync and asyncio: logic written once as a coroutine, run by either driver.

The core's I/O-bearing behaviours (load, save, a saga step, a projection page, the page loop)
are each written once, as an ``async def`` that reaches the outside world only through the
small operations below (read a stream, append, dispatch a command, load or save a checkpoint,
call user code, sleep, take a lock). Each operation asks which driver runs it:

* the **asyncio driver** is the event loop itself: ``await runner.run_once_async()`` runs the
  coroutine as usual, and each operation awaits the asyncio form (``append_async`` ...);
* the **sync driver**, :func:`run_sync`, steps the same coroutine in the calling thread with
  every operation taking its blocking form (``append`` ...). Nothing then ever suspends, so the
  coroutine finishes on its first step, without an event loop and without a thread.

So ``run_once`` is ``run_sync(self.run_once_async())`` and the two forms cannot drift. The same
holds for users' code: a command handler written as ``async def`` that awaits the repository's
``*_async`` methods runs under a sync command bus too, natively. Code that awaits something
only an event loop can provide (``asyncio.sleep``, a network client) fails under the sync
driver with :class:`~orchestrix.core.errors.EventLoopRequiredError`, naming what it awaited.

This is the PostgreSQL store's sans-I/O operations (``_ops.py``) with coroutine syntax: the
operations here play the part of the yielded effects, and a coroutine can ``await`` another,
so logic composes without ``yield from`` plumbing.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from orchestrix.core.errors import EventLoopRequiredError

__all__: list[str] = []

T = TypeVar("T")

_sync_mode: contextvars.ContextVar[bool] = contextvars.ContextVar("orchestrix_sync_mode", default=False)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end in this thread, every operation taking its blocking form."""
    token = _sync_mode.set(True)
    try:
        awaited = coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except RuntimeError as exc:
        # asyncio.sleep, wait_for ... ask for the running loop before they await anything;
        # CPython signals "there is none" only by this RuntimeError and its text.
        if str(exc) != "no running event loop" or asyncio._get_running_loop() is not None:
            raise
        raise EventLoopRequiredError(_traceback_chain(exc), asyncio.get_running_loop) from exc
    finally:
        _sync_mode.reset(token)
    code = _name(coroutine)  # before close(), while the chain of awaits is still there
    coroutine.close()
    raise EventLoopRequiredError(code, awaited)


def is_sync() -> bool:
    """True while the sync driver runs the current code."""
    return _sync_mode.get()


def _name(coroutine: Coroutine[Any, Any, Any]) -> str:
    """The chain of coroutines down to the one that awaited (``Bus.handle_async -> reserve -> sleep``),
    so the error names the user's code, not only the entry point that ran it."""
    names: list[str] = []
    current: Any = coroutine
    while current is not None and len(names) < 20:
        names.append(getattr(current, "__qualname__", None) or type(current).__name__)
        current = getattr(current, "cr_await", None)
        if not inspect.iscoroutine(current):
            break
    return " -> ".join(names)


def _traceback_chain(exc: BaseException) -> str:
    """The coroutines an exception passed through, outermost first (the chain is gone by then)."""
    names: list[str] = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_flags & inspect.CO_COROUTINE:
            names.append(code.co_qualname)
        tb = tb.tb_next
    return " -> ".join(names) or "a coroutine"


# -- the event store ----------------------------------------------------------------------------


async def read_stream(store: Any, stream: str, from_version: int = 0) -> list[Any]:
    """The stream's events from ``from_version`` on, as a list."""
    if _sync_mode.get():
        return list(store.read_stream(stream, from_version))
    return [recorded async for recorded in store.read_stream_async(stream, from_version)]


STREAM_PAGE = 128
"""Events a replay holds at once: enough to amortize the async machinery over, few enough that
loading an aggregate of any length takes memory for its state, not for its history."""


async def stream_pages(store: Any, stream: str, from_version: int = 0) -> AsyncGenerator[list[Any], None]:
    """The stream's events from ``from_version`` on, in lists of up to :data:`STREAM_PAGE`, read
    lazily: the next page is decoded only once the caller is done with the one before."""
    if _sync_mode.get():
        events = iter(store.read_stream(stream, from_version))
        while page := list(itertools.islice(events, STREAM_PAGE)):
            yield page
        return
    page = []
    async for recorded in store.read_stream_async(stream, from_version):
        page.append(recorded)
        if len(page) == STREAM_PAGE:
            yield page
            page = []
    if page:
        yield page


async def read_all(store: Any, after: int, limit: int | None, types: Any = None) -> list[Any]:
    """Up to ``limit`` events of the global order after position ``after``, as a list; only those
    of ``types`` when given (``types`` is passed on only then, so a store without it still works)."""
    kwargs = {} if types is None else {"types": types}
    if _sync_mode.get():
        return list(store.read_all(after, limit=limit, **kwargs))
    return [recorded async for recorded in store.read_all_async(after, limit=limit, **kwargs)]


async def stream_version(store: Any, stream: str) -> int:
    """The stream's current version (-1 for a stream without events)."""
    if _sync_mode.get():
        return int(store.stream_version(stream))
    return int(await store.stream_version_async(stream))


async def append(store: Any, stream: str, events: Any, expected_version: Any) -> Any:
    """Append ``events`` to ``stream`` at ``expected_version``; the store's AppendResult."""
    if _sync_mode.get():
        return store.append(stream, events, expected_version)
    return await store.append_async(stream, events, expected_version)


async def append_many(store: Any, appends: Any) -> Any:
    """Append to several streams at once, all or nothing; the store's tuple of AppendResults."""
    if _sync_mode.get():
        return store.append_many(appends)
    return await store.append_many_async(appends)


async def last_position(store: Any) -> int:
    """The store's last global position (0 when empty)."""
    if _sync_mode.get():
        return int(store.last_position())
    return int(await store.last_position_async())


async def wait_for_events(store: Any, after: int, timeout: float) -> Any:
    """Wait until an event after ``after`` is stored, or ``timeout`` seconds pass."""
    if _sync_mode.get():
        return store.wait_for_events(after, timeout)
    return await store.wait_for_events_async(after, timeout)


# -- checkpoints, commands, leases --------------------------------------------------------------


async def load_checkpoint(checkpoints: Any, name: str) -> int:
    """The checkpoint store's position for ``name`` (0 if none)."""
    if _sync_mode.get():
        return int(checkpoints.load(name))
    return int(await checkpoints.load_async(name))


async def save_checkpoint(checkpoints: Any, name: str, position: int) -> None:
    """Store ``position`` for ``name``."""
    if _sync_mode.get():
        checkpoints.save(name, position)
    else:
        await checkpoints.save_async(name, position)


async def dispatch(dispatcher: Any, command: Any) -> Any:
    """Hand ``command`` to ``dispatcher`` (``handle`` or ``handle_async``); its result."""
    if _sync_mode.get():
        return dispatcher.handle(command)
    return await dispatcher.handle_async(command)


async def holds(lease: Any) -> bool:
    """Whether ``lease`` is still held (asking the lease's asyncio form if it has one)."""
    if not _sync_mode.get():
        holds_async = getattr(lease, "holds_async", None)
        if holds_async is not None:
            return bool(await holds_async())
    return bool(lease.holds())


# -- user code, time, threads -------------------------------------------------------------------


async def call(function: Callable[..., Any], *args: Any) -> Any:
    """Call user code written either way: a plain function, or one returning an awaitable."""
    result = function(*args)
    if result is None:  # first: most handlers return it
        return result
    return await settle(result)


async def settle(result: Any) -> Any:
    """What user code's ``result`` comes to: itself, or, if it is awaitable, what it gives awaited
    (run by the sync driver in the sync forms). A caller that sees ``None`` can skip this call."""
    if not inspect.isawaitable(result):
        return result
    if _sync_mode.get():
        # A coroutine is run as itself, so an EventLoopRequiredError names the user's function.
        return run_sync(result if inspect.iscoroutine(result) else _awaiting(result))
    return await result


async def _awaiting(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def sleep(seconds: float) -> None:
    """Pause (``time.sleep`` or ``asyncio.sleep``)."""
    if _sync_mode.get():
        if seconds > 0:
            time.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def in_thread(function: Callable[[], T]) -> T:
    """Run blocking ``function``: in a worker thread under asyncio, right here under the sync driver."""
    if _sync_mode.get():
        return function()
    return await asyncio.to_thread(function)


def alongside(coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Start ``coroutine`` alongside the caller; what to await for its end. Under the asyncio
    driver only (check :func:`is_sync`): the sync driver has nothing to run it alongside."""
    return asyncio.ensure_future(coroutine)


async def each(items: Iterable[T], work: Callable[[T], Awaitable[Any]], concurrency: int) -> None:
    """Await ``work(item)`` for every item: in order under the sync driver; under asyncio up to
    ``concurrency`` at once. The first failure is raised once all have finished."""
    if _sync_mode.get():
        for item in items:
            await work(item)
        return
    limit = asyncio.Semaphore(concurrency)

    async def bounded(item: T) -> None:
        async with limit:
            await work(item)

    results = await asyncio.gather(*(bounded(item) for item in items), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class KeyedLocks:
    """One lock per key (a thread lock under the sync driver, an asyncio lock under asyncio),
    created on demand and dropped when nobody holds or waits for it.

    The two kinds do not exclude each other: one runner is driven one way at a time.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._thread_locks: dict[Any, list[Any]] = {}
        self._loop_locks: dict[Any, list[Any]] = {}

    def hold(self, key: Any) -> _Held:
        """``async with locks.hold(key):`` the section runs alone for that key."""
        return _Held(self, key)


class _Held:
    __slots__ = ("_entry", "_key", "_locks", "_sync")

    def __init__(self, locks: KeyedLocks, key: Any) -> None:
        self._locks = locks
        self._key = key
        self._sync = _sync_mode.get()
        self._entry: list[Any] = []

    async def __aenter__(self) -> None:
        locks = self._locks
        if self._sync:
            with locks._guard:
                entry = locks._thread_locks.setdefault(self._key, [threading.RLock(), 0])
                entry[1] += 1
            self._entry = entry
            entry[0].acquire()
            return
        entry = locks._loop_locks.setdefault(self._key, [asyncio.Lock(), 0])
        entry[1] += 1
        self._entry = entry
        try:
            await entry[0].acquire()
        except BaseException:
            self._release_count(locks._loop_locks)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        locks = self._locks
        self._entry[0].release()
        if self._sync:
            with locks._guard:
                self._release_count(locks._thread_locks)
        else:
            self._release_count(locks._loop_locks)

    def _release_count(self, table: dict[Any, list[Any]]) -> None:
        self._entry[1] -= 1
        if self._entry[1] == 0:
            del table[self._key]
