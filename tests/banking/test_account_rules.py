"""Every Account rule: refused with its own exception, and nothing stored."""

from decimal import Decimal

import pytest
from hypothesis import given

from bases.orchestrix.banking_demo import errors, models
from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    AccountStatus,
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SettleTransfer,
    SuspendAccount,
    TransactionKind,
    WithdrawMoney,
    banking_serializer,
)
from orchestrix.core.eventsourcing import KeyRefused
from orchestrix.testing import AggregateScenario, invalid_amounts, like, money

D = Decimal


def account(*history: object, account_id: str = "acc-1") -> AggregateScenario[Account]:
    """Given: the account opened by Alice with 100, then ``history`` (commands)."""
    return new_account(account_id).given_commands(OpenAccount(account_id, "Alice", D("100")), *history)


def new_account(account_id: str) -> AggregateScenario[Account]:
    """Given: nothing stored for this account."""
    return AggregateScenario(
        Account, account_id, handlers=BankingCommandHandlers, serializer=banking_serializer()
    )


def test_open_deposit_withdraw_keep_an_exact_balance_and_audit_trail() -> None:
    scenario = account(DepositMoney("acc-1", D("0.10"), "ten cents"))
    scenario.when(DepositMoney("acc-1", D("0.20"), "twenty cents")).then(
        like(models.MoneyDeposited, amount=D("0.20"), balance_after=D("100.30"), description="twenty cents")
    )
    scenario.when(WithdrawMoney("acc-1", D("0.30"), "thirty cents")).then(
        like(models.MoneyWithdrawn, amount=D("0.30"), balance_after=D("100.00"))
    )
    stored = scenario.aggregate
    assert (stored.balance, stored.status) == (D("100"), AccountStatus.ACTIVE)
    assert [(t.kind, t.amount, t.balance_after) for t in stored.transactions] == [
        (TransactionKind.OPENING, D("100"), D("100")),
        (TransactionKind.DEPOSIT, D("0.10"), D("100.10")),
        (TransactionKind.DEPOSIT, D("0.20"), D("100.30")),
        (TransactionKind.WITHDRAWAL, D("0.30"), D("100.00")),
    ]
    assert stored.transactions[1].description == "ten cents"
    assert all(t.occurred_at.tzinfo is not None for t in stored.transactions)
    assert len({t.transaction_id for t in stored.transactions}) == 4


def test_no_overdraft() -> None:
    scenario = account().when(WithdrawMoney("acc-1", D("100.01"))).then_error(errors.InsufficientFunds)
    assert (scenario.error.balance, scenario.error.requested) == (D("100"), D("100.01"))
    scenario.when(WithdrawMoney("acc-1", D("100"))).then(like(models.MoneyWithdrawn, balance_after=D("0")))


@pytest.mark.parametrize(
    "command",
    [
        DepositMoney("acc-1", D("1")),
        WithdrawMoney("acc-1", D("1")),
        SuspendAccount("acc-1", "again"),
        CloseAccount("acc-1"),
    ],
)
def test_nothing_moves_on_a_suspended_account(command: object) -> None:
    scenario = account(SuspendAccount("acc-1", "fraud check"))
    scenario.when(command).then_error(errors.AccountSuspended, "SUSPENDED")
    scenario.when(ReactivateAccount("acc-1")).then(models.AccountReactivated)
    scenario.when(DepositMoney("acc-1", D("1"))).then(models.MoneyDeposited)


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (DepositMoney("acc-1", D("1")), errors.AccountClosed),
        (WithdrawMoney("acc-1", D("1")), errors.AccountClosed),
        (SuspendAccount("acc-1", "x"), errors.AccountClosed),
        (ReactivateAccount("acc-1"), errors.AccountNotSuspended),
        (CloseAccount("acc-1"), errors.AccountClosed),
        (OpenAccount("acc-1", "Mallory", D("5")), errors.AccountAlreadyOpen),
    ],
)
def test_nothing_happens_on_a_closed_account(command: object, error: type[Exception]) -> None:
    scenario = account(WithdrawMoney("acc-1", D("100")), CloseAccount("acc-1"))
    scenario.when(command).then_error(error)
    assert scenario.aggregate.status is AccountStatus.CLOSED


def test_no_closing_with_money_left() -> None:
    scenario = account().when(CloseAccount("acc-1")).then_error(errors.NonZeroBalanceOnClose)
    assert scenario.error.balance == D("100")


def test_reactivating_an_active_account_is_refused() -> None:
    account().when(ReactivateAccount("acc-1")).then_error(errors.AccountNotSuspended)


def test_opening_twice_is_refused_and_does_not_reset_the_balance() -> None:
    scenario = account().when(OpenAccount("acc-1", "Alice", D("1000000")))
    scenario.then_error(errors.AccountAlreadyOpen)
    assert scenario.aggregate.balance == D("100")
    scenario.when(lambda loaded: loaded.open(OpenAccount("acc-1", "Alice", D("1")))).then_error(
        errors.AccountAlreadyOpen
    )


