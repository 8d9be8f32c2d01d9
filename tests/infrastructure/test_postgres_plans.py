"""The read statements are walks of an index, whatever the planner knows about the table.

A page of ``read_all`` must cost its own rows, not the rest of the store: with both bounds of
the position range in one WHERE, the planner, lacking statistics (a table just filled, before
autovacuum analyzed it), fetched every row past ``after`` and sorted them for each page. And
``events_after`` was planned as a sequential scan of the table from a mid-store position.
Each statement is explained (with the values a reader sends) on a table without statistics
and again once analyzed; its plan may hold no sequential scan, no bitmap scan and no sort.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema

DSN = dsn_or_skip()

import psycopg  # noqa: E402

from orchestrix.core.messaging.messages import Event  # noqa: E402
from orchestrix.core.messaging.serializer import Serializer  # noqa: E402
from orchestrix.infrastructure.postgres import PostgresEventStore  # noqa: E402
from orchestrix.infrastructure.postgres._statements import Statements  # noqa: E402

BATCHES = 20
BATCH = 1000  # 20,000 events in 20 transactions: on a smaller table a scan and sort is cheap


@attrs.frozen
class Noted(Event):
    text: str


@pytest.fixture(scope="module", params=[False, True], ids=["no-statistics", "analyzed"])
def filled(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[int]]]:
    """A store of BATCHES x BATCH events, one stream per batch, and their positions."""
    with throwaway_schema(DSN, "plans") as schema:
        store = PostgresEventStore(DSN, Serializer([Noted]), schema=schema)
        try:
            with psycopg.connect(DSN, autocommit=True) as conn:
                # Autovacuum must not analyze the table behind the test's back.
                conn.execute(f'ALTER TABLE "{schema}".events SET (autovacuum_enabled = false)')
                positions: list[int] = []
                for b in range(BATCHES):
                    result = store.append(f"Note-{b}", [Noted("x" * 100) for _ in range(BATCH)])
                    positions.extend(result.positions)
                if request.param:
                    conn.execute(f'ANALYZE "{schema}".events')
        finally:
            store.close()
        yield schema, positions


def _params(name: str, positions: list[int], where: str) -> tuple[Any, ...]:
    after = {"start": 0, "middle": positions[len(positions) // 2], "end": positions[-1]}[where]
    if name == "events_after":
        return (after,)
    return (after, 1000)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("name", ["read_all", "read_all_horizon", "events_after"])
def test_read_statements_walk_an_index(filled: tuple[str, list[int]], name: str, where: str) -> None:
    schema, positions = filled
    statement = getattr(Statements(schema), name)
    with psycopg.connect(DSN, autocommit=True) as conn:
        explained = conn.execute(
            "EXPLAIN (FORMAT JSON) " + statement, _params(name, positions, where)
        ).fetchone()
    assert explained is not None
    plan = explained[0] if isinstance(explained[0], list) else json.loads(explained[0])
    kinds = [node["Node Type"] for node in _nodes(plan[0]["Plan"])]
    assert not {"Seq Scan", "Bitmap Heap Scan", "Sort", "Incremental Sort"} & set(kinds), kinds
    assert {"Index Scan", "Index Only Scan"} & set(kinds), kinds
