"""Every shop rule: what is refused, with which error, and that nothing is stored."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given

from bases.orchestrix.ecommerce_demo.errors import (
    InvalidMoney,
    InvalidOrder,
    InvalidQuantity,
    NoReservation,
    OrderIdReused,
    OutOfStock,
    PaymentDeclined,
    ProductExists,
    UnknownProduct,
    UnknownWallet,
)
from bases.orchestrix.ecommerce_demo.handlers import ShopHandlers
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
    shop_serializer,
    validate_money,
)
from orchestrix.core.errors import KeyAlreadyRefusedError
from orchestrix.core.eventsourcing import AggregateRepository, KeyRefused
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import invalid_amounts


@pytest.fixture
def shop() -> ShopHandlers:
    shop = ShopHandlers(AggregateRepository(InMemoryEventStore(serializer=shop_serializer())))
    shop.handle(AddProduct("tea", "Green tea", 3))
    shop.handle(OpenWallet("ada", Decimal("10.00")))
    return shop


def stored(shop: ShopHandlers) -> int:
    return shop.repository.event_store.last_position()


def test_reserving_more_than_is_available_is_refused_once_and_for_good(shop: ShopHandlers) -> None:
    before = stored(shop)
    with pytest.raises(OutOfStock) as refused:
        shop.handle(ReserveStock("tea", "o-1", 4))
    assert (refused.value.available, refused.value.requested) == (3, 4)
    # Only the record that o-1's reservation is refused is stored; no stock moved.
    assert [type(r.event) for r in shop.repository.event_store.read_all(before)] == [KeyRefused]
    shop.handle(RestockProduct("tea", 10))
    with pytest.raises(KeyAlreadyRefusedError, match="available") as again:
        shop.handle(ReserveStock("tea", "o-1", 4))  # a late copy, after a restock: still refused
    assert again.value.error_type == "OutOfStock"
    assert shop.get_product("tea").reserved == {}


def test_a_reservation_is_held_once_per_order(shop: ShopHandlers) -> None:
    shop.handle(ReserveStock("tea", "o-1", 2))
    shop.handle(ReserveStock("tea", "o-1", 2))
    tea = shop.get_product("tea")
    assert (tea.available, tea.reserved) == (1, {"o-1": 2})


def test_release_gives_stock_back_once_and_a_late_reservation_changes_nothing(shop: ShopHandlers) -> None:
    shop.handle(ReserveStock("tea", "o-1", 2))
    shop.handle(ReleaseStock("tea", "o-1"))
    shop.handle(ReleaseStock("tea", "o-1"))
    shop.handle(ReserveStock("tea", "o-1", 2))
    tea = shop.get_product("tea")
    assert (tea.available, tea.reserved, tea.sold) == (3, {}, 0)


def test_commit_sells_reserved_stock_once(shop: ShopHandlers) -> None:
    shop.handle(ReserveStock("tea", "o-1", 2))
    shop.handle(CommitStock("tea", "o-1"))
    shop.handle(CommitStock("tea", "o-1"))
    tea = shop.get_product("tea")
    assert (tea.available, tea.reserved, tea.sold) == (1, {}, 2)
    with pytest.raises(NoReservation):
        shop.handle(CommitStock("tea", "o-2"))


def test_a_charge_beyond_the_balance_is_declined_and_a_repeated_key_charges_once(shop: ShopHandlers) -> None:
    with pytest.raises(PaymentDeclined):
        shop.handle(ChargeWallet("ada", Decimal("10.01"), "o-1:payment"))
    # A declined key stays declined, whatever is asked under it later.
    with pytest.raises(KeyAlreadyRefusedError, match=r"less than 10\.01"):
        shop.handle(ChargeWallet("ada", Decimal("4.00"), "o-1:payment"))
    assert shop.handle(ChargeWallet("ada", Decimal("4.00"), "o-2:payment")) == Decimal("4.00")
    shop.handle(ChargeWallet("ada", Decimal("4.00"), "o-2:payment"))
    assert shop.get_wallet("ada").balance == Decimal("6.00")


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (AddProduct("tea", "Again"), ProductExists),
        (AddProduct("cup", "Cup", -1), InvalidQuantity),
        (RestockProduct("tea", 0), InvalidQuantity),
        (RestockProduct("cup", 1), UnknownProduct),
        (ReserveStock("tea", "o-1", True), InvalidQuantity),
        (ReserveStock("cup", "o-1", 1), UnknownProduct),
        (ChargeWallet("bob", Decimal("1"), "k"), UnknownWallet),
        (OpenWallet("bob", Decimal("-1")), InvalidMoney),
        (PlaceOrder("o-1", "ada", ()), InvalidOrder),
        (PlaceOrder("o-1", "ada", (OrderLine("tea", 1, Decimal("1")),) * 2), InvalidOrder),
        (PlaceOrder("o-1", "ada", (OrderLine("tea", 0, Decimal("1")),)), InvalidQuantity),
        (PlaceOrder("o-1", "ada", (OrderLine("tea", 1, Decimal("0.001")),)), InvalidMoney),
        (PlaceOrder("o-1", "", (OrderLine("tea", 1, Decimal("1")),)), InvalidOrder),
    ],
    ids=lambda value: type(value).__name__,
)
def test_bad_commands_are_refused_with_a_specific_error_and_store_nothing(
    shop: ShopHandlers, command: object, error: type[Exception]
) -> None:
    before = stored(shop)
    with pytest.raises(error):
        shop.handle(command)
    assert stored(shop) == before


def test_an_invalid_amount_is_never_charged(shop: ShopHandlers) -> None:
    for amount in (1.5, Decimal("NaN"), Decimal("0"), "5", Decimal("-2")):
        with pytest.raises(InvalidMoney):
            shop.handle(ChargeWallet("ada", amount, "k"))  # type: ignore[arg-type]
    assert shop.get_wallet("ada").balance == Decimal("10.00")


def test_placing_the_same_order_twice_returns_it_and_another_order_under_its_id_is_refused(
    shop: ShopHandlers,
) -> None:
    order = PlaceOrder("o-1", "ada", (OrderLine("tea", 1, Decimal("2.00")),))
    first = shop.handle(order)
    again = shop.handle(order)
    assert (again.id, again.version, again.total) == (first.id, 0, Decimal("2.00"))
    with pytest.raises(OrderIdReused):
        shop.handle(PlaceOrder("o-1", "ada", (OrderLine("tea", 2, Decimal("2.00")),)))


@given(invalid_amounts())
def test_every_invalid_amount_is_refused(amount: object) -> None:
    with pytest.raises(InvalidMoney):
        validate_money(amount, "amount")
