"""Command handlers: lost updates are caught, retried, and the rules rechecked."""

import asyncio
import threading
from decimal import Decimal

import pytest

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import AccountNotOpen, InsufficientFunds
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    WithdrawMoney,
    banking_serializer,
)
from orchestrix.core.errors import ConcurrencyError, UnknownCommandError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.infrastructure.memory.store import InMemoryEventStore


@pytest.fixture
def repo() -> AggregateRepository:
    return AggregateRepository(event_store=InMemoryEventStore(serializer=banking_serializer()))


def test_two_withdrawals_from_one_load_cannot_both_land(repo: AggregateRepository) -> None:
    bank = BankingCommandHandlers(repo)
    bank.handle(OpenAccount("acc-1", "Alice", Decimal("100")))
    first, second = repo.load(Account, "acc-1"), repo.load(Account, "acc-1")
    first.withdraw(WithdrawMoney("acc-1", Decimal("80")))
    second.withdraw(WithdrawMoney("acc-1", Decimal("80")))
    repo.save(first)
    with pytest.raises(ConcurrencyError):
        repo.save(second)
    # The handler reloads on conflict, so the second withdrawal meets the real balance.
    with pytest.raises(InsufficientFunds):
        bank.handle(WithdrawMoney("acc-1", Decimal("80")))
    assert repo.load(Account, "acc-1").balance == Decimal("20")


def test_racing_threads_never_overdraw(repo: AggregateRepository) -> None:
    bank = BankingCommandHandlers(repo, attempts=50)
    bank.handle(OpenAccount("acc-1", "Alice", Decimal("100")))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def withdraw() -> None:
        barrier.wait()
        try:
            bank.handle(WithdrawMoney("acc-1", Decimal("30")))
            outcomes.append("ok")
        except InsufficientFunds:
            outcomes.append("refused")

    threads = [threading.Thread(target=withdraw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    assert repo.load(Account, "acc-1").balance == Decimal("10")


def test_handle_dispatches_every_command(repo: AggregateRepository) -> None:
    bank = BankingCommandHandlers(repo)
    bank.handle(OpenAccount("acc-1", "Alice", Decimal("10")))
    bank.handle(DepositMoney("acc-1", Decimal("5")))
    bank.handle(WithdrawMoney("acc-1", Decimal("15")))
    bank.handle(SuspendAccount("acc-1", "x"))
    bank.handle(ReactivateAccount("acc-1"))
    bank.handle(CloseAccount("acc-1"))
    assert str(bank.get_account("acc-1").status) == "CLOSED"


@pytest.mark.parametrize("command", ["withdraw everything", object(), None, Account()])
def test_anything_but_a_banking_command_is_refused_naming_its_type(
    repo: AggregateRepository, command: object
) -> None:
    bank = BankingCommandHandlers(repo)
    name = type(command).__name__
    with pytest.raises(UnknownCommandError, match=f"no handler for command {name} ") as sync:
        bank.handle(command)
    with pytest.raises(UnknownCommandError, match=f"no handler for command {name} ") as in_loop:
        asyncio.run(bank.handle_async(command))
    assert sync.value.command_type is in_loop.value.command_type is type(command)
    assert repo.event_store.last_position() == 0


def test_the_handlers_run_the_same_under_asyncio(repo: AggregateRepository) -> None:
    bank = BankingCommandHandlers(repo)

    async def scenario() -> Decimal:
        await bank.open_account(OpenAccount("acc-1", "Alice", Decimal("10")))
        await asyncio.gather(*(bank.deposit_money(DepositMoney("acc-1", Decimal("1"))) for _ in range(5)))
        await bank.handle_async(WithdrawMoney("acc-1", Decimal("3")))
        await bank.suspend_account(SuspendAccount("acc-1", "x"))
        await bank.handle_async(ReactivateAccount("acc-1"))
        with pytest.raises(AccountNotOpen):
            await bank.deposit_money(DepositMoney("ghost", Decimal("1")))
        with pytest.raises(AccountNotOpen):
            await bank.handle_async(DepositMoney("ghost", Decimal("1")))
        return (await repo.load_async(Account, "acc-1")).balance

    assert asyncio.run(scenario()) == Decimal("12")


def test_a_handler_sent_from_sync_code_needs_no_event_loop_and_no_thread(
    repo: AggregateRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = BankingCommandHandlers(repo)

    def no_loop(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sync entry point started an event loop or a thread")

    monkeypatch.setattr(asyncio, "run", no_loop)
    monkeypatch.setattr(asyncio, "new_event_loop", no_loop)
    monkeypatch.setattr(asyncio, "to_thread", no_loop)
    monkeypatch.setattr(threading.Thread, "start", no_loop)
    bank.handle(OpenAccount("acc-1", "Alice", Decimal("10")))
    transaction = bank.handle(DepositMoney("acc-1", Decimal("5")))
    assert transaction.balance_after == Decimal("15")
