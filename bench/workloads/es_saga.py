"""The peer's TransferSaga: the same transfer (debit, credit, complete) as eventsourcing 9.5.6
process applications on its SQLite store, as its docs write them.

``Transfers`` records a transfer and follows ``Accounts``; ``Accounts`` follows ``Transfers``:
a new transfer debits its source, the recorded debit credits its destination, the recorded
credit completes the transfer (five events; orchestrix's transfer also settles the source's
hold, six). The peer's ``SingleThreadedRunner`` processes each event as soon as it is saved, in
the saving thread: one transfer runs to its end inside the call that starts it, so "in flight"
does not apply to it and the clients run one after another.
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal
from typing import Any

from workloads.common import clock, temp_dir

OPENING = Decimal("1000000")


def _model() -> tuple[type, type, type, type]:
    from eventsourcing.dispatch import singledispatchmethod
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.system import ProcessApplication

    class Account(Aggregate):
        @staticmethod
        def create_id(name: str) -> uuid.UUID:
            return uuid.uuid5(uuid.NAMESPACE_URL, f"/accounts/{name}")

        @event("Opened")
        def __init__(self, name: str, balance: Decimal) -> None:
            self.balance = balance

        @event("Debited")
        def debit(self, transfer_id: uuid.UUID, amount: Decimal) -> None:
            if amount > self.balance:
                raise ValueError("insufficient funds")
            self.balance -= amount

        @event("Credited")
        def credit(self, transfer_id: uuid.UUID, amount: Decimal) -> None:
            self.balance += amount

    class Transfer(Aggregate):
        @event("Initiated")
        def __init__(self, source: uuid.UUID, target: uuid.UUID, amount: Decimal) -> None:
            self.source, self.target, self.amount = source, target, amount
            self.status = "initiated"

        @event("Debited")
        def debited(self, target: uuid.UUID, amount: Decimal) -> None:
            self.status = "debited"

        @event("Completed")
        def completed(self) -> None:
            self.status = "completed"

    class Accounts(ProcessApplication[uuid.UUID]):
        def open(self, name: str, balance: Decimal) -> None:
            self.save(Account(name, balance))

        @singledispatchmethod
        def policy(self, domain_event: Any, processing_event: Any) -> None:
            """Other events: nothing to do."""

        @policy.register(Transfer.Initiated)
        def _(self, domain_event: Any, processing_event: Any) -> None:
            account = self.repository.get(domain_event.source)
            account.debit(domain_event.originator_id, domain_event.amount)
            processing_event.collect_events(account)

        @policy.register(Transfer.Debited)
        def _(self, domain_event: Any, processing_event: Any) -> None:
            account = self.repository.get(domain_event.target)
            account.credit(domain_event.originator_id, domain_event.amount)
            processing_event.collect_events(account)

    class Transfers(ProcessApplication[uuid.UUID]):
        def transfer(self, source: str, target: str, amount: Decimal) -> uuid.UUID:
            transfer = Transfer(Account.create_id(source), Account.create_id(target), amount)
            self.save(transfer)
            return transfer.id  # type: ignore[no-any-return]

        @singledispatchmethod
        def policy(self, domain_event: Any, processing_event: Any) -> None:
            """Other events: nothing to do."""

        @policy.register(Account.Debited)
        def _(self, domain_event: Any, processing_event: Any) -> None:
            transfer = self.repository.get(domain_event.transfer_id)
            transfer.debited(transfer.target, transfer.amount)
            processing_event.collect_events(transfer)

        @policy.register(Account.Credited)
        def _(self, domain_event: Any, processing_event: Any) -> None:
            transfer = self.repository.get(domain_event.transfer_id)
            transfer.completed()
            processing_event.collect_events(transfer)

    return Account, Transfer, Accounts, Transfers


def transfers(n: int = 1_000, accounts: int = 1_024, accounts_per_client: int = 32) -> dict[str, Any]:
    """Completed transfers per second through the peer's process applications on SQLite.

    The accounts and the order of the transfers are those of ``saga.transfers`` (rings of
    ``accounts_per_client`` accounts, moving 1.00 each time).
    """
    from eventsourcing.system import SingleThreadedRunner, System

    account_cls, _transfer, accounts_app, transfers_app = _model()
    names = [f"acc-{i:05d}" for i in range(accounts)]
    clients = accounts // accounts_per_client
    with temp_dir() as path:
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "TRANSFERS_SQLITE_DBNAME": os.path.join(path, "transfers.db"),
            "ACCOUNTS_SQLITE_DBNAME": os.path.join(path, "accounts.db"),
        }
        system = System(pipes=[[transfers_app, accounts_app, transfers_app]])
        runner = SingleThreadedRunner(system, env=env)
        runner.start()
        try:
            bank = runner.get(accounts_app)
            moves = runner.get(transfers_app)
            for name in names:
                bank.open(name, OPENING)
            done = []
            start = clock()
            for k in range(n):
                client, turn = k % clients, k // clients
                ring = names[client * accounts_per_client : (client + 1) * accounts_per_client]
                source, target = ring[turn % len(ring)], ring[(turn + 1) % len(ring)]
                done.append(moves.transfer(source, target, Decimal("1.00")))
            seconds = clock() - start
            completed = sum(moves.repository.get(t).status == "completed" for t in done)
            total = sum(bank.repository.get(account_cls.create_id(a)).balance for a in names)
        finally:
            runner.stop()
    assert completed == n, completed
    assert total == OPENING * len(names), total
    return {"value": n / seconds, "transfers": n, "seconds": seconds, "events_per_transfer": 5}
