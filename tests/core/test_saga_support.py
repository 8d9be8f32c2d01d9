"""A small non-banking saga and a fake warehouse, shared by the core saga and runner tests (no tests here)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import attrs

from orchestrix.core.errors import DomainError
from orchestrix.core.eventsourcing._backend import AsyncStoreMixin
from orchestrix.core.eventsourcing.aggregate import applies
from orchestrix.core.eventsourcing.store import ANY, AppendResult, EventStore
from orchestrix.core.execution import SAGA_EVENTS, InMemoryCheckpointStore, Saga, SagaRunner, handles
from orchestrix.core.messaging import Command, Event, NewEvent, RecordedEvent, Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this point runs (not an Exception, so nothing catches it)."""


# -- external events (in the order's stream) ---------------------------------------------------


@attrs.frozen
class OrderPlaced(Event):
    order_id: str
    items: int


@attrs.frozen
class OrderCancelled(Event):
    order_id: str


@attrs.frozen
class OrderNoted(Event):
    """Has an order id, but no saga handles it."""

    order_id: str


@attrs.frozen
class Uncorrelated(Event):
    """Handled by the saga, but carries no order id: addressed to no saga."""

    order_id: str | None


# -- the saga's own events ---------------------------------------------------------------------


@attrs.frozen
class ShippingStarted(Event):
    order_id: str
    items: int


@attrs.frozen
class StockReserved(Event):
    order_id: str


@attrs.frozen
class Shipped(Event):
    order_id: str


@attrs.frozen
class ShippingCancelled(Event):
    order_id: str
    reason: str


# -- commands ------------------------------------------------------------------------------------


@attrs.frozen
class Reserve(Command):
    order_id: str
    items: int
    key: str


@attrs.frozen
class Ship(Command):
    order_id: str
    key: str


@attrs.frozen
class Release(Command):
    order_id: str
    key: str


class OutOfStock(DomainError):
    pass


class ShippingSaga(Saga):
    category = "shipping"
    correlation_field = "order_id"
    terminal_events = (Shipped, ShippingCancelled)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.status = "new"
        self.items = 0

    @property
    def state(self) -> str:
        return self.status

    @handles(OrderPlaced, start=True)
    def on_placed(self, event: OrderPlaced) -> Any:
        if self.status == "new":
            self.raise_event(ShippingStarted(event.order_id, event.items))
        yield from self.advance()

    @handles(OrderCancelled, Uncorrelated)
    def on_cancelled(self, event: OrderCancelled) -> Any:
        if self.status == "reserved":
            yield Release(event.order_id, self.key("release"))
        if self.status in ("started", "reserved"):
            self.raise_event(ShippingCancelled(event.order_id, "cancelled by customer"))

    def advance(self) -> Any:
        while not self.completed and self.stuck_reason is None:
            if self.status == "started":
                try:
                    yield Reserve(self.id or "", self.items, self.key("reserve"))
                except OutOfStock as exc:
                    self.raise_event(ShippingCancelled(self.id or "", f"out of stock: {exc}"))
                    return
                self.raise_event(StockReserved(self.id or ""))
            elif self.status == "reserved":
                yield Ship(self.id or "", self.key("ship"))
                self.raise_event(Shipped(self.id or ""))
            else:
                return

    def resume(self) -> Any:
        return self.advance()

    @applies(ShippingStarted)
    def _started(self, event: ShippingStarted) -> None:
        self.status = "started"
        self.items = event.items

    @applies(StockReserved)
    def _reserved(self, event: StockReserved) -> None:
        self.status = "reserved"

    @applies(Shipped)
    def _shipped(self, event: Shipped) -> None:
        self.status = "shipped"

    @applies(ShippingCancelled)
    def _cancelled(self, event: ShippingCancelled) -> None:
        self.status = "cancelled"


EVENTS = (
    OrderPlaced,
    OrderCancelled,
    OrderNoted,
    Uncorrelated,
    ShippingStarted,
    StockReserved,
    Shipped,
    ShippingCancelled,
    *SAGA_EVENTS,
)


def serializer() -> Serializer:
    return Serializer(types=EVENTS)


class Warehouse:
    """A fake command handler that applies each idempotency key once and remembers everything.

    ``hooks`` run before a command of a given type is handled (to crash, fail or look around).
    """

    def __init__(self, stock: int = 100) -> None:
        self.stock = stock
        self.done: dict[str, Any] = {}
        self.applied: list[str] = []
        self.calls: list[str] = []
        self.hooks: dict[type, Callable[[Any], None]] = {}
        self.after_hooks: dict[type, Callable[[Any], None]] = {}
        self.reserved: dict[str, int] = {}

    def handle(self, command: Any) -> Any:
        hook = self.hooks.get(type(command))
        if hook is not None:
            hook(command)
        self.calls.append(command.key)
        if command.key in self.done:
            return self.done[command.key]
        if isinstance(command, Reserve):
            if command.items > self.stock:
                raise OutOfStock(f"{command.items} wanted, {self.stock} left")
            self.stock -= command.items
            self.reserved[command.order_id] = command.items
        elif isinstance(command, Release):
            self.stock += self.reserved.pop(command.order_id, 0)
        result = f"done {command.key}"
        self.done[command.key] = result
        self.applied.append(command.key)
        after = self.after_hooks.get(type(command))
        if after is not None:
            after(command)
        return result

    async def handle_async(self, command: Any) -> Any:
        await asyncio.sleep(0)
        return self.handle(command)


def make_store() -> InMemoryEventStore:
    return InMemoryEventStore(serializer=serializer())


def make_runner(
    store: Any,
    warehouse: Warehouse,
    checkpoints: InMemoryCheckpointStore | None = None,
    **options: Any,
) -> SagaRunner:
    return SagaRunner(store, [ShippingSaga], warehouse, checkpoints or InMemoryCheckpointStore(), **options)


def place(store: Any, order_id: str, items: int = 1) -> None:
    store.append(f"Order-{order_id}", [OrderPlaced(order_id, items)])


class CrashingStore(AsyncStoreMixin):
    """Wraps a store; the ``crash_at``-th append (0-based) dies before or after it is written.

    Everything written before the crash stays in the inner store, as on a real disk.
    """

    def __init__(self, inner: EventStore, crash_at: int | None = None, when: str = "before") -> None:
        self.inner = inner
        self.crash_at = crash_at
        self.when = when
        self.appends = 0

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        n = self.appends
        self.appends += 1
        if n == self.crash_at and self.when == "before":
            raise SimulatedCrash(f"crash before append #{n} to {stream}")
        result = self.inner.append(stream, events, expected_version)
        if n == self.crash_at and self.when == "after":
            raise SimulatedCrash(f"crash after append #{n} to {stream}")
        return result

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        return self.inner.read_stream(stream, from_version)

    def read_all(
        self, after: int = 0, limit: int | None = None, *, types: Collection[type] | None = None
    ) -> Iterator[RecordedEvent]:
        return self.inner.read_all(after, limit, types=types)

    def stream_version(self, stream: str) -> int:
        return self.inner.stream_version(stream)

    def last_position(self) -> int:
        return self.inner.last_position()

    def wait_for_events(self, after: int, timeout: float) -> bool:
        return self.inner.wait_for_events(after, timeout)

    def close(self) -> None:
        pass
