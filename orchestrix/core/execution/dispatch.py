"""How commands reach their handlers: a small protocol and a type-keyed bus.

A handler is written once, as a plain function or as a coroutine function, and the bus runs it
under both entry points:

=====================  ===============================  =====================================
handler                ``handle(command)`` (sync)        ``await handle_async(command)``
=====================  ===============================  =====================================
``async def``          run by the sync driver, in this   awaited on the loop
                       thread, with no event loop
plain ``def``          called                            called in a worker thread, so a
                                                         blocking handler never stalls the loop
=====================  ===============================  =====================================

A coroutine handler that awaits only orchestrix operations (the repository's ``*_async``
methods, :func:`~orchestrix.core.eventsourcing.aggregate.retry_on_conflict_async`) runs under
``handle`` natively; one that awaits something only an event loop provides (``asyncio.sleep``,
a network client) raises :class:`~orchestrix.core.errors.EventLoopRequiredError` there.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import UnknownCommandError

__all__ = ["CommandBus", "CommandDispatcher"]


@runtime_checkable
class CommandDispatcher(Protocol):
    """Anything that executes a command and returns its result, or raises why it was refused."""

    def handle(self, command: Any) -> Any:
        """Execute ``command``; return its result or raise."""
        ...

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        ...


class CommandBus:
    """Routes each command, by its exact type, to the one handler registered for it."""

    def __init__(self) -> None:
        # command type -> (handler, whether calling it returns a coroutine)
        self._routes: dict[type, tuple[Callable[[Any], Any], bool]] = {}

    def register(self, command_type: type, handler: Callable[[Any], Any]) -> None:
        """Route ``command_type`` to ``handler``, a plain function or a coroutine function.

        Registering a type again replaces its handler.
        """
        if not isinstance(command_type, type):
            raise TypeError(f"command_type must be a class, not {command_type!r}")
        if not callable(handler):
            raise TypeError(f"{command_type.__name__}: handler must be callable, not {handler!r}")
        self._routes[command_type] = (handler, _is_coroutine_function(handler))

    def handle(self, command: Any) -> Any:
        """Execute ``command`` with its registered handler; UnknownCommandError if there is none."""
        return run_sync(self.handle_async(command))

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        route = self._routes.get(type(command))
        if route is None:
            raise UnknownCommandError(type(command), self._routes)
        handler, is_coroutine = route
        if is_coroutine:
            return await handler(command)
        # Under the sync driver this is a plain call; under asyncio a worker thread.
        result = await _io.in_thread(functools.partial(handler, command))
        if inspect.isawaitable(result):
            # A plain callable that hands back an awaitable (a lambda around a coroutine
            # function): finish it here rather than return an unawaited coroutine.
            return await result
        return result


def _is_coroutine_function(handler: Callable[..., Any]) -> bool:
    # Also an object whose __call__ is a coroutine function: inspect does not look there on 3.11.
    call = None if inspect.isroutine(handler) else inspect.getattr_static(type(handler), "__call__", None)
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)
