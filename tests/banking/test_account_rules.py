"""Every Account rule: refused with its own exception, and nothing stored."""

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given

from bases.orchestrix.banking_demo import errors
from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    AccountStatus,
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    TransactionKind,
    WithdrawMoney,
    banking_serializer,
)
from orchestrix.core.errors import DomainError
from orchestrix.core.eventsourcing import AggregateRepository, KeyRefused
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import invalid_amounts, money


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore(serializer=banking_serializer())


@pytest.fixture
def bank(store: InMemoryEventStore) -> BankingCommandHandlers:
    bank = BankingCommandHandlers(AggregateRepository(event_store=store))
    bank.handle(OpenAccount("acc-1", "Alice", Decimal("100")))
    return bank


def refused(
    store: InMemoryEventStore, error: type[Exception], action: Callable[[], object], match: str | None = None
) -> Exception:
    """Run ``action``, expect ``error``, and check the store did not change.

    A refused *keyed* command leaves exactly one trace: the record that its key is refused.
    """
    before = store.last_position()
    with pytest.raises(error, match=match) as raised:
        action()
    stored = [type(r.event) for r in store.read_all(before)]
    assert stored in ([], [KeyRefused])
    assert isinstance(raised.value, DomainError)
    return raised.value


def test_open_deposit_withdraw_keep_an_exact_balance_and_audit_trail(bank: BankingCommandHandlers) -> None:
    bank.handle(DepositMoney("acc-1", Decimal("0.10"), "ten cents"))
    bank.handle(DepositMoney("acc-1", Decimal("0.20"), "twenty cents"))
    bank.handle(WithdrawMoney("acc-1", Decimal("0.30"), "thirty cents"))
    account = bank.get_account("acc-1")
    assert account.balance == Decimal("100")
    assert account.status is AccountStatus.ACTIVE
    assert [(t.kind, t.amount, t.balance_after) for t in account.transactions] == [
        (TransactionKind.OPENING, Decimal("100"), Decimal("100")),
        (TransactionKind.DEPOSIT, Decimal("0.10"), Decimal("100.10")),
        (TransactionKind.DEPOSIT, Decimal("0.20"), Decimal("100.30")),
        (TransactionKind.WITHDRAWAL, Decimal("0.30"), Decimal("100.00")),
    ]
    assert account.transactions[1].description == "ten cents"
    assert all(t.occurred_at.tzinfo is not None for t in account.transactions)
    assert len({t.transaction_id for t in account.transactions}) == 4


def test_no_overdraft(bank: BankingCommandHandlers, store: InMemoryEventStore) -> None:
    error = refused(
        store,
        errors.InsufficientFunds,
        lambda: bank.handle(WithdrawMoney("acc-1", Decimal("100.01"))),
    )
    assert (error.balance, error.requested) == (Decimal("100"), Decimal("100.01"))
    bank.handle(WithdrawMoney("acc-1", Decimal("100")))
    assert bank.get_account("acc-1").balance == 0


@pytest.mark.parametrize(
    "operation",
    [
        lambda bank: bank.handle(DepositMoney("acc-1", Decimal("1"))),
        lambda bank: bank.handle(WithdrawMoney("acc-1", Decimal("1"))),
        lambda bank: bank.handle(SuspendAccount("acc-1", "again")),
        lambda bank: bank.handle(CloseAccount("acc-1")),
    ],
)
def test_nothing_moves_on_a_suspended_account(
    bank: BankingCommandHandlers, store: InMemoryEventStore, operation
) -> None:
    bank.handle(SuspendAccount("acc-1", "fraud check"))
    refused(store, errors.AccountSuspended, lambda: operation(bank), "SUSPENDED")
    bank.handle(ReactivateAccount("acc-1"))
    bank.handle(DepositMoney("acc-1", Decimal("1")))


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        (lambda bank: bank.handle(DepositMoney("acc-1", Decimal("1"))), errors.AccountClosed),
        (lambda bank: bank.handle(WithdrawMoney("acc-1", Decimal("1"))), errors.AccountClosed),
        (lambda bank: bank.handle(SuspendAccount("acc-1", "x")), errors.AccountClosed),
        (lambda bank: bank.handle(ReactivateAccount("acc-1")), errors.AccountNotSuspended),
        (lambda bank: bank.handle(CloseAccount("acc-1")), errors.AccountClosed),
        (
            lambda bank: bank.handle(OpenAccount("acc-1", "Mallory", Decimal("5"))),
            errors.AccountAlreadyOpen,
        ),
    ],
)
def test_nothing_happens_on_a_closed_account(
    bank: BankingCommandHandlers, store: InMemoryEventStore, operation, error
) -> None:
    bank.handle(WithdrawMoney("acc-1", Decimal("100")))
    bank.handle(CloseAccount("acc-1"))
    refused(store, error, lambda: operation(bank))
    assert bank.get_account("acc-1").status is AccountStatus.CLOSED


