"""Run the shop: three orders; one is confirmed, one is declined, one finds a product out of stock.

From the repository root: ``python -m bases.orchestrix.ecommerce_demo.main`` (or
``python bases/orchestrix/ecommerce_demo/main.py``; ``--help`` says what it does).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

if not __package__:  # run as a file, so sys.path starts at this folder: add the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bases.orchestrix.ecommerce_demo.handlers import ShopHandlers
from bases.orchestrix.ecommerce_demo.models import (
    AddProduct,
    OpenWallet,
    OrderLine,
    PlaceOrder,
    shop_serializer,
)
from bases.orchestrix.ecommerce_demo.saga import OrderSaga
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution import CheckpointStore, InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory.store import InMemoryEventStore

TEA, MUG, LAMP = Decimal("4.50"), Decimal("12.00"), Decimal("30.00")

ORDERS = [
    PlaceOrder("o-1", "ada", (OrderLine("tea", 2, TEA), OrderLine("mug", 1, MUG))),
    PlaceOrder("o-2", "bob", (OrderLine("tea", 1, TEA), OrderLine("mug", 1, MUG))),
    PlaceOrder("o-3", "ada", (OrderLine("mug", 1, MUG), OrderLine("lamp", 1, LAMP))),
]


async def run_shop(store: EventStore, checkpoints: CheckpointStore) -> None:
    """Stock the shop, place the orders, let the order sagas run, and print the outcome."""
    shop = ShopHandlers(AggregateRepository(store))
    runner = SagaRunner(store, [OrderSaga], shop, checkpoints, name="orders")

    for command in (
        AddProduct("tea", "Green tea", 10),
        AddProduct("mug", "Mug", 5),
        AddProduct("lamp", "Lamp"),
    ):
        await shop.handle_async(command)
    for customer, balance in (("ada", "50.00"), ("bob", "5.00")):
        await shop.handle_async(OpenWallet(customer, Decimal(balance)))

    for command in ORDERS:
        order = await shop.handle_async(command)
        lines = ", ".join(f"{line.quantity} x {line.sku}" for line in order.lines)
        print(f"Placed {order.id} ({order.customer_id}): {lines} = {order.total}")

    await runner.run_until_idle_async()

    print()
    for command in ORDERS:
        order = shop.get_order(command.order_id)
        print(f"{order.id} {order.state}" + (f": {order.reason}" if order.reason else ""))
    print()
    print(f"{'Stock':<8}{'available':>10}{'reserved':>10}{'sold':>6}")
    for sku in ("tea", "mug", "lamp"):
        product = shop.get_product(sku)
        print(f"{sku:<8}{product.available:>10}{sum(product.reserved.values()):>10}{product.sold:>6}")
    print(f"Wallets: ada {shop.get_wallet('ada').balance}, bob {shop.get_wallet('bob').balance}")


def main(argv: Sequence[str] = ()) -> None:
    """Run the demo on the in-memory store: the one place that picks a store."""
    parser = argparse.ArgumentParser(
        prog="python -m bases.orchestrix.ecommerce_demo.main",
        description=__doc__.split("\n")[0],
        epilog="It keeps nothing: every run starts from an empty in-memory store.",
    )
    parser.parse_args(argv)
    store = InMemoryEventStore(serializer=shop_serializer())
    asyncio.run(run_shop(store, InMemoryCheckpointStore()))


if __name__ == "__main__":
    main(sys.argv[1:])
