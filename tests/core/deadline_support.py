"""A saga with a deadline and a virtual clock, shared by the deadline and retry tests (no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from orchestrix.core.eventsourcing.aggregate import applies
from orchestrix.core.execution import SAGA_EVENTS, InMemoryCheckpointStore, Saga, SagaRunner, handles
from orchestrix.core.execution.deadlines import DeadlineFired, on_deadline
from orchestrix.core.messaging import Command, Event, Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """Virtual time: it moves only when a test moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@attrs.frozen
class HoldRequested(Event):
    hold_id: str
    seconds: int


@attrs.frozen
class HoldPaid(Event):
    hold_id: str


@attrs.frozen
class HoldReleased(Event):
    hold_id: str
    why: str


@attrs.frozen
class HoldSettled(Event):
    hold_id: str


@attrs.frozen
class HoldExtended(Event):
    hold_id: str
    seconds: int


@attrs.frozen
class ReleaseHold(Command):
    hold_id: str
    key: str


class HoldSaga(Saga):
    """A reservation that is released unless it is paid within ``seconds``."""

    category = "hold"
    correlation_field = "hold_id"
    terminal_events = (HoldReleased, HoldSettled)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.fired: list[DeadlineFired] = []

    @handles(HoldRequested, start=True)
    def on_requested(self, event: HoldRequested) -> None:
        if "expire" not in self.deadlines and not self.fired:
            self.schedule_deadline("expire", after=timedelta(seconds=event.seconds))

    @handles(HoldExtended)
    def on_extended(self, event: HoldExtended) -> None:
        self.schedule_deadline("expire", after=timedelta(seconds=event.seconds))

    @handles(HoldPaid)
    def on_paid(self, event: HoldPaid) -> None:
        self.cancel_deadline("expire", "paid")
        self.raise_event(HoldSettled(event.hold_id))

    @on_deadline("expire")
    def on_expired(self, deadline: DeadlineFired) -> Any:
        if self.completed:
            return
        yield ReleaseHold(self.id or "", self.key("release"))
        self.raise_event(HoldReleased(self.id or "", f"not paid by {deadline.due_at:%H:%M:%S}"))

    @applies(HoldReleased, HoldSettled)
    def _ended(self, event: Any) -> None:
        pass

    @applies(DeadlineFired)
    def _fired(self, event: DeadlineFired) -> None:
        super()._deadline_gone(event)
        self.fired.append(event)


EVENTS = (HoldRequested, HoldPaid, HoldReleased, HoldSettled, HoldExtended, *SAGA_EVENTS)


def make_store() -> InMemoryEventStore:
    return InMemoryEventStore(serializer=Serializer(types=EVENTS))


class Desk:
    """The command handler: releases each hold key once, and counts every call."""

    def __init__(self) -> None:
        self.released: list[str] = []
        self.calls: list[str] = []

    def handle(self, command: Any) -> str:
        self.calls.append(command.key)
        if command.key not in self.released:
            self.released.append(command.key)
        return "ok"

    async def handle_async(self, command: Any) -> str:
        return self.handle(command)


def make_runner(store: Any, desk: Desk, clock: Clock, checkpoints: Any = None, **options: Any) -> SagaRunner:
    return SagaRunner(
        store, [HoldSaga], desk, checkpoints or InMemoryCheckpointStore(), clock=clock, **options
    )


def request(store: Any, hold_id: str, seconds: int = 30) -> None:
    store.append(f"Desk-{hold_id}", [HoldRequested(hold_id, seconds)])
