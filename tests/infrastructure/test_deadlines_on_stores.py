"""Deadlines and dead letters on every store: durable across a restart of the process, fired once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrix.core.execution import SagaRunner, pending_deadlines
from orchestrix.core.execution.dead_letters import DeadLetters
from orchestrix.core.messaging import Serializer
from orchestrix.infrastructure.file import FileEventStore
from tests.core.deadline_support import EVENTS as HOLD_EVENTS
from tests.core.deadline_support import Clock, Desk, HoldSaga, request
from tests.core.test_retries import RetryingShipping, failing
from tests.core.test_saga_support import EVENTS as SHIPPING_EVENTS
from tests.core.test_saga_support import Reserve, Warehouse, place
from tests.infrastructure.pg_support import DSN_VARIABLE, SKIP_REASON, drop_schema, new_schema_name

TYPES = tuple(dict.fromkeys((*HOLD_EVENTS, *SHIPPING_EVENTS)))

Opener = Callable[[], tuple[Any, Any]]
"""Opens the store (and its checkpoints) as a new process would: nothing kept in memory."""


@pytest.fixture(params=["file", "postgres"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Any] = []
    if request.param == "file":

        def open_file() -> tuple[Any, Any]:
            store = FileEventStore(tmp_path / "store", Serializer(types=TYPES), sync=False)
            opened.append(store)
            return store, store.checkpoints()

        yield open_file
    else:
        dsn = os.environ.get(DSN_VARIABLE)
        if not dsn:
            if os.environ.get("ORCHESTRIX_REQUIRE_PG"):
                raise RuntimeError(f"ORCHESTRIX_REQUIRE_PG is set but {DSN_VARIABLE} is not")
            pytest.skip(SKIP_REASON)
        from orchestrix.infrastructure.postgres import PostgresEventStore

        schema = new_schema_name("deadline")

        def open_pg() -> tuple[Any, Any]:
            store = PostgresEventStore(dsn, Serializer(types=TYPES), schema=schema, pool_size=2)
            opened.append(store)
            return store, store.checkpoints()

        try:
            yield open_pg
        finally:
            for store in opened:
                store.close()
            drop_schema(dsn, schema)
        return
    for store in opened:
        store.close()


def test_a_deadline_survives_a_restart_and_fires_once(reopen: Opener) -> None:
    clock, desk = Clock(), Desk()
    store, checkpoints = reopen()
    request(store, "h-1", seconds=30)
    SagaRunner(store, [HoldSaga], desk, checkpoints, clock=clock).run_until_idle()
    store.close()

    clock.advance(3600)  # an hour without a runner
    for pending in (["expire"], []):  # two restarts after it came due: it fires in the first only
        store, checkpoints = reopen()
        assert [d.name for d in pending_deadlines(store)] == pending
        runner = SagaRunner(store, [HoldSaga], desk, checkpoints, clock=clock)
        runner.run_until_idle()
        runner.run_until_idle()
        store.close()
    store, _ = reopen()
    types = [r.event_type for r in store.read_stream("hold-h-1")]
    assert types == ["DeadlineScheduled", "DeadlineFired", "HoldReleased"]
    assert desk.released == ["h-1:release"] and pending_deadlines(store) == []


def test_a_dead_letter_is_parked_in_the_store_and_retried_after_a_restart(reopen: Opener) -> None:
    clock, warehouse = Clock(), Warehouse()
    warehouse.hooks[Reserve] = failing(1, KeyError("no such shelf"))
    store, checkpoints = reopen()
    place(store, "o-1")
    SagaRunner(store, [RetryingShipping], warehouse, checkpoints, clock=clock).run_until_idle()
    [letter] = DeadLetters(store).list()
    DeadLetters(store).retry(letter.id)
    store.close()

    store, checkpoints = reopen()
    SagaRunner(store, [RetryingShipping], warehouse, checkpoints, clock=clock).run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert DeadLetters(store).get(letter.id).status == "retried"
