"""Snapshots on PostgreSQL: the contract, and the schema migration that adds their table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infrastructure.pg_support import dsn_or_skip, sql_execute, throwaway_schema

DSN = dsn_or_skip()

from orchestrix.core.errors import StoreFormatError  # noqa: E402
from orchestrix.core.eventsourcing.aggregate import AggregateRepository  # noqa: E402
from orchestrix.infrastructure.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresEventStore,
    PostgresSnapshotStore,
)
from orchestrix.testing import (  # noqa: E402
    ContractEvent,
    ContractTally,
    SnapshotStoreContract,
    SnapshotStores,
    snapshot_contract_serializer,
)
from orchestrix.testing.snapshot_contract import _snap  # noqa: E402


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN, "snap") as name:
        yield name


def _open(schema: str) -> PostgresEventStore:
    return PostgresEventStore(DSN, snapshot_contract_serializer(), schema=schema, pool_size=4)


class TestPostgresSnapshotStore(SnapshotStoreContract):
    """The snapshot store an event store hands out: same connections, same serializer."""

    @pytest.fixture
    def stores(self, schema: str) -> Iterator[SnapshotStores]:
        self.opened = [_open(schema)]
        yield self.opened[0], self.opened[0].snapshots()
        for store in self.opened:
            store.close()

    def reopen(self, stores: SnapshotStores) -> SnapshotStores:
        assert isinstance(stores[0], PostgresEventStore)
        stores[0].close()
        again = _open(stores[0].schema)
        self.opened.append(again)
        return again, again.snapshots()


class TestStandalonePostgresSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    def stores(self, schema: str) -> Iterator[SnapshotStores]:
        events = _open(schema)
        self.closing: list[PostgresSnapshotStore | PostgresEventStore] = [events]
        snapshots = PostgresSnapshotStore(DSN, snapshot_contract_serializer(), schema=schema, pool_size=2)
        self.closing.append(snapshots)
        yield events, snapshots
        for store in self.closing:
            store.close()

    def reopen(self, stores: SnapshotStores) -> SnapshotStores:
        assert isinstance(stores[0], PostgresEventStore) and isinstance(stores[1], PostgresSnapshotStore)
        stores[0].close()
        stores[1].close()
        events = _open(stores[0].schema)
        snapshots = PostgresSnapshotStore(
            DSN, snapshot_contract_serializer(), schema=stores[0].schema, pool_size=2
        )
        self.closing += [events, snapshots]
        return events, snapshots


def test_a_store_of_the_previous_schema_version_is_migrated_and_keeps_its_events(schema: str) -> None:
    with _open(schema) as store:
        repo = AggregateRepository(store)
        tally = ContractTally("t")
        for n in range(5):
            tally.add(n)
        repo.save(tally)
    # Back to the layout of schema version 2, as an older orchestrix left it.
    sql_execute(DSN, f'DROP TABLE "{schema}".snapshots')
    sql_execute(DSN, f'UPDATE "{schema}".schema_version SET version = 2')
    with _open(schema) as store:
        assert sql_execute(DSN, f'SELECT version FROM "{schema}".schema_version') == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 4
        repo = AggregateRepository(store, snapshots=store.snapshots())
        repo.update(ContractTally, "t", lambda t: t.add(5))
        assert store.snapshots().load("ContractTally-t") is not None
        assert [r.event for r in store.read_stream("ContractTally-t")][-1] == ContractEvent(5)
        assert repo.load(ContractTally, "t").count == 6


def test_a_snapshots_table_of_another_layout_is_refused(schema: str) -> None:
    _open(schema).close()
    sql_execute(DSN, f'ALTER TABLE "{schema}".snapshots ALTER COLUMN state TYPE bytea USING state::bytea')
    with pytest.raises(StoreFormatError, match="table snapshots: column state is bytea"):
        _open(schema)


def test_snapshots_live_in_their_own_table(schema: str) -> None:
    with _open(schema) as store:
        store.snapshots().save(_snap("s", 3))
        assert sql_execute(DSN, f'SELECT stream, version FROM "{schema}".snapshots') == [("s", 3)]
        assert sql_execute(DSN, f'SELECT count(*) FROM "{schema}".events') == [(0,)]
