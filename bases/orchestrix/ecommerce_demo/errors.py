"""The shop's rules, one exception each; every one is an orchestrix DomainError."""

from __future__ import annotations

from decimal import Decimal

from orchestrix.core.errors import DomainError

__all__ = [
    "InvalidMoney",
    "InvalidOrder",
    "InvalidQuantity",
    "NoReservation",
    "OrderIdReused",
    "OutOfStock",
    "PaymentDeclined",
    "ProductExists",
    "ShopError",
    "UnknownProduct",
    "UnknownWallet",
    "WalletExists",
]


class ShopError(DomainError):
    """A shop rule refused a command; nothing was stored."""


class InvalidQuantity(ShopError, ValueError):
    """A quantity is not a whole number in the allowed range."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(f"quantity {value!r}: {reason}")
        self.value = value


class InvalidMoney(ShopError, ValueError):
    """An amount is not a finite Decimal with at most two decimal places, in the allowed range."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field} {value!r}: {reason}")
        self.field = field
        self.value = value


class InvalidOrder(ShopError, ValueError):
    """An order has no lines, or names one product twice."""

    def __init__(self, order_id: str, reason: str) -> None:
        super().__init__(f"order {order_id!r}: {reason}")
        self.order_id = order_id


class OrderIdReused(ShopError):
    """The order id already names a different order."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} already exists with other lines or another customer")
        self.order_id = order_id


class ProductExists(ShopError):
    """A product with this SKU was already added."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"product {sku!r} already exists")
        self.sku = sku


class UnknownProduct(ShopError, LookupError):
    """No product has this SKU."""

    def __init__(self, sku: str | None) -> None:
        super().__init__(f"product {sku!r} does not exist")
        self.sku = sku


class OutOfStock(ShopError):
    """Fewer items are available than an order wants."""

    def __init__(self, sku: str | None, available: int, requested: int) -> None:
        super().__init__(f"product {sku!r}: {requested} wanted, {available} available")
        self.sku = sku
        self.available = available
        self.requested = requested


class NoReservation(ShopError):
    """Stock was to be sold for an order that never reserved any."""

    def __init__(self, sku: str | None, order_id: str) -> None:
        super().__init__(f"product {sku!r} holds no stock for order {order_id!r}")
        self.sku = sku
        self.order_id = order_id


class WalletExists(ShopError):
    """The customer already has a wallet."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"customer {customer_id!r} already has a wallet")
        self.customer_id = customer_id


class UnknownWallet(ShopError, LookupError):
    """The customer has no wallet."""

    def __init__(self, customer_id: str | None) -> None:
        super().__init__(f"customer {customer_id!r} has no wallet")
        self.customer_id = customer_id


class PaymentDeclined(ShopError):
    """The wallet holds less than the amount to charge."""

    def __init__(self, customer_id: str | None, balance: Decimal, amount: Decimal) -> None:
        super().__init__(f"customer {customer_id!r}: balance {balance} is less than {amount}")
        self.customer_id = customer_id
        self.balance = balance
        self.amount = amount