@pytest.mark.parametrize(
    "command",
    [
        DepositMoney("ghost", D("1")),
        WithdrawMoney("ghost", D("1")),
        SuspendAccount("ghost", "x"),
        ReactivateAccount("ghost"),
        CloseAccount("ghost"),
        SettleTransfer("ghost", "t-1"),
    ],
)
def test_nothing_happens_on_an_account_never_opened(command: object) -> None:
    new_account("ghost").when(command).then_error(errors.AccountNotOpen, "ghost")


def test_an_account_never_opened_is_not_found() -> None:
    with pytest.raises(errors.AccountNotOpen, match="ghost"):
        new_account("ghost").handlers.get_account("ghost")


def test_an_unopened_account_object_refuses_money() -> None:
    new_account("acc-9").when(lambda blank: blank.deposit(DepositMoney("acc-9", D("1")))).then_error(
        errors.AccountNotOpen
    )
    assert Account().status is None


@pytest.mark.parametrize(
    "amount",
    [
        1.5,
        1,
        True,
        "10",
        None,
        D("NaN"),
        D("sNaN"),
        D("Infinity"),
        D("-Infinity"),
        D("0"),
        D("-0"),
        D("-5"),
        D("0.001"),
        D("1.005"),
        D("1E+999999"),
        D("1000000000000"),
    ],
)
def test_bad_amounts_are_refused_everywhere(amount: object) -> None:
    scenario = account()
    scenario.when(DepositMoney("acc-1", amount)).then_error(errors.InvalidAmount)  # type: ignore[arg-type]
    scenario.when(WithdrawMoney("acc-1", amount)).then_error(errors.InvalidAmount)  # type: ignore[arg-type]


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


def test_an_opening_balance_may_be_zero() -> None:
    scenario = new_account("zero").when(OpenAccount("zero", "Zoe", D("0")))
    scenario.then(like(models.AccountOpened, account_id="zero", owner_name="Zoe", initial_balance=D("0")))
    assert scenario.aggregate.transactions == []


@pytest.mark.parametrize("balance", [D("-1"), D("Infinity"), 0.0, D("0.001")])
def test_an_opening_balance_may_not_be_negative_or_inexact(balance: object) -> None:
    new_account("neg").when(OpenAccount("neg", "Ned", balance)).then_error(errors.InvalidAmount)  # type: ignore[arg-type]


def test_an_owner_needs_a_name() -> None:
    new_account("anon").when(OpenAccount("anon", "  ", D("1"))).then_error(errors.InvalidOwnerName)


def test_a_repeated_idempotency_key_returns_the_original_outcome() -> None:
    rent = WithdrawMoney("acc-1", D("30"), "rent", idempotency_key="rent-2026-11")
    scenario = account().when(rent).then(like(models.MoneyWithdrawn, idempotency_key="rent-2026-11"))
    first = scenario.result
    assert scenario.when(rent).then().result == first  # nothing stored the second time
    assert scenario.aggregate.balance == D("70")
    scenario.when(WithdrawMoney("acc-1", D("31"), idempotency_key="rent-2026-11")).then_error(
        errors.IdempotencyKeyReused
    )
    scenario.when(DepositMoney("acc-1", D("30"), idempotency_key="rent-2026-11")).then_error(
        errors.IdempotencyKeyReused
    )


def test_a_transfer_debit_blocks_closing_until_it_is_settled_or_reversed() -> None:
    scenario = account(WithdrawMoney("acc-1", D("100"), transfer_id="t-1", idempotency_key="t-1:debit"))
    scenario.when(CloseAccount("acc-1")).then_error(errors.AccountHasTransfersInFlight)
    assert scenario.error.transfer_ids == ("t-1",)
    scenario.when(SettleTransfer("acc-1", "t-1")).then(like(models.TransferHoldReleased, transfer_id="t-1"))
    scenario.when(CloseAccount("acc-1")).then(models.AccountClosed)


def test_a_reversal_lands_on_a_suspended_source_but_ordinary_deposits_do_not() -> None:
    scenario = account(
        WithdrawMoney("acc-1", D("40"), transfer_id="t-1", idempotency_key="t-1:debit"),
        WithdrawMoney("acc-1", D("10"), transfer_id="t-3", idempotency_key="t-3:debit"),
        SuspendAccount("acc-1", "review"),
    )
    # No open debit of t-2 here: not a reversal. The refusal of its key is recorded, and only that.
    scenario.when(DepositMoney("acc-1", D("40"), transfer_id="t-2", idempotency_key="t-2:reverse"))
    scenario.then_error(errors.AccountSuspended, stored=[like(KeyRefused, key="t-2:reverse")])
    # Not the amount t-3 took, so not a reversal of it: an ordinary deposit, refused while suspended.
    scenario.when(DepositMoney("acc-1", D("9"), transfer_id="t-3", idempotency_key="t-3:reverse"))
    scenario.then_error(errors.AccountSuspended, stored=[like(KeyRefused, key="t-3:reverse")])
    scenario.when(DepositMoney("acc-1", D("40"), transfer_id="t-1", idempotency_key="t-1:reverse"))
    scenario.then(like(models.MoneyDeposited, amount=D("40"), balance_after=D("90"), transfer_id="t-1"))
    stored = scenario.aggregate
    assert stored.transfers_in_flight == {"t-3": D("10")}
    assert [t.transfer_id for t in stored.transactions[-2:]] == ["t-3", "t-1"]
