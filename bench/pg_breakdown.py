"""Where one PostgreSQL append's time goes: wall, client CPU and server CPU, layer by layer.

    python bench/pg_breakdown.py [--blocks 8] [--per-block 500] [--no-sync]

One process, one connection each, blocks of single-event appends alternating between:
``raw`` (the bench's raw INSERT+commit loop), ``statement`` (orchestrix's append statement sent
by hand on a reused binary cursor), ``append`` (``PostgresEventStore.append``) and ``repository``
(``AggregateRepository.save`` of a new one-event aggregate, what ``orx_pg1`` does). Per append:
wall time, the client thread's CPU (``time.thread_time``) and the serving backend's CPU (from
``/proc/<pid>/stat``; the server runs on this machine). ``--no-sync`` sets
``synchronous_commit=off`` for these sessions only, to see the CPU without the commit's flush.
Medians over the blocks, with the minimum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads.common import PG_DSN, payload
from workloads.postgres import RAW_STATE, RAW_TABLE, fresh_schema

_TICK = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--no-sync", action="store_true")
    args = parser.parse_args()
    if args.no_sync:
        os.environ["PGOPTIONS"] = "-c synchronous_commit=off"

    import psycopg
    from workloads.orx_model import Note, NoteWritten, serializer

    from orchestrix.core.eventsourcing._backend import to_new_events
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from orchestrix.infrastructure.postgres import PostgresEventStore
    from orchestrix.infrastructure.postgres._ops import encode_batch

    with fresh_schema("breakdown") as schema:
        store = PostgresEventStore(PG_DSN, serializer(), schema=schema, pool_size=1)
        repo = AggregateRepository(event_store=store)
        event = NoteWritten("x", payload(0))
        encoded = encode_batch(serializer(), to_new_events("s", [event]))
        raw_conn = psycopg.connect(PG_DSN, autocommit=True)
        raw_conn.execute(RAW_TABLE.format(schema=schema))
        raw_sql = (
            f'INSERT INTO "{schema}".raw_events (originator_id, originator_version, topic, state) '
            "VALUES (%s, 1, 'workloads.es_model:Note.Created', %s)"
        )
        statement_conn = psycopg.connect(PG_DSN, autocommit=True)
        statement_cursor = statement_conn.cursor(binary=True)
        pool_conn = store._db._pool.getconn()
        pool_pid = pool_conn.info.backend_pid
        store._db._pool.putconn(pool_conn)  # pool_size=1: every append runs on this backend

        def raw() -> None:
            raw_conn.execute(raw_sql, (uuid.uuid4(), RAW_STATE), prepare=True)

        def statement() -> None:
            params = {
                "stream": f"Note-{uuid.uuid4()}",
                "expected": -1,
                "id": uuid.uuid4(),
                "type": encoded.types[0],
                "data": encoded.data[0],
                "corr": None,
                "caus": None,
            }
            statement_cursor.execute(store._st.append_new, params)
            statement_cursor.fetchall()

        def append() -> None:
            store.append(f"Note-{uuid.uuid4()}", [event], -1)

        def repository() -> None:
            note = Note()
            note.write(str(uuid.uuid4()), payload(1))
            repo.save(note)

        rows: list[tuple[str, Callable[[], None], int]] = [
            ("raw INSERT+commit", raw, raw_conn.info.backend_pid),
            ("orchestrix statement by hand", statement, statement_conn.info.backend_pid),
            ("PostgresEventStore.append", append, pool_pid),
            ("AggregateRepository.save", repository, pool_pid),
        ]
        found: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in rows}
        for _, call, _ in rows:
            for _ in range(20):
                call()
        n = args.per_block
        for _ in range(args.blocks):
            for name, call, pid in rows:
                s0, c0, t0 = _backend_cpu(pid), time.thread_time(), time.perf_counter()
                for _ in range(n):
                    call()
                s1, c1, t1 = _backend_cpu(pid), time.thread_time(), time.perf_counter()
                found[name].append((1e6 * (t1 - t0) / n, 1e6 * (c1 - c0) / n, 1e6 * (s1 - s0) / n))
        store.close()
        raw_conn.close()
        statement_conn.close()
    print(f"us per append, median [min] of {args.blocks} blocks of {n}; load {os.getloadavg()[0]:.2f}")
    print(f"{'':30s} {'wall':>14s} {'client CPU':>14s} {'server CPU':>14s}")
    for name, values in found.items():
        cells: list[Any] = []
        for k in range(3):
            column = [v[k] for v in values]
            cells.append(f"{statistics.median(column):7.0f} [{min(column):4.0f}]")
        print(f"{name:30s} {cells[0]:>14s} {cells[1]:>14s} {cells[2]:>14s}")


if __name__ == "__main__":
    main()
