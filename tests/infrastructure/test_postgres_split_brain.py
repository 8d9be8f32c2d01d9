"""The credit race on PostgreSQL with a real lease: its holder pauses inside a dispatch, its
connection is terminated (pg_terminate_backend), a standby takes over and fails the transfer;
the old holder wakes up and its late credit is fenced by the store. No money is created."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.infrastructure.pg_support import dsn_or_skip, sql_execute, throwaway_schema

DSN = dsn_or_skip()

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers  # noqa: E402
from bases.orchestrix.banking_demo.models import (  # noqa: E402
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    TransferMoney,
    TransferStatus,
    banking_serializer,
)
from bases.orchestrix.banking_demo.saga import TransferSaga  # noqa: E402
from orchestrix.core.errors import FencedError  # noqa: E402
from orchestrix.core.eventsourcing import AggregateRepository  # noqa: E402
from orchestrix.core.execution import SagaRunner  # noqa: E402
from orchestrix.infrastructure.postgres import PartitionLease, PostgresEventStore  # noqa: E402
from tests.banking.split_brain import Background, PausingDispatcher  # noqa: E402

D = Decimal


@pytest.fixture
def store() -> Iterator[PostgresEventStore]:
    with throwaway_schema(DSN, "split") as name:
        store = PostgresEventStore(DSN, banking_serializer(), schema=name, pool_size=4)
        try:
            yield store
        finally:
            store.close()


@pytest.mark.parametrize("stale_key", ["t-1:credit", "t-1:debit"])
def test_a_holder_paused_past_its_lease_cannot_take_a_second_branch(
    store: PostgresEventStore, stale_key: str
) -> None:
    bank = BankingCommandHandlers(AggregateRepository(store))
    bank.handle(OpenAccount("alice", "Alice", D("100" if stale_key == "t-1:credit" else "10")))
    bank.handle(OpenAccount("bob", "Bob", D("0")))
    bank.handle(TransferMoney("t-1", "alice", "bob", D("30"), "rent"))
    checkpoints = store.checkpoints()

    old_lease = PartitionLease(store, group="transfers", count=1)
    assert old_lease.claim(timeout=5) == 0
    dispatcher = PausingDispatcher(BankingCommandHandlers(AggregateRepository(store)), stale_key)
    old = SagaRunner(store, [TransferSaga], dispatcher, checkpoints, lease=old_lease)
    running = Background(old.run_until_idle)
    assert dispatcher.paused.wait(10)  # checked its lease, about to send; now it stops for a while

    # Its connection dies (a network cut, or the server gave up on it): the lock is gone.
    pid = old_lease._conn.info.backend_pid  # type: ignore[union-attr]
    sql_execute(DSN, "SELECT pg_terminate_backend(%s)", (pid,))
    if stale_key == "t-1:credit":
        bank.handle(SuspendAccount("bob", "review"))
    new_lease = PartitionLease(store, group="transfers", count=1)
    try:
        assert new_lease.claim(timeout=5) == 0
        SagaRunner(store, [TransferSaga], bank, checkpoints, lease=new_lease).run_until_idle()
        assert bank.get_transfer("t-1").status is TransferStatus.FAILED
        if stale_key == "t-1:credit":
            bank.handle(ReactivateAccount("bob"))
        else:
            from bases.orchestrix.banking_demo.models import DepositMoney

            bank.handle(DepositMoney("alice", D("50"), "salary"))
        before = (bank.get_account("alice").balance, bank.get_account("bob").balance)

        dispatcher.resume()  # the old holder wakes up and sends its command
        running.join()
        assert isinstance(running.error, FencedError)
        assert (bank.get_account("alice").balance, bank.get_account("bob").balance) == before
        assert bank.get_account("bob").balance == 0
        assert bank.get_account("alice").transfers_in_flight == {}
        assert bank.get_transfer("t-1").status is TransferStatus.FAILED
    finally:
        new_lease.release()
        old_lease.release()


def test_a_claim_waits_for_a_fenced_append_in_flight_and_fences_the_ones_after(
    store: PostgresEventStore,
) -> None:
    """The FOR SHARE join: an append under generation g either commits before the grant of g+1
    or is refused; a grant whose transaction is still open makes the append wait for it."""
    import threading

    import psycopg

    from orchestrix.core.eventsourcing.fencing import fenced

    fence = store.grant_fence("race")
    granting = psycopg.connect(DSN)
    try:
        granting.execute(  # the next grant, in a transaction that stays open for now
            f'UPDATE "{store.schema}".fences SET generation = generation + 1 WHERE name = %s', ("race",)
        )
        outcome: list[object] = []

        def append() -> None:
            with fenced(fence):
                try:
                    bank = BankingCommandHandlers(AggregateRepository(store))
                    outcome.append(bank.handle(OpenAccount("carol", "Carol", D("5"))))
                except FencedError as exc:
                    outcome.append(exc)

        writer = threading.Thread(target=append)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "the fenced append should wait for the open grant"
        granting.commit()
        writer.join(10)
        assert isinstance(outcome[0], FencedError)
        assert store.stream_version("Account-carol") == -1
    finally:
        granting.close()
