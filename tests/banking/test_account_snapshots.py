"""Accounts are snapshotted every 10 events: a load from a snapshot is the account replayed whole."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import IdempotencyKeyReused
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    DepositMoney,
    OpenAccount,
    SuspendAccount,
    WithdrawMoney,
    banking_serializer,
)
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.infrastructure.file import FileEventStore


def _state(account: Account) -> tuple[object, ...]:
    return (
        account.id,
        account.version,
        account.owner_name,
        account.balance,
        account.status,
        tuple(account.transactions),
        account.suspension_reason,
        dict(account.transfers_in_flight),
        dict(account._by_key),
    )


def test_an_account_loaded_from_its_snapshot_is_the_account_replayed(tmp_path: Path) -> None:
    with FileEventStore(tmp_path / "store", banking_serializer(), sync=False) as store:
        snapshots = store.snapshots()
        bank = BankingCommandHandlers(AggregateRepository(store, snapshots=snapshots))
        bank.handle(OpenAccount("acc-1", "Alice", Decimal("100")))
        bank.handle(OpenAccount("acc-2", "Bob", Decimal("0")))
        for i in range(12):
            bank.handle(DepositMoney("acc-1", Decimal("10.05"), f"d{i}", idempotency_key=f"k{i}"))
        bank.handle(WithdrawMoney("acc-1", Decimal("0.10"), "w"))
        bank.handle(WithdrawMoney("acc-1", Decimal("5"), "leg", transfer_id="t1", idempotency_key="t1:debit"))
        bank.handle(SuspendAccount("acc-1", "audit"))

        taken = snapshots.load(Account.stream_name("acc-1"))
        assert taken is not None and taken.version == 9  # the 10th event (versions count from 0)
        with_snapshot = AggregateRepository(store, snapshots=snapshots, cache_size=0).load(Account, "acc-1")
        replayed = AggregateRepository(store, cache_size=0).load(Account, "acc-1")
        assert _state(with_snapshot) == _state(replayed)
        assert with_snapshot.balance == Decimal("215.50")
        assert with_snapshot.transfers_in_flight == {"t1": Decimal("5")}

        # A keyed deposit from before the snapshot is still recognised after it.
        fresh = BankingCommandHandlers(AggregateRepository(store, snapshots=snapshots, cache_size=0))
        with pytest.raises(IdempotencyKeyReused):
            fresh.handle(DepositMoney("acc-1", Decimal("99"), "again", idempotency_key="k0"))
