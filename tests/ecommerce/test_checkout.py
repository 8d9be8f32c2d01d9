"""The order saga: confirmed, declined, out of stock, crashed and resumed, redelivered, stuck."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bases.orchestrix.ecommerce_demo.errors import UnknownProduct
from bases.orchestrix.ecommerce_demo.handlers import ShopHandlers
from bases.orchestrix.ecommerce_demo.main import main, run_shop
from bases.orchestrix.ecommerce_demo.models import (
    AddProduct,
    ChargeWallet,
    OpenWallet,
    OrderLine,
    PlaceOrder,
    ReleaseStock,
    shop_serializer,
)
from bases.orchestrix.ecommerce_demo.saga import OrderSaga
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import CommandDispatcher, InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.file import FileCheckpointStore, FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore


class ProcessKilled(BaseException):
    """The process dies here (not an Exception, so nothing on the way catches it)."""


class Shop:
    """A store, the shop's handlers on it, and runners built as a restarted process would build them."""

    def __init__(self) -> None:
        self.store = InMemoryEventStore(serializer=shop_serializer())
        self.checkpoints = InMemoryCheckpointStore()
        self.handlers = ShopHandlers(AggregateRepository(self.store))
        self.handlers.handle(AddProduct("tea", "Green tea", 10))
        self.handlers.handle(AddProduct("mug", "Mug", 2))
        self.handlers.handle(OpenWallet("ada", Decimal("50.00")))

    def runner(self, dispatcher: Any = None) -> SagaRunner:
        return SagaRunner(self.store, [OrderSaga], dispatcher or self.handlers, self.checkpoints)

    def order(self, order_id: str, *lines: tuple[str, int], price: str = "5.00") -> None:
        order_lines = tuple(OrderLine(sku, quantity, Decimal(price)) for sku, quantity in lines)
        self.handlers.handle(PlaceOrder(order_id, "ada", order_lines))

    def events(self, order_id: str) -> list[str]:
        return [r.event_type for r in self.store.read_stream(OrderSaga.stream_name(order_id))]

    def stock(self, sku: str) -> tuple[int, int, int]:
        product = self.handlers.get_product(sku)
        return product.available, sum(product.reserved.values()), product.sold


class FailOn:
    """A dispatcher that raises ``error`` for commands of one type, and passes the others on."""

    def __init__(self, bus: CommandDispatcher, command_type: type, error: BaseException) -> None:
        self.bus, self.command_type, self.error = bus, command_type, error

    def handle(self, command: Any) -> Any:
        if isinstance(command, self.command_type):
            raise self.error
        return self.bus.handle(command)

    async def handle_async(self, command: Any) -> Any:
        return self.handle(command)


@pytest.fixture
def shop() -> Shop:
    return Shop()


def test_an_order_with_stock_and_money_is_confirmed(shop: Shop) -> None:
    shop.order("o-1", ("tea", 2), ("mug", 1))
    shop.runner().run_until_idle()
    assert shop.handlers.get_order("o-1").state == "CONFIRMED"
    assert shop.events("o-1") == [
        "OrderPlaced",
        "OrderLineReserved",
        "OrderLineReserved",
        "OrderPaid",
        "OrderConfirmed",
    ]
    assert (shop.stock("tea"), shop.stock("mug")) == ((8, 0, 2), (1, 0, 1))
    assert shop.handlers.get_wallet("ada").balance == Decimal("35.00")


def test_a_declined_payment_releases_every_reserved_line(shop: Shop) -> None:
    shop.order("o-1", ("tea", 2), ("mug", 1), price="20.00")
    shop.runner().run_until_idle()
    order = shop.handlers.get_order("o-1")
    assert order.state == "CANCELLED"
    assert order.reason == "payment declined: customer 'ada': balance 50.00 is less than 60.00"
    assert shop.events("o-1")[-2:] == ["OrderCancelling", "OrderCancelled"]
    assert (shop.stock("tea"), shop.stock("mug")) == ((10, 0, 0), (2, 0, 0))
    assert shop.handlers.get_wallet("ada").balance == Decimal("50.00")


def test_an_out_of_stock_line_releases_the_lines_reserved_before_it(shop: Shop) -> None:
    shop.order("o-1", ("tea", 1), ("mug", 3))
    shop.runner().run_until_idle()
    order = shop.handlers.get_order("o-1")
    assert (order.state, order.reason) == ("CANCELLED", "stock refused: product 'mug': 3 wanted, 2 available")
    assert (shop.stock("tea"), shop.stock("mug")) == ((10, 0, 0), (2, 0, 0))
    released = [r.event.sku for r in shop.store.read_all() if r.event_type == "StockReleased"]
    assert released == ["tea"]


def test_a_crash_before_the_payment_resumes_and_charges_once(shop: Shop) -> None:
    shop.order("o-1", ("tea", 2))
    dying = FailOn(shop.handlers, ChargeWallet, ProcessKilled())
    with pytest.raises(ProcessKilled):
        shop.runner(dying).run_until_idle()
    assert shop.handlers.get_order("o-1").state == "PLACED"
    assert shop.stock("tea") == (8, 2, 0)

    shop.runner().run_until_idle()  # a restarted process: same store, same checkpoints
    assert shop.handlers.get_order("o-1").state == "CONFIRMED"
    assert shop.stock("tea") == (8, 0, 2)
    assert len(shop.handlers.get_wallet("ada").charges) == 1


def test_redelivering_every_event_changes_nothing(shop: Shop) -> None:
    shop.order("o-1", ("tea", 2))
    shop.order("o-2", ("mug", 5))
    shop.runner().run_until_idle()
    before = shop.store.last_position()
    shop.checkpoints.save("sagas", 0)  # as if the checkpoint had been lost: everything comes again
    shop.runner().run_until_idle()
    assert shop.store.last_position() == before


def test_a_refused_release_leaves_the_order_visibly_stuck_until_a_retry(shop: Shop) -> None:
    shop.order("o-1", ("tea", 1), ("mug", 1), price="30.00")
    failing = FailOn(shop.handlers, ReleaseStock, UnknownProduct("tea"))
    runner = shop.runner(failing)
    runner.run_until_idle()
    (stuck,) = runner.stuck()
    assert (stuck.saga_id, stuck.state) == ("o-1", "CANCELLING")
    assert "release of 'mug' refused" in stuck.reason
    assert shop.stock("mug") == (1, 1, 0)

    order = shop.runner().retry(OrderSaga, "o-1")
    assert order.state == "CANCELLED"
    assert (shop.stock("tea"), shop.stock("mug")) == ((10, 0, 0), (2, 0, 0))


def test_concurrent_orders_never_sell_more_than_the_stock() -> None:
    shop = Shop()
    for n in range(12):
        shop.order(f"o-{n}", ("mug", 1), price="1.00")
    asyncio.run(shop.runner().run_until_idle_async())
    states = [shop.handlers.get_order(f"o-{n}").state for n in range(12)]
    assert states.count("CONFIRMED") == 2
    assert states.count("CANCELLED") == 10
    assert shop.stock("mug") == (0, 0, 2)


def test_the_demo_prints_the_same_on_the_file_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main()
    on_memory = capsys.readouterr().out
    store = FileEventStore(tmp_path / "events", shop_serializer(), sync=False)
    try:
        asyncio.run(run_shop(store, FileCheckpointStore(tmp_path / "checkpoints.json")))
    finally:
        store.close()
    assert capsys.readouterr().out == on_memory
    assert "o-2 CANCELLED: payment declined" in on_memory
