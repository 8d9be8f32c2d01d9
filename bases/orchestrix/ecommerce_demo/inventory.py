"""The Product aggregate: stock that is available, held for orders, or sold; never negative."""

from __future__ import annotations

from bases.orchestrix.ecommerce_demo.errors import NoReservation, OutOfStock, ProductExists, UnknownProduct
from bases.orchestrix.ecommerce_demo.models import (
    AddProduct,
    CommitStock,
    ProductAdded,
    ProductRestocked,
    ReleaseStock,
    ReserveStock,
    RestockProduct,
    StockCommitted,
    StockReleased,
    StockReserved,
    validate_quantity,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies
from orchestrix.core.eventsourcing.keys import decided_once

__all__ = ["Product"]


class Product(AggregateRoot):
    """One product's stock. Every item is available, reserved for exactly one order, or sold."""

    category = "Product"

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.available = 0
        self.reserved: dict[str, int] = {}
        self.sold = 0
        self.settled: set[str] = set()

    # -- commands ------------------------------------------------------------------------

    def add(self, command: AddProduct) -> None:
        """Add the product with its first stock (zero or more)."""
        if self.id is not None:
            raise ProductExists(command.sku)
        stock = validate_quantity(command.stock, allow_zero=True)
        self.raise_event(ProductAdded(command.sku, command.name, stock))

    def restock(self, command: RestockProduct) -> None:
        """Add items to the available stock."""
        quantity = validate_quantity(command.quantity)
        self.raise_event(ProductRestocked(self._sku(), quantity))

    def reserve(self, command: ReserveStock) -> None:
        """Hold items for an order, decided once per order: reserving again, or after the end, changes
        nothing; a reservation refused before is refused again."""
        quantity = validate_quantity(command.quantity)
        sku = self._sku()
        if command.order_id in self.reserved or command.order_id in self.settled:
            return
        self._reserve_new(command, sku, quantity)

    @decided_once(lambda command: f"{command.order_id}:reserve")
    def _reserve_new(self, command: ReserveStock, sku: str, quantity: int) -> None:
        # Decided once per order: a refused reservation stays refused, so a late copy (a runner
        # that lost its lease while paused) cannot hold stock for an order cancelled meanwhile.
        if quantity > self.available:
            raise OutOfStock(sku, self.available, quantity)
        self.raise_event(StockReserved(sku, command.order_id, quantity))

    def release(self, command: ReleaseStock) -> None:
        """Make an order's held items available again; if it holds none, change nothing."""
        quantity = self.reserved.get(command.order_id)
        if quantity is not None:
            self.raise_event(StockReleased(self._sku(), command.order_id, quantity))

    def commit(self, command: CommitStock) -> None:
        """Sell an order's held items. Repeating it changes nothing."""
        if command.order_id in self.settled:
            return
        quantity = self.reserved.get(command.order_id)
        if quantity is None:
            raise NoReservation(self._sku(), command.order_id)
        self.raise_event(StockCommitted(self._sku(), command.order_id, quantity))

    def _sku(self) -> str:
        if self.id is None:
            raise UnknownProduct(None)
        return self.id

    # -- appliers: the only place state changes ------------------------------------------

    @applies(ProductAdded)
    def _added(self, event: ProductAdded) -> None:
        self.id = event.sku
        self.name = event.name
        self.available = event.stock

    @applies(ProductRestocked)
    def _restocked(self, event: ProductRestocked) -> None:
        self.available += event.quantity

    @applies(StockReserved)
    def _reserved(self, event: StockReserved) -> None:
        self.available -= event.quantity
        self.reserved[event.order_id] = event.quantity

    @applies(StockReleased)
    def _released(self, event: StockReleased) -> None:
        self.available += self.reserved.pop(event.order_id)
        self.settled.add(event.order_id)

    @applies(StockCommitted)
    def _committed(self, event: StockCommitted) -> None:
        self.sold += self.reserved.pop(event.order_id)
        self.settled.add(event.order_id)
