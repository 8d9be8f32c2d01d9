"""Commands, events and value objects of the shop.

Money is ``Decimal`` with at most two decimal places; quantities are positive ints. Both are
checked before anything is decided, so a bad value never reaches an event.
"""

from __future__ import annotations

import enum
from decimal import Decimal, InvalidOperation

import attrs

from bases.orchestrix.ecommerce_demo.errors import InvalidMoney, InvalidQuantity
from orchestrix.core.eventsourcing.keys import KEY_EVENTS
from orchestrix.core.execution.saga import SAGA_EVENTS
from orchestrix.core.messaging import Command, Event, Serializer

__all__ = [
    "MAX_QUANTITY",
    "AddProduct",
    "ChargeWallet",
    "CommitStock",
    "OpenWallet",
    "OrderCancelled",
    "OrderCancelling",
    "OrderConfirmed",
    "OrderLine",
    "OrderLineReserved",
    "OrderPaid",
    "OrderPlaced",
    "OrderStatus",
    "PlaceOrder",
    "ProductAdded",
    "ProductRestocked",
    "ReleaseStock",
    "ReserveStock",
    "RestockProduct",
    "StockCommitted",
    "StockReleased",
    "StockReserved",
    "WalletCharged",
    "WalletOpened",
    "order_total",
    "shop_serializer",
    "validate_money",
    "validate_quantity",
]

CENT = Decimal("0.01")
MAX_MONEY = Decimal("1000000000.00")
MAX_QUANTITY = 1_000_000


def validate_money(value: object, field: str, *, allow_zero: bool = False) -> Decimal:
    """Return ``value`` if it is a valid amount, or raise InvalidMoney saying what is wrong."""
    if type(value) is not Decimal:
        raise InvalidMoney(field, value, f"must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise InvalidMoney(field, value, "must be finite")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidMoney(field, value, "must be zero or more" if allow_zero else "must be positive")
    if value > MAX_MONEY:
        raise InvalidMoney(field, value, f"must not exceed {MAX_MONEY}")
    try:
        if value.quantize(CENT) != value:
            raise InvalidMoney(field, value, "must have at most two decimal places")
    except InvalidOperation:
        raise InvalidMoney(field, value, "cannot be represented in cents") from None
    return value + 0  # turns -0 into 0


def validate_quantity(value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is a whole number of items, or raise InvalidQuantity."""
    if type(value) is not int:
        raise InvalidQuantity(value, f"must be an int, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidQuantity(value, "must be zero or more" if allow_zero else "must be positive")
    if value > MAX_QUANTITY:
        raise InvalidQuantity(value, f"must not exceed {MAX_QUANTITY}")
    return value


class OrderStatus(enum.Enum):
    """Where an order is. PLACED and PAID hold stock; CONFIRMED and CANCELLED end the order."""

    PLACED = "PLACED"
    PAID = "PAID"
    CANCELLING = "CANCELLING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class OrderLine:
    """One product of an order: how many, at what unit price."""

    sku: str
    quantity: int
    unit_price: Decimal


def order_total(lines: tuple[OrderLine, ...]) -> Decimal:
    """What an order costs: the sum of quantity times unit price over its lines."""
    return sum((line.quantity * line.unit_price for line in lines), Decimal("0"))


# -- commands ------------------------------------------------------------------------------------


@attrs.frozen
class AddProduct(Command):
    """Add a product to the catalogue with its first stock."""

    sku: str
    name: str
    stock: int = 0


@attrs.frozen
class RestockProduct(Command):
    """Add items to a product's available stock."""

    sku: str
    quantity: int


@attrs.frozen
class ReserveStock(Command):
    """Hold items of a product for an order (sent by the order saga)."""

    sku: str
    order_id: str
    quantity: int


@attrs.frozen
class ReleaseStock(Command):
    """Give an order's held items back to available stock (the saga's compensation)."""

    sku: str
    order_id: str


@attrs.frozen
class CommitStock(Command):
    """The order is paid: its held items are sold."""

    sku: str
    order_id: str


@attrs.frozen
class OpenWallet(Command):
    """Open a customer's wallet with a starting balance."""

    customer_id: str
    balance: Decimal


@attrs.frozen
class ChargeWallet(Command):
    """Take an amount from a wallet; the idempotency key makes a repeated charge a no-op."""

    customer_id: str
    amount: Decimal
    idempotency_key: str


@attrs.frozen
class PlaceOrder(Command):
    """Place an order; the order saga reserves its stock, charges the wallet and confirms it."""

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]


# -- product events ------------------------------------------------------------------------------


@attrs.frozen
class ProductAdded(Event):
    """A product was added with its first stock."""

    sku: str
    name: str
    stock: int


@attrs.frozen
class ProductRestocked(Event):
    """Items were added to the available stock."""

    sku: str
    quantity: int


@attrs.frozen
class StockReserved(Event):
    """Items are held for an order."""

    sku: str
    order_id: str
    quantity: int


@attrs.frozen
class StockReleased(Event):
    """An order's held items are available again."""

    sku: str
    order_id: str
    quantity: int


@attrs.frozen
class StockCommitted(Event):
    """An order's held items are sold."""

    sku: str
    order_id: str
    quantity: int


# -- wallet events -------------------------------------------------------------------------------


@attrs.frozen
class WalletOpened(Event):
    """A customer's wallet was opened."""

    customer_id: str
    balance: Decimal


@attrs.frozen
class WalletCharged(Event):
    """Money was taken from a wallet, once per idempotency key."""

    customer_id: str
    amount: Decimal
    balance_after: Decimal
    idempotency_key: str


# -- order events (in the order saga's own stream) -----------------------------------------------


@attrs.frozen
class OrderPlaced(Event):
    """An order was accepted; the saga takes it from here."""

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal


@attrs.frozen
class OrderLineReserved(Event):
    """The stock of one line is held for the order."""

    order_id: str
    sku: str
    quantity: int


@attrs.frozen
class OrderPaid(Event):
    """The customer's wallet was charged the order total."""

    order_id: str
    amount: Decimal


@attrs.frozen
class OrderConfirmed(Event):
    """The order's stock is sold; the order is done."""

    order_id: str


@attrs.frozen
class OrderCancelling(Event):
    """A step was refused; the saga will release every line it reserved (decided, not yet done)."""

    order_id: str
    reason: str


@attrs.frozen
class OrderCancelled(Event):
    """Every reserved line was released; the order ended without a sale."""

    order_id: str
    reason: str


PRODUCT_EVENTS = (ProductAdded, ProductRestocked, StockReserved, StockReleased, StockCommitted)
WALLET_EVENTS = (WalletOpened, WalletCharged)
ORDER_EVENTS = (OrderPlaced, OrderLineReserved, OrderPaid, OrderConfirmed, OrderCancelling, OrderCancelled)


def shop_serializer() -> Serializer:
    """A serializer that knows every event the shop stores, for the durable stores."""
    return Serializer(
        types=[*PRODUCT_EVENTS, *WALLET_EVENTS, *ORDER_EVENTS, *SAGA_EVENTS, *KEY_EVENTS, OrderLine]
    )
