"""Issue 17: a two-stream atomic append against two single appends, file store and PostgreSQL.

Each repetition writes ``n`` pairs of events, one to each of two fresh streams (a transfer's
debit and credit): either as one ``append_many`` (one record group and one fdatasync on the
file store, one statement and one commit on PostgreSQL) or as two ``append`` calls in a row.
The ``writers`` rows run several threads at once, each writing its own pairs, so that appends
of different writers interleave (group commit on the file store, concurrent transactions on
PostgreSQL). The value is pairs per second.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from workloads.common import PG_DSN, clock, payload, rate, require, run_threads, temp_dir


def _pairs(store: Any, n: int, atomic: int, writers: int = 1) -> float:
    """Seconds to write ``n`` pairs from ``writers`` threads (each its own pairs, released together)."""
    from workloads.orx_model import NoteWritten

    StreamAppend = require("orchestrix.core.eventsourcing.store", "StreamAppend")
    store.append("warm-up", [NoteWritten("w", payload(0))])  # opened and connected outside the timing
    share = n // writers
    names = [[(f"from-{uuid.uuid4()}", f"to-{uuid.uuid4()}") for _ in range(share)] for _ in range(writers)]

    def work(me: int) -> None:
        if atomic:
            for k, (a, b) in enumerate(names[me]):
                store.append_many(
                    [
                        StreamAppend(a, [NoteWritten(a, payload(k))]),
                        StreamAppend(b, [NoteWritten(b, payload(k))]),
                    ]
                )
        else:
            for k, (a, b) in enumerate(names[me]):
                store.append(a, [NoteWritten(a, payload(k))])
                store.append(b, [NoteWritten(b, payload(k))])

    if writers == 1:
        start = clock()
        work(0)
        seconds = clock() - start
    else:
        seconds = run_threads(writers, work)
    assert store.last_position() >= 2 * share * writers
    return seconds


def file_pairs(n: int = 3_000, atomic: int = 1, writers: int = 1) -> dict[str, Any]:
    """File store, durable: ``n`` pairs as one atomic append each, or as two appends each, from
    ``writers`` threads (several writers interleave: their appends share group commits)."""
    from workloads.orx_model import serializer

    FileEventStore = require("orchestrix.infrastructure.file", "FileEventStore")
    with temp_dir() as path:
        store = FileEventStore(os.path.join(path, "store"), serializer())
        try:
            seconds = _pairs(store, n, atomic, writers)
        finally:
            store.close()
    return rate(n // writers * writers, seconds)


def pg_pairs(n: int = 2_000, atomic: int = 1, writers: int = 1) -> dict[str, Any]:
    """PostgreSQL: ``n`` pairs as one atomic append each, or as two appends each, from ``writers``
    threads."""
    from workloads.orx_model import serializer
    from workloads.postgres import fresh_schema

    PostgresEventStore = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    with fresh_schema("ms") as schema:
        store = PostgresEventStore(PG_DSN, serializer(), schema=schema)
        try:
            seconds = _pairs(store, n, atomic, writers)
        finally:
            store.close()
    return rate(n // writers * writers, seconds)
