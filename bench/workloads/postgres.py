"""Issue 5: the PostgreSQL store vs the peer's PostgreSQL store vs a raw psycopg insert loop."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from workloads.common import PG_DSN, clock, payload, rate, require, run_processes

# Stand-in for what the peer stores per event (its JSON is ~272 bytes for a 128-char text).
RAW_STATE = json.dumps({"timestamp": "2026-01-01T00:00:00+00:00", "text": payload(0)}).encode() * 2


@contextmanager
def fresh_schema(tag: str) -> Iterator[str]:
    """A new schema for this run only, dropped afterwards (CASCADE)."""
    import psycopg

    schema = f"orxbench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _run_worker(barrier: Any, results: Any, setup: Callable[[], Any], write: Callable[[Any], None]) -> None:
    try:
        state = setup()
        barrier.wait()
        start = time.perf_counter()
        write(state)
        results.put((start, time.perf_counter()))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise


# -- eventsourcing -------------------------------------------------------------------------


def _es_worker(i: int, barrier: Any, results: Any, schema: str, count: int) -> None:
    from workloads.es_model import Note, postgres_app

    def setup() -> Any:
        app = postgres_app(schema, CREATE_TABLE="n")
        app.save(Note(text=payload(0)))  # warm the pool's connection, outside the timing
        return app

    def write(app: Any) -> None:
        for k in range(count):
            app.save(Note(text=payload(k)))
        app.close()

    _run_worker(barrier, results, setup, write)


def es_write(n: int = 3_000, procs: int = 1) -> dict[str, Any]:
    """eventsourcing PostgreSQL: ``procs`` processes each saving new one-event aggregates."""
    from workloads.es_model import postgres_app

    per = n // procs
    with fresh_schema("es") as schema:
        postgres_app(schema).close()  # creates the tables once: concurrent creation can fail
        seconds = run_processes(procs, _es_worker, (schema, per))
    return rate(per * procs, seconds)


def _es_fill(schema: str, n: int, batch: int = 1000) -> None:
    from workloads.es_model import Note, postgres_app

    app = postgres_app(schema)
    for b in range(0, n, batch):
        app.save(*[Note(text=payload(i)) for i in range(b, min(n, b + batch))])
    app.close()


def es_read_all(n: int = 50_000, page: int = 1000) -> dict[str, Any]:
    """eventsourcing: read the application sequence in pages and decode every event."""
    from workloads.es_model import postgres_app

    with fresh_schema("esr") as schema:
        _es_fill(schema, n)
        app = postgres_app(schema)
        app.recorder.select_notifications(start=1, limit=1)  # connect outside the timing
        seen = 0
        start = clock()
        position = 0
        while True:
            notes = app.recorder.select_notifications(start=position, limit=page, inclusive_of_start=False)
            for notification in notes:
                app.mapper.to_domain_event(notification)
            seen += len(notes)
            if len(notes) < page:
                break
            position = notes[-1].id
        seconds = clock() - start
        app.close()
    assert seen == n, seen
    return rate(n, seconds)


# -- raw psycopg ---------------------------------------------------------------------------

RAW_TABLE = """CREATE TABLE "{schema}".raw_events (
    notification_id bigserial PRIMARY KEY,
    originator_id uuid NOT NULL,
    originator_version integer NOT NULL,
    topic text NOT NULL,
    state bytea NOT NULL,
    UNIQUE (originator_id, originator_version))"""


def _raw_worker(i: int, barrier: Any, results: Any, schema: str, count: int) -> None:
    import psycopg

    sql = (
        f'INSERT INTO "{schema}".raw_events (originator_id, originator_version, topic, state) '
        "VALUES (%s, 1, 'workloads.es_model:Note.Created', %s)"
    )

    def setup() -> Any:
        conn = psycopg.connect(PG_DSN, autocommit=True)
        conn.execute(sql, (uuid.uuid4(), RAW_STATE), prepare=True)
        return conn

    def write(conn: Any) -> None:
        for _ in range(count):
            conn.execute(sql, (uuid.uuid4(), RAW_STATE), prepare=True)
        conn.close()

    _run_worker(barrier, results, setup, write)


def raw_write(n: int = 3_000, procs: int = 1) -> dict[str, Any]:
    """Raw psycopg: one INSERT per autocommit transaction, ``procs`` processes, no table lock."""
    import psycopg

    per = n // procs
    with fresh_schema("raw") as schema:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(RAW_TABLE.format(schema=schema))
        seconds = run_processes(procs, _raw_worker, (schema, per))
    return rate(per * procs, seconds)


# -- orchestrix ----------------------------------------------------------------------------


def _pg_store(schema: str) -> Any:
    from workloads.orx_model import serializer

    cls = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    return cls(PG_DSN, serializer(), schema=schema)


def _orx_worker(i: int, barrier: Any, results: Any, schema: str, count: int) -> None:
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from workloads.orx_model import Note

    def setup() -> Any:
        store = _pg_store(schema)
        repo = AggregateRepository(event_store=store)
        note = Note()
        note.write(str(uuid.uuid4()), payload(0))
        repo.save(note)  # connect outside the timing
        return store, repo

    def write(state: Any) -> None:
        store, repo = state
        for k in range(count):
            note = Note()
            note.write(str(uuid.uuid4()), payload(k))
            repo.save(note)
        store.close()

    _run_worker(barrier, results, setup, write)


def orx_write(n: int = 3_000, procs: int = 1) -> dict[str, Any]:
    """orchestrix PostgreSQL: ``procs`` processes each saving new one-event aggregates."""
    per = n // procs
    with fresh_schema("orx") as schema:
        _pg_store(schema).close()  # schema creation before the writers start
        seconds = run_processes(procs, _orx_worker, (schema, per))
    return rate(per * procs, seconds)


def _orx_fill(schema: str, n: int, batch: int = 1000) -> None:
    from workloads.orx_model import NoteWritten

    store = _pg_store(schema)
    text = payload(0)
    for b in range(0, n, batch):
        note_id = str(uuid.uuid4())
        store.append(f"Note-{note_id}", [NoteWritten(note_id, text) for _ in range(min(batch, n - b))], -1)
    store.close()


def orx_read_all(n: int = 50_000) -> dict[str, Any]:
    """orchestrix: read_all from the start, every event decoded, in global order."""
    with fresh_schema("orxr") as schema:
        _orx_fill(schema, n)
        store = _pg_store(schema)
        store.last_position()  # connect outside the timing
        seen = 0
        last = 0
        start = clock()
        for recorded in store.read_all(0):
            assert recorded.position > last
            last = recorded.position
            seen += 1
        seconds = clock() - start
        store.close()
    assert seen == n, seen
    return rate(n, seconds)


def _orx_lag_worker(i: int, barrier: Any, results: Any, schema: str, count: int) -> None:
    from workloads.orx_model import NoteWritten

    def setup() -> Any:
        store = _pg_store(schema)
        store.last_position()
        return store

    def write(store: Any) -> None:
        for _ in range(count):
            note_id = f"{time.time():.9f}"  # send time rides in the event; lag = receive - send
            store.append(f"Note-{uuid.uuid4()}", [NoteWritten(note_id, payload(0))], -1)
        store.close()

    _run_worker(barrier, results, setup, write)


def orx_tail_lag(n: int = 4_000, procs: int = 4) -> dict[str, Any]:
    """orchestrix: a subscriber tails read_all while ``procs`` writers append; lag from send to receive."""
    import threading

    from orchestrix.core.execution.subscription import subscribe

    per = n // procs
    with fresh_schema("orxl") as schema:
        _pg_store(schema).close()
        sub_store = _pg_store(schema)
        stop = threading.Event()
        lags: list[float] = []
        positions: list[int] = []

        def tail() -> None:
            for recorded in subscribe(sub_store, 0, stop=stop, idle_timeout=0.1):
                lags.append(time.time() - float(recorded.event.note_id))
                positions.append(recorded.position)
                if len(lags) >= per * procs:
                    stop.set()

        reader = threading.Thread(target=tail, daemon=True)
        reader.start()
        seconds = run_processes(procs, _orx_lag_worker, (schema, per))
        reader.join(timeout=60)
        stop.set()
        sub_store.close()
    assert len(lags) == per * procs, (len(lags), per * procs)
    assert all(b > a for a, b in itertools.pairwise(positions)), "subscriber saw reordering"
    lags.sort()
    return {
        "value": statistics.median(lags),
        "p99": lags[int(len(lags) * 0.99) - 1],
        "max": lags[-1],
        "write_rate": per * procs / seconds,
        "events": per * procs,
    }
