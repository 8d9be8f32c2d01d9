"""AggregateRepository.save_all: several aggregates saved as one unit, written once over _io."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.models import DepositMoney, OpenAccount, WithdrawMoney
from orchestrix.core.errors import InvalidArgumentError, MultiStreamConflictError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.infrastructure.memory.store import InMemoryEventStore


def _opened(repo: AggregateRepository, *ids: str) -> None:
    accounts = []
    for account_id in ids:
        account = Account()
        account.open(
            OpenAccount(account_id=account_id, owner_name=account_id, initial_balance=Decimal("100"))
        )
        accounts.append(account)
    repo.save_all(accounts)


def _move(repo: AggregateRepository, source: str, target: str, amount: str) -> tuple[Account, Account]:
    a, b = repo.load(Account, source), repo.load(Account, target)
    a.withdraw(WithdrawMoney(account_id=source, amount=Decimal(amount)))
    b.deposit(DepositMoney(account_id=target, amount=Decimal(amount)))
    return a, b


def test_save_all_stores_every_aggregate_in_one_append_at_consecutive_positions() -> None:
    store = InMemoryEventStore()
    repo = AggregateRepository(store)
    _opened(repo, "a", "b")
    a, b = _move(repo, "a", "b", "30")
    results = repo.save_all([a, b])
    assert [(r.stream, r.versions, r.positions) for r in results if r is not None] == [
        ("Account-a", (1,), (3,)),
        ("Account-b", (1,), (4,)),
    ]
    assert (a.pending_events, b.pending_events) == ((), ())
    assert repo.load(Account, "a").balance + repo.load(Account, "b").balance == Decimal("200")


def test_a_stale_aggregate_saves_none_of_them_and_the_error_names_it() -> None:
    store = InMemoryEventStore()
    repo = AggregateRepository(store)
    _opened(repo, "a", "b")
    a, b = _move(repo, "a", "b", "30")
    meanwhile = repo.load(Account, "b")
    meanwhile.deposit(DepositMoney(account_id="b", amount=Decimal("1")))
    repo.save(meanwhile)
    before = store.last_position()
    with pytest.raises(MultiStreamConflictError) as caught:
        repo.save_all([a, b])
    assert caught.value.streams == ("Account-b",)
    assert store.last_position() == before
    assert repo.load(Account, "a").balance == Decimal("100")
    assert a.pending_events, "nothing was saved, so the events stay pending"


def test_aggregates_without_pending_events_get_none_and_nothing_at_all_appends_nothing() -> None:
    store = InMemoryEventStore()
    repo = AggregateRepository(store)
    _opened(repo, "a", "b")
    a, b = _move(repo, "a", "b", "5")
    untouched = repo.load(Account, "a")
    assert repo.save_all([untouched]) == (None,)
    results = repo.save_all([a, untouched, b])
    assert results[1] is None and results[0] is not None and results[2] is not None
    assert store.last_position() == 4


def test_the_same_aggregate_twice_and_no_list_are_refused() -> None:
    repo = AggregateRepository(InMemoryEventStore())
    _opened(repo, "a")
    a = repo.load(Account, "a")
    a.deposit(DepositMoney(account_id="a", amount=Decimal("1")))
    with pytest.raises(InvalidArgumentError):
        repo.save_all([a, a])
    with pytest.raises(InvalidArgumentError):
        repo.save_all(a)  # type: ignore[arg-type]
    assert repo.load(Account, "a").balance == Decimal("100")


def test_the_async_form_runs_the_same_logic() -> None:
    store = InMemoryEventStore()
    repo = AggregateRepository(store)
    _opened(repo, "a", "b")
    a, b = _move(repo, "a", "b", "30")
    results = asyncio.run(repo.save_all_async([a, b]))
    assert [r.stream for r in results if r is not None] == ["Account-a", "Account-b"]
    assert repo.load(Account, "b").balance == Decimal("130")
