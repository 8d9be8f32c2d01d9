"""Two saga runners on one partition, one of them paused inside a dispatch: the tools the
split-brain tests (memory and PostgreSQL) share."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers


class PausingDispatcher:
    """Dispatches to ``bank``, but the first command with idempotency key ``key`` waits for
    :meth:`resume` first: the runner has checked its lease and is about to have its effect,
    as when its process stops (GC pause, SIGSTOP, VM migration) at the worst moment."""

    def __init__(self, bank: BankingCommandHandlers, key: str) -> None:
        self.bank = bank
        self.key = key
        self.paused = threading.Event()
        self._resume = threading.Event()
        self.outcomes: list[tuple[str, str]] = []

    def resume(self) -> None:
        self._resume.set()

    def _pause_here(self, command: Any) -> bool:
        if getattr(command, "idempotency_key", None) != self.key or self.paused.is_set():
            return False
        self.paused.set()
        return True

    def _note(self, command: Any, outcome: str) -> None:
        self.outcomes.append((getattr(command, "idempotency_key", None) or type(command).__name__, outcome))

    def handle(self, command: Any) -> Any:
        if self._pause_here(command):
            assert self._resume.wait(30), "never resumed"
        try:
            result = self.bank.handle(command)
        except Exception as exc:
            self._note(command, type(exc).__name__)
            raise
        self._note(command, "applied")
        return result

    async def handle_async(self, command: Any) -> Any:
        if self._pause_here(command):
            assert await asyncio.to_thread(self._resume.wait, 30), "never resumed"
        try:
            result = await self.bank.handle_async(command)
        except Exception as exc:
            self._note(command, type(exc).__name__)
            raise
        self._note(command, "applied")
        return result


class Background:
    """Runs ``work`` in a thread and keeps what it returned or raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = work()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> Background:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the paused runner never finished"
        return self