def test_no_closing_with_money_left(bank: BankingCommandHandlers, store: InMemoryEventStore) -> None:
    error = refused(store, errors.NonZeroBalanceOnClose, lambda: bank.handle(CloseAccount("acc-1")))
    assert error.balance == Decimal("100")


def test_reactivating_an_active_account_is_refused(
    bank: BankingCommandHandlers, store: InMemoryEventStore
) -> None:
    refused(store, errors.AccountNotSuspended, lambda: bank.handle(ReactivateAccount("acc-1")))


def test_opening_twice_is_refused_and_does_not_reset_the_balance(
    bank: BankingCommandHandlers, store: InMemoryEventStore
) -> None:
    refused(
        store,
        errors.AccountAlreadyOpen,
        lambda: bank.handle(OpenAccount("acc-1", "Alice", Decimal("1000000"))),
    )
    assert bank.get_account("acc-1").balance == Decimal("100")
    account = bank.get_account("acc-1")
    with pytest.raises(errors.AccountAlreadyOpen):
        account.open(OpenAccount("acc-1", "Alice", Decimal("1")))


@pytest.mark.parametrize(
    "operation",
    [
        lambda bank: bank.handle(DepositMoney("ghost", Decimal("1"))),
        lambda bank: bank.handle(WithdrawMoney("ghost", Decimal("1"))),
        lambda bank: bank.handle(SuspendAccount("ghost", "x")),
        lambda bank: bank.handle(ReactivateAccount("ghost")),
        lambda bank: bank.handle(CloseAccount("ghost")),
        lambda bank: bank.get_account("ghost"),
    ],
)
def test_nothing_happens_on_an_account_never_opened(
    bank: BankingCommandHandlers, store: InMemoryEventStore, operation
) -> None:
    refused(store, errors.AccountNotOpen, lambda: operation(bank), "ghost")


def test_an_unopened_account_object_refuses_money() -> None:
    with pytest.raises(errors.AccountNotOpen):
        Account().deposit(DepositMoney("acc-9", Decimal("1")))
    assert Account().status is None


@pytest.mark.parametrize(
    "amount",
    [
        1.5,
        1,
        True,
        "10",
        None,
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("0"),
        Decimal("-0"),
        Decimal("-5"),
        Decimal("0.001"),
        Decimal("1.005"),
        Decimal("1E+999999"),
        Decimal("1000000000000"),
    ],
)
def test_bad_amounts_are_refused_everywhere(
    bank: BankingCommandHandlers, store: InMemoryEventStore, amount: object
) -> None:
    refused(store, errors.InvalidAmount, lambda: bank.handle(DepositMoney("acc-1", amount)))  # type: ignore[arg-type]
    refused(store, errors.InvalidAmount, lambda: bank.handle(WithdrawMoney("acc-1", amount)))  # type: ignore[arg-type]


@given(amount=invalid_amounts())
def test_generated_bad_amounts_are_refused(amount: object) -> None:
    account = Account()
    account.open(OpenAccount("acc-1", "Alice", Decimal("10")))
    with pytest.raises(errors.InvalidAmount):
        account.deposit(DepositMoney("acc-1", amount))  # type: ignore[arg-type]
    assert len(account.pending_events) == 1


