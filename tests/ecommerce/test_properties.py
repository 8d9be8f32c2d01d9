"""Property: whatever the orders, and wherever the process dies, stock and money are conserved.

For every product, at every moment: available + reserved + sold == initial stock, none negative.
Once the runner has caught up: nothing is reserved, every order is CONFIRMED or CANCELLED, what
was sold is exactly the confirmed orders' lines, and each wallet lost exactly its confirmed totals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bases.orchestrix.ecommerce_demo.errors import ShopError
from bases.orchestrix.ecommerce_demo.handlers import ShopHandlers
from bases.orchestrix.ecommerce_demo.models import (
    AddProduct,
    OpenWallet,
    OrderCancelled,
    OrderLine,
    PlaceOrder,
    shop_serializer,
)
from bases.orchestrix.ecommerce_demo.saga import OrderSaga
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner, SagaStep
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import money

SKUS = ("tea", "mug", "lamp")
CUSTOMERS = ("ada", "bob")


class ProcessKilled(BaseException):
    """The process dies here."""


class DiesAfter:
    """Passes commands to the bus, and kills the process at the n-th one."""

    def __init__(self, bus: Any, n: int) -> None:
        self.bus, self.left = bus, n

    def handle(self, command: Any) -> Any:
        self.left -= 1
        if self.left == 0:
            raise ProcessKilled
        return self.bus.handle(command)

    async def handle_async(self, command: Any) -> Any:
        return self.handle(command)


lines = st.lists(
    st.builds(OrderLine, st.sampled_from(SKUS), st.integers(1, 4), money("0.01", "20.00")),
    min_size=1,
    max_size=3,
    unique_by=lambda line: line.sku,
).map(tuple)
orders = st.lists(st.tuples(st.sampled_from(CUSTOMERS), lines), max_size=8)


def assert_stock_conserved(shop: ShopHandlers, initial: dict[str, int]) -> None:
    for sku, stock in initial.items():
        product = shop.get_product(sku)
        reserved = sum(product.reserved.values())
        assert product.available + reserved + product.sold == stock
        assert min(product.available, reserved, product.sold) >= 0
        assert all(quantity > 0 for quantity in product.reserved.values())


def run_and_check(
    initial: dict[str, int],
    balances: dict[str, Decimal],
    placed: list[tuple[str, tuple[OrderLine, ...]]],
    crash_at: int,
) -> None:
    store = InMemoryEventStore(serializer=shop_serializer())
    checkpoints = InMemoryCheckpointStore()
    shop = ShopHandlers(AggregateRepository(store))
    for sku, stock in initial.items():
        shop.handle(AddProduct(sku, sku.title(), stock))
    for customer, balance in balances.items():
        shop.handle(OpenWallet(customer, balance))
    order_ids = []
    for n, (customer, order_lines) in enumerate(placed):
        try:
            shop.handle(PlaceOrder(f"o-{n}", customer, order_lines))
        except ShopError:
            continue
        order_ids.append(f"o-{n}")

    try:
        SagaRunner(store, [OrderSaga], DiesAfter(shop, crash_at), checkpoints).run_until_idle()
    except ProcessKilled:
        assert_stock_conserved(shop, initial)  # in the middle of everything, too
    SagaRunner(store, [OrderSaga], shop, checkpoints).run_until_idle()  # the restarted process

    assert_stock_conserved(shop, initial)
    finished = [shop.get_order(order_id) for order_id in order_ids]
    assert all(order.state in ("CONFIRMED", "CANCELLED") for order in finished)
    confirmed = [order for order in finished if order.state == "CONFIRMED"]
    for sku in SKUS:
        product = shop.get_product(sku)
        assert product.reserved == {}
        assert product.sold == sum(line.quantity for o in confirmed for line in o.lines if line.sku == sku)
    for customer in CUSTOMERS:
        spent = sum((o.total for o in confirmed if o.customer_id == customer), Decimal("0"))
        assert shop.get_wallet(customer).balance == balances[customer] - spent >= 0


worlds = {
    "initial": st.fixed_dictionaries({sku: st.integers(0, 6) for sku in SKUS}),
    "balances": st.fixed_dictionaries({c: money("0.00", "60.00") for c in CUSTOMERS}),
    "placed": orders,
    "crash_at": st.integers(1, 40),
}


# 150 examples in CI; the `long` profile (HYPOTHESIS_PROFILE=long) raises it to its own count.
@settings(max_examples=max(150, settings.default.max_examples))
@given(**worlds)
def test_stock_and_money_are_conserved_whatever_happens(**world: Any) -> None:
    run_and_check(**world)


def test_without_the_compensation_the_property_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def cancel_without_releasing(saga: OrderSaga) -> SagaStep:
        saga.raise_event(OrderCancelled(saga.id or "", saga.reason))
        yield from ()

    monkeypatch.setattr(OrderSaga, "_release", cancel_without_releasing)
    check = settings(max_examples=150, phases=[Phase.generate])(given(**worlds)(run_and_check))
    with pytest.raises(AssertionError):
        check()
