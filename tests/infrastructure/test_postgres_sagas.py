"""Sagas on PostgreSQL: the banking state machine, partition leases, and leased runner processes.

Sizes: the state machine runs ORCHESTRIX_PG_BANK_EXAMPLES examples (default 8) of 25 steps;
HYPOTHESIS_PROFILE=long raises it to the profile's count.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.infrastructure.pg_support import (
    drop_schema,
    dsn_or_skip,
    new_schema_name,
    sql_execute,
    throwaway_schema,
)

DSN = dsn_or_skip()

from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers  # noqa: E402
from bases.orchestrix.banking_demo.models import (  # noqa: E402
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    TransferMoney,
    TransferStatus,
    banking_serializer,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRepository  # noqa: E402
from orchestrix.core.execution.checkpoint import CheckpointStore  # noqa: E402
from orchestrix.core.execution.runner import partition_of  # noqa: E402
from orchestrix.infrastructure.postgres import (  # noqa: E402
    LeaseTimeoutError,
    PartitionLease,
    PostgresEventStore,
)
from tests.banking.stateful import banking_machine  # noqa: E402
from tests.infrastructure import pg_workers  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")
EXAMPLES = int(os.environ.get("ORCHESTRIX_PG_BANK_EXAMPLES", "8"))


class PostgresBackend:
    """One example's schema; a crash closes every store object, the rows stay."""

    def __init__(self) -> None:
        self.schema = new_schema_name("bank")
        self.stores: list[PostgresEventStore] = []

    def open(self) -> tuple[PostgresEventStore, CheckpointStore]:
        store = PostgresEventStore(DSN, banking_serializer(), schema=self.schema, pool_size=4)
        self.stores.append(store)
        return store, store.checkpoints()

    def crash(self) -> None:
        stores, self.stores = self.stores, []
        for store in stores:
            store.close()

    def close(self) -> None:
        self.crash()
        drop_schema(DSN, self.schema)


TestPostgresBank = banking_machine(
    PostgresBackend, examples=EXAMPLES, steps=25, name="PostgresBankingMachine"
).TestCase


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN, "saga") as name:
        yield name


def test_a_partition_lease_is_exclusive_and_freed_when_its_connection_dies(schema: str) -> None:
    PostgresEventStore(DSN, banking_serializer(), schema=schema).close()  # creates the fences table
    first = PartitionLease(DSN, schema=schema, group="g", count=2)
    second = PartitionLease(DSN, schema=schema, group="g", count=2)
    standby = PartitionLease(DSN, schema=schema, group="g", count=2)
    try:
        assert first.claim(timeout=5) == 0
        assert second.claim(timeout=5) == 1
        assert standby.try_claim() is None
        with pytest.raises(LeaseTimeoutError):
            standby.claim(timeout=0.2, poll=0.05)
        assert first.holds() and second.holds()

        sql_execute(DSN, "SELECT pg_terminate_backend(%s)", (first._conn.info.backend_pid,))  # type: ignore[union-attr]
        assert first.holds() is False and first.index is None
        assert standby.claim(timeout=5) == 0
        assert first.try_claim() is None  # the partition has a new owner now
    finally:
        for lease in (first, second, standby):
            lease.release()


def test_leased_runner_processes_share_the_sagas_and_each_saga_runs_in_one_process(schema: str) -> None:
    """Four processes, three partitions: three claim one each, one waits; every transfer ends once."""
    store = PostgresEventStore(DSN, banking_serializer(), schema=schema)
    bank = BankingCommandHandlers(AggregateRepository(store))
    accounts = [f"acc-{i}" for i in range(4)]
    for account in accounts:
        bank.handle(OpenAccount(account, account, Decimal("1000")))
    sql_execute(DSN, f'CREATE TABLE "{schema}".handled (transfer_id text, pid int, partition int)')

    stop = SPAWN.Event()
    runners = [
        SPAWN.Process(target=pg_workers.run_leased_runner, args=(DSN, schema, 3, stop)) for _ in range(4)
    ]
    for runner in runners:
        runner.start()
    rng = random.Random(5)
    transfers = []
    try:
        for n in range(40):
            source = rng.choice(accounts)
            target = rng.choice([a for a in [*accounts, "ghost"] if a != source])
            transfer_id = f"tr-{n}"
            command = TransferMoney(transfer_id, source, target, Decimal(rng.randint(1, 400)), "rent")
            bank.handle(command)
            transfers.append(transfer_id)
        deadline = time.monotonic() + 120
        while not all(_finished(bank, t) for t in transfers):
            assert time.monotonic() < deadline, "transfers did not finish"
            assert all(r.exitcode in (None, 0) for r in runners), "a runner process failed"
            time.sleep(0.1)
    finally:
        stop.set()
        for runner in runners:
            runner.join(timeout=60)
    assert [r.exitcode for r in runners] == [0, 0, 0, 0]

    balances = [bank.get_account(a).balance for a in accounts]
    assert sum(balances) == Decimal("4000") and min(balances) >= 0
    keys = Counter(
        r.event.idempotency_key
        for r in store.read_all()
        if isinstance(r.event, MoneyDeposited | MoneyWithdrawn) and r.event.idempotency_key
    )
    assert keys and max(keys.values()) == 1
    handled = sql_execute(DSN, f'SELECT transfer_id, pid, partition FROM "{schema}".handled')
    owners: dict[str, set[tuple[int, int]]] = {}
    for transfer_id, pid, partition in handled:
        owners.setdefault(transfer_id, set()).add((pid, partition))
    assert set(owners) == set(transfers)
    for transfer_id, owner in owners.items():
        assert len(owner) == 1, (transfer_id, owner)
        assert next(iter(owner))[1] == partition_of(transfer_id, 3)
    assert len({pid for pid, _ in set().union(*owners.values())}) == 3  # the standby never ran
    checkpoints = store.checkpoints()
    assert all(checkpoints.load(f"sagas[{i}/3]") > 0 for i in range(3))
    store.close()


def _finished(bank: BankingCommandHandlers, transfer_id: str) -> bool:
    return bank.get_transfer(transfer_id).status in (TransferStatus.COMPLETED, TransferStatus.FAILED)