@given(amount=money())
def test_generated_good_amounts_are_accepted_exactly(amount: Decimal) -> None:
    account = Account()
    account.open(OpenAccount("acc-1", "Alice", Decimal("0")))
    account.deposit(DepositMoney("acc-1", amount))
    assert account.balance == amount


def test_an_opening_balance_may_be_zero_but_not_negative(store: InMemoryEventStore) -> None:
    bank = BankingCommandHandlers(AggregateRepository(event_store=store))
    bank.handle(OpenAccount("zero", "Zoe", Decimal("0")))
    assert bank.get_account("zero").transactions == []
    for bad in (Decimal("-1"), Decimal("Infinity"), 0.0, Decimal("0.001")):
        refused(
            store, errors.InvalidAmount, lambda bad=bad: bank.handle(OpenAccount("neg", "Ned", bad))
        )
    refused(
        store, errors.InvalidOwnerName, lambda: bank.handle(OpenAccount("anon", "  ", Decimal("1")))
    )


def test_a_repeated_idempotency_key_returns_the_original_outcome(
    bank: BankingCommandHandlers, store: InMemoryEventStore
) -> None:
    command = WithdrawMoney("acc-1", Decimal("30"), "rent", idempotency_key="rent-2026-11")
    first = bank.handle(command)
    position = store.last_position()
    again = bank.handle(command)
    assert again == first
    assert store.last_position() == position
    assert bank.get_account("acc-1").balance == Decimal("70")
    refused(
        store,
        errors.IdempotencyKeyReused,
        lambda: bank.handle(WithdrawMoney("acc-1", Decimal("31"), idempotency_key="rent-2026-11")),
    )
    refused(
        store,
        errors.IdempotencyKeyReused,
        lambda: bank.handle(DepositMoney("acc-1", Decimal("30"), idempotency_key="rent-2026-11")),
    )


def test_a_transfer_debit_blocks_closing_until_it_is_settled_or_reversed(
    bank: BankingCommandHandlers, store: InMemoryEventStore
) -> None:
    bank.handle(
        WithdrawMoney("acc-1", Decimal("100"), transfer_id="t-1", idempotency_key="t-1:debit")
    )
    error = refused(
        store, errors.AccountHasTransfersInFlight, lambda: bank.handle(CloseAccount("acc-1"))
    )
    assert error.transfer_ids == ("t-1",)
    repo = bank.repository
    repo.update(Account, "acc-1", lambda a: a.settle_transfer("t-1"))
    bank.handle(CloseAccount("acc-1"))


def test_a_reversal_lands_on_a_suspended_source_but_ordinary_deposits_do_not(
    bank: BankingCommandHandlers, store: InMemoryEventStore
) -> None:
    bank.handle(WithdrawMoney("acc-1", Decimal("40"), transfer_id="t-1", idempotency_key="t-1:debit"))
    bank.handle(WithdrawMoney("acc-1", Decimal("10"), transfer_id="t-3", idempotency_key="t-3:debit"))
    bank.handle(SuspendAccount("acc-1", "review"))
    refused(
        store,
        errors.AccountSuspended,
        lambda: bank.handle(
            DepositMoney("acc-1", Decimal("40"), transfer_id="t-2", idempotency_key="t-2:reverse")
        ),
    )
    # Not the amount t-3 took, so not a reversal of it: an ordinary deposit, refused while suspended.
    refused(
        store,
        errors.AccountSuspended,
        lambda: bank.handle(
            DepositMoney("acc-1", Decimal("9"), transfer_id="t-3", idempotency_key="t-3:reverse")
        ),
    )
    bank.handle(DepositMoney("acc-1", Decimal("40"), transfer_id="t-1", idempotency_key="t-1:reverse"))
    account = bank.get_account("acc-1")
    assert account.balance == Decimal("90")
    assert account.transfers_in_flight == {"t-3": Decimal("10")}
    assert [t.transfer_id for t in account.transactions[-2:]] == ["t-3", "t-1"]
