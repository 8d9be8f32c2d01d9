"""ShopHandlers: one handler per command, written once, sent from sync or asyncio code.

Each handler loads an aggregate, lets it decide and saves it with the version it loaded; on a
ConcurrencyError it reloads and decides again (``AggregateRepository.update``), so "never more
than is available" is always checked against the latest stock.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from bases.orchestrix.ecommerce_demo.errors import (
    InvalidOrder,
    OrderIdReused,
    ProductExists,
    UnknownProduct,
    UnknownWallet,
    WalletExists,
)
from bases.orchestrix.ecommerce_demo.inventory import Product
from bases.orchestrix.ecommerce_demo.models import (
    AddProduct,
    ChargeWallet,
    CommitStock,
    OpenWallet,
    OrderLine,
    PlaceOrder,
    ReleaseStock,
    ReserveStock,
    RestockProduct,
    validate_money,
    validate_quantity,
)
from bases.orchestrix.ecommerce_demo.payments import Wallet
from bases.orchestrix.ecommerce_demo.saga import OrderSaga
from orchestrix.core.errors import AggregateNotFoundError, ConcurrencyError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.eventsourcing.store import validate_stream_name
from orchestrix.core.execution.dispatch import CommandBus

__all__ = ["ShopHandlers"]

T = TypeVar("T")


class ShopHandlers:
    """Executes the shop's commands against products, wallets and orders in one repository.

    Each handler is written once, as a coroutine. ``handle(command)`` runs it from sync code
    (without an event loop or a thread), ``await handle_async(command)`` from asyncio code; a
    ShopHandlers is the dispatcher the saga runner needs.
    """

    def __init__(self, repository: AggregateRepository) -> None:
        self.repository = repository
        self._bus = CommandBus()
        self._bus.register(AddProduct, self.add_product)
        self._bus.register(RestockProduct, self.restock_product)
        self._bus.register(ReserveStock, self.reserve_stock)
        self._bus.register(ReleaseStock, self.release_stock)
        self._bus.register(CommitStock, self.commit_stock)
        self._bus.register(OpenWallet, self.open_wallet)
        self._bus.register(ChargeWallet, self.charge_wallet)
        self._bus.register(PlaceOrder, self.place_order)

    def handle(self, command: Any) -> Any:
        """Execute any shop command and return its handler's result (UnknownCommandError if none)."""
        return self._bus.handle(command)

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        return await self._bus.handle_async(command)

    # -- products -------------------------------------------------------------------------

    async def add_product(self, command: AddProduct) -> Product:
        """Add a product; ProductExists if the SKU is taken."""
        product = Product()
        product.add(command)
        try:
            await self.repository.save_async(product)
        except ConcurrencyError:
            raise ProductExists(command.sku) from None
        return product

    async def restock_product(self, command: RestockProduct) -> None:
        """Add items to a product's stock."""
        await self._product(command.sku, lambda product: product.restock(command))

    async def reserve_stock(self, command: ReserveStock) -> None:
        """Hold items for an order, or raise OutOfStock."""
        await self._product(command.sku, lambda product: product.reserve(command))

    async def release_stock(self, command: ReleaseStock) -> None:
        """Make an order's held items available again."""
        await self._product(command.sku, lambda product: product.release(command))

    async def commit_stock(self, command: CommitStock) -> None:
        """Sell an order's held items."""
        await self._product(command.sku, lambda product: product.commit(command))

    def get_product(self, sku: str) -> Product:
        """Load a product; UnknownProduct if there is none."""
        try:
            return self.repository.load(Product, sku)
        except AggregateNotFoundError:
            raise UnknownProduct(sku) from None

    # -- wallets --------------------------------------------------------------------------

    async def open_wallet(self, command: OpenWallet) -> Wallet:
        """Open a customer's wallet; WalletExists if it is open already."""
        wallet = Wallet()
        wallet.open(command)
        try:
            await self.repository.save_async(wallet)
        except ConcurrencyError:
            raise WalletExists(command.customer_id) from None
        return wallet

    async def charge_wallet(self, command: ChargeWallet) -> Decimal:
        """Charge a wallet once per idempotency key, or raise PaymentDeclined."""
        try:
            return await self.repository.update_async(
                Wallet, command.customer_id, lambda wallet: wallet.charge(command)
            )
        except AggregateNotFoundError:
            raise UnknownWallet(command.customer_id) from None

    def get_wallet(self, customer_id: str) -> Wallet:
        """Load a wallet; UnknownWallet if there is none."""
        try:
            return self.repository.load(Wallet, customer_id)
        except AggregateNotFoundError:
            raise UnknownWallet(customer_id) from None

    # -- orders ---------------------------------------------------------------------------

    async def place_order(self, command: PlaceOrder) -> OrderSaga:
        """Check an order and store its ``OrderPlaced``; the saga runner does the rest.

        Placing the same order again returns it unchanged; another order under the same id
        raises OrderIdReused.
        """
        _check_order(command)
        try:
            existing = await self.repository.load_async(OrderSaga, command.order_id)
        except AggregateNotFoundError:
            order = OrderSaga.place(command)
            try:
                await self.repository.save_async(order)
                return order
            except ConcurrencyError:
                existing = await self.repository.load_async(OrderSaga, command.order_id)
        if (existing.customer_id, existing.lines) != (command.customer_id, command.lines):
            raise OrderIdReused(command.order_id)
        return existing

    def get_order(self, order_id: str) -> OrderSaga:
        """Load an order; AggregateNotFoundError if there is none."""
        return self.repository.load(OrderSaga, order_id)

    # -- plumbing -------------------------------------------------------------------------

    async def _product(self, sku: str, decide: Callable[[Product], T]) -> T:
        try:
            return await self.repository.update_async(Product, sku, decide)
        except AggregateNotFoundError:
            raise UnknownProduct(sku) from None


def _check_order(command: PlaceOrder) -> None:
    """The checks that need no stored state: ids, lines, quantities, prices."""
    for field in ("order_id", "customer_id"):
        value = getattr(command, field)
        if not isinstance(value, str) or not value:
            raise InvalidOrder(str(command.order_id), f"{field} must be a non-empty string")
    validate_stream_name(OrderSaga.stream_name(command.order_id))
    validate_stream_name(Wallet.stream_name(command.customer_id))
    if not isinstance(command.lines, tuple) or not command.lines:
        raise InvalidOrder(command.order_id, "needs a tuple of at least one OrderLine")
    for line in command.lines:
        if not isinstance(line, OrderLine) or not isinstance(line.sku, str) or not line.sku:
            raise InvalidOrder(command.order_id, f"{line!r} is not an OrderLine with a SKU")
        validate_stream_name(Product.stream_name(line.sku))
        validate_quantity(line.quantity)
        validate_money(line.unit_price, "unit_price")
    if len({line.sku for line in command.lines}) != len(command.lines):
        raise InvalidOrder(command.order_id, "names a product twice")
