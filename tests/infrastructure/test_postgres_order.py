"""Several processes at once: schema creation races, and the global order under concurrent writers.

Sizes: CI runs 4 writers x 120 appends. Set ORCHESTRIX_PG_ORDER_APPENDS (appends per writer)
and ORCHESTRIX_PG_ORDER_WRITERS for a longer run.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.infrastructure.pg_support import dsn_or_skip, sql_execute, throwaway_schema

DSN = dsn_or_skip()

from orchestrix.infrastructure.postgres import SCHEMA_VERSION, PostgresEventStore  # noqa: E402
from tests.infrastructure import pg_workers  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")  # children open their own connections; no forked state
WRITERS = int(os.environ.get("ORCHESTRIX_PG_ORDER_WRITERS", "4"))
APPENDS = int(os.environ.get("ORCHESTRIX_PG_ORDER_APPENDS", "120"))


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN, "order") as name:
        yield name


def test_four_processes_starting_at_once_on_an_empty_schema_all_succeed(schema: str) -> None:
    barrier = SPAWN.Barrier(4)
    children = [
        SPAWN.Process(target=pg_workers.open_schema_and_append, args=(DSN, schema, me, barrier))
        for me in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    assert sql_execute(DSN, f'SELECT version FROM "{schema}".schema_version') == [(SCHEMA_VERSION,)]
    assert sql_execute(DSN, f'SELECT count(*) FROM "{schema}".events') == [(4,)]


def test_concurrent_writer_processes_and_a_tailing_reader_agree_on_one_gap_free_order(schema: str) -> None:
    """Every acknowledged event is read exactly once, in strictly increasing positions, never late.

    A trigger sleeps a random few milliseconds after each insert, before commit, so
    transactions commit in a different order than they took their positions: the case where a
    reader ordering by a plain sequence would skip events.
    """
    reader = PostgresEventStore(DSN, pg_workers.worker_serializer(), schema=schema, poll_interval=0.05)
    sql_execute(
        DSN,
        f"""CREATE FUNCTION "{schema}".jitter() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(random() * 0.004); RETURN NULL; END $$""",
    )
    sql_execute(
        DSN,
        f"""CREATE TRIGGER jitter AFTER INSERT ON "{schema}".events
            FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".jitter()""",
    )
    results = SPAWN.Queue()
    writers = [
        SPAWN.Process(target=pg_workers.append_randomly, args=(DSN, schema, me, APPENDS, 5, results))
        for me in range(WRITERS)
    ]
    for writer in writers:
        writer.start()

    tailed: list[tuple[int, uuid.UUID]] = []
    reports: dict[int, list[tuple[list[str], list[int]]]] = {}
    position = 0
    deadline = time.monotonic() + 300
    while len(reports) < WRITERS or any(w.is_alive() for w in writers):
        assert time.monotonic() < deadline, "writers did not finish"
        assert all(w.exitcode in (None, 0) for w in writers), "a writer process failed"
        for recorded in reader.read_all(position):
            tailed.append((recorded.position, recorded.event_id))
            position = recorded.position
        reader.wait_for_events(position, 0.05)
        try:
            me, acked = results.get_nowait()
            reports[me] = acked
        except queue.Empty:
            pass
    for writer in writers:
        writer.join()
    assert [w.exitcode for w in writers] == [0] * WRITERS
    for recorded in reader.read_all(position):  # the last appends
        tailed.append((recorded.position, recorded.event_id))

    positions = [p for p, _ in tailed]
    assert all(a < b for a, b in itertools.pairwise(positions)), "reader saw positions go back"
    acked_positions = {
        uuid.UUID(i): p
        for acked in reports.values()
        for ids, ps in acked
        for i, p in zip(ids, ps, strict=True)
    }
    seen = dict((i, p) for p, i in tailed)
    assert len(seen) == len(tailed), "an event was delivered twice"
    assert seen == acked_positions, "the tail and the acknowledgements disagree"
    assert len(seen) >= WRITERS * APPENDS
    # Nothing appeared behind the reader's cursor: a fresh full read is exactly the tail.
    assert [(r.position, r.event_id) for r in reader.read_all()] == tailed
    reader.close()
