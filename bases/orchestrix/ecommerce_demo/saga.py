"""OrderSaga: reserve every line, charge the wallet, sell the stock; or release what was reserved.

The order's stream ``Order-<order id>`` is the saga's state. It begins with ``OrderPlaced``
(stored by ``ShopHandlers.place_order``) and goes on::

    OrderPlaced ── for each line: reserve its stock (ReserveStock) → OrderLineReserved
        ├─ a line refused (out of stock, unknown product) → OrderCancelling
        └─ all lines held ── charge the wallet (ChargeWallet, key <order id>:payment)
             ├─ declined → OrderCancelling
             └─ OrderPaid ── sell each line (CommitStock) → OrderConfirmed
    OrderCancelling ── release each reserved line (ReleaseStock) → OrderCancelled

Every command is safe to repeat: a product holds stock for an order once, and a wallet charges
a key once. So a step run again after a crash repeats its commands without repeating their
effects, and the saga decides only from its own recorded state.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bases.orchestrix.ecommerce_demo.models import (
    ChargeWallet,
    CommitStock,
    OrderCancelled,
    OrderCancelling,
    OrderConfirmed,
    OrderLine,
    OrderLineReserved,
    OrderPaid,
    OrderPlaced,
    OrderStatus,
    PlaceOrder,
    ReleaseStock,
    ReserveStock,
    order_total,
)
from orchestrix.core.errors import DomainError
from orchestrix.core.eventsourcing.aggregate import applies
from orchestrix.core.execution.saga import Saga, SagaStep, handles

__all__ = ["OrderSaga"]


class OrderSaga(Saga):
    """One order: its state, rebuilt from its own stream, and the steps that move it on."""

    category = "Order"
    correlation_field = "order_id"
    terminal_events = (OrderConfirmed, OrderCancelled)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.status: OrderStatus | None = None
        self.customer_id = ""
        self.lines: tuple[OrderLine, ...] = ()
        self.total = Decimal("0")
        self.reserved: list[str] = []
        self.reason = ""

    @classmethod
    def place(cls, command: PlaceOrder) -> OrderSaga:
        """A new order holding its ``OrderPlaced`` event (the command is already validated)."""
        saga = cls(command.order_id)
        saga.raise_event(
            OrderPlaced(command.order_id, command.customer_id, command.lines, order_total(command.lines))
        )
        return saga

    @property
    def state(self) -> str:
        """The order status."""
        return str(self.status) if self.status is not None else "NEW"

    # -- steps ----------------------------------------------------------------------------

    @handles(OrderPlaced, start=True)
    def advance(self, event: Any = None) -> SagaStep:
        """Take the order as far as it can go from its current state."""
        while not self.completed and self.stuck_reason is None:
            if self.status is OrderStatus.PLACED and len(self.reserved) < len(self.lines):
                yield from self._reserve(self.lines[len(self.reserved)])
            elif self.status is OrderStatus.PLACED:
                yield from self._pay()
            elif self.status is OrderStatus.PAID:
                yield from self._confirm()
            elif self.status is OrderStatus.CANCELLING:
                yield from self._release()
            else:
                return

    def resume(self) -> SagaStep:
        """After a retry, continue from the current state."""
        return self.advance()

    def _reserve(self, line: OrderLine) -> SagaStep:
        assert self.id is not None
        try:
            yield ReserveStock(line.sku, self.id, line.quantity)
        except DomainError as refused:
            self.raise_event(OrderCancelling(self.id, f"stock refused: {refused}"))
            return
        self.raise_event(OrderLineReserved(self.id, line.sku, line.quantity))

    def _pay(self) -> SagaStep:
        assert self.id is not None
        try:
            yield ChargeWallet(self.customer_id, self.total, self.key("payment"))
        except DomainError as declined:
            self.raise_event(OrderCancelling(self.id, f"payment declined: {declined}"))
            return
        self.raise_event(OrderPaid(self.id, self.total))

    def _confirm(self) -> SagaStep:
        assert self.id is not None
        for sku in self.reserved:
            yield CommitStock(sku, self.id)
        self.raise_event(OrderConfirmed(self.id))

    def _release(self) -> SagaStep:
        assert self.id is not None
        for sku in reversed(self.reserved):
            try:
                yield ReleaseStock(sku, self.id)
            except DomainError as refused:
                self.mark_stuck(f"release of {sku!r} refused: {refused}")
                return
        self.raise_event(OrderCancelled(self.id, self.reason))

    # -- state ----------------------------------------------------------------------------

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.id = event.order_id
        self.status = OrderStatus.PLACED
        self.customer_id = event.customer_id
        self.lines = event.lines
        self.total = event.total

    @applies(OrderLineReserved)
    def _line_reserved(self, event: OrderLineReserved) -> None:
        self.reserved.append(event.sku)

    @applies(OrderPaid)
    def _paid(self, event: OrderPaid) -> None:
        self.status = OrderStatus.PAID

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.status = OrderStatus.CONFIRMED

    @applies(OrderCancelling)
    def _cancelling(self, event: OrderCancelling) -> None:
        self.status = OrderStatus.CANCELLING
        self.reason = event.reason

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = OrderStatus.CANCELLED
