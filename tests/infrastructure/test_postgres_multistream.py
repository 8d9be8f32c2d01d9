"""PostgreSQL multi-stream appends: how the statement is planned (the behaviour is the contract's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from orchestrix.core.eventsourcing.store import StreamAppend
from orchestrix.infrastructure.postgres import PostgresEventStore
from orchestrix.infrastructure.postgres._statements import SMALL_MULTI_APPEND
from orchestrix.testing import ContractEvent, contract_serializer
from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema

DSN = dsn_or_skip()


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    # one connection: every statement below is prepared on it, where pg_prepared_statements shows it
    with ConnectionPool(DSN, min_size=1, max_size=1, kwargs={"autocommit": True}, open=True) as pool:
        yield pool


def _plans(pool: ConnectionPool) -> list[tuple[int, int]]:
    """(generic plans, custom plans) of each multi-stream append statement prepared on the connection."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH req AS%'"
        ).fetchall()
    return [(int(g), int(c)) for g, c in rows]


def test_a_small_multi_stream_append_keeps_its_generic_plan(pool: ConnectionPool) -> None:
    # Planning it afresh for every call cost twice its execution (0.18 ms against 0.09 ms): with
    # array parameters, each custom plan (the arrays as constants) looked cheaper than the generic one.
    with throwaway_schema(DSN, "msplan") as schema:
        store = PostgresEventStore(pool, contract_serializer(), schema=schema)
        try:
            for k in range(20):
                store.append_many(
                    [
                        StreamAppend(f"from-{k}", [ContractEvent(k)]),
                        StreamAppend(f"to-{k}", [ContractEvent(k)]),
                    ]
                )
            (plans,) = _plans(pool)
            assert plans[0] >= 10, f"re-planned on every call: {plans[0]} generic, {plans[1]} custom plans"
            big = [StreamAppend(f"page-{k}", [ContractEvent(k), ContractEvent(k)]) for k in range(40)]
            assert sum(len(a.events) for a in big) > SMALL_MULTI_APPEND
            results = store.append_many(big)  # a page of a copy: the array form, planned for its arrays
            assert [r.versions for r in results] == [(0, 1)] * len(big)
        finally:
            store.close()
