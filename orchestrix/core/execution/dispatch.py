"""How a saga's commands reach their handlers: a small protocol and a type-keyed bus."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

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
    """Routes each command, by its exact type, to the handler registered for it.

    A command type registered without an asyncio handler runs its sync handler in a worker
    thread under :meth:`handle_async`, so the event loop never blocks on it.
    """

    def __init__(self) -> None:
        self._sync: dict[type, Callable[[Any], Any]] = {}
        self._async: dict[type, Callable[[Any], Awaitable[Any]]] = {}

    def register(
        self,
        command_type: type,
        handler: Callable[[Any], Any],
        async_handler: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        """Route ``command_type`` to ``handler`` (and ``async_handler`` under asyncio)."""
        if inspect.iscoroutinefunction(handler):
            raise TypeError(f"{command_type.__name__}: pass a coroutine function as async_handler")
        self._sync[command_type] = handler
        if async_handler is not None:
            self._async[command_type] = async_handler
        else:
            self._async.pop(command_type, None)

    def handle(self, command: Any) -> Any:
        """Execute ``command`` with its registered handler; UnknownCommandError if there is none."""
        handler = self._sync.get(type(command))
        if handler is None:
            raise UnknownCommandError(type(command), self._sync)
        return handler(command)

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        handler = self._async.get(type(command))
        if handler is not None:
            return await handler(command)
        sync = self._sync.get(type(command))
        if sync is None:
            raise UnknownCommandError(type(command), self._sync)
        return await asyncio.to_thread(sync, command)
