"""Issue 15: ``orchestrix copy`` from a file store into PostgreSQL, in events per second, with
the INSERT ceiling measured in the same run.

The source (``n`` events over 1,000 streams, 128-character payloads) is written once per run
(``build_source``, outside every timing, without fsync). ``file_to_pg`` times the copy alone
(pages of 1,000 events, one ``import_events`` each, which keeps every event's time), not the
verification that ``orchestrix copy`` runs after it. ``pg_insert_ceiling`` times what no copy
can beat: the same rows, already in memory, inserted into the same table by one plain
``INSERT ... SELECT FROM unnest(...)`` per page, with no reading, decoding or checking.
"""

from __future__ import annotations

import os
from typing import Any

from workloads.common import PG_DSN, clock, payload, rate, require


def build_source(dir: str, n: int = 100_000, streams: int = 1_000, **_: Any) -> dict[str, Any]:
    """Write the source file store of ``n`` events into ``dir`` (once per run)."""
    from workloads.orx_model import NoteWritten, serializer

    FileEventStore = require("orchestrix.infrastructure.file", "FileEventStore")
    start = clock()
    with FileEventStore(os.path.join(dir, "store"), serializer(), sync=False) as source:
        chunk = 500  # events written per append: the source is made fast, then copied
        for k in range(0, n, chunk):
            stream = f"note-{(k // chunk) % streams}"
            source.append(stream, [NoteWritten(stream, payload(k + i)) for i in range(min(chunk, n - k))])
    return {"events": n, "build_seconds": round(clock() - start, 2)}


def file_to_pg(dir: str, n: int = 100_000, page: int = 1_000, **_: Any) -> dict[str, Any]:
    """Copy the prepared source into a fresh PostgreSQL schema."""
    from workloads.postgres import fresh_schema

    FileEventStore = require("orchestrix.infrastructure.file", "FileEventStore")
    PostgresEventStore = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    copy_store, PassThrough = require(
        "orchestrix.core.eventsourcing.copy", "copy_store", "PassThroughSerializer"
    )
    with (
        fresh_schema("cp") as schema,
        FileEventStore(os.path.join(dir, "store"), PassThrough()) as source,
        PostgresEventStore(PG_DSN, PassThrough(), schema=schema) as target,
    ):
        start = clock()
        result = copy_store(source, target, page=page)
        seconds = clock() - start
        assert result.copied == n and target.last_position() > 0
        kept = getattr(result, "kept_times", False)
    return {**rate(n, seconds), "kept_times": kept}


def pg_insert_ceiling(dir: str, n: int = 100_000, page: int = 1_000, **_: Any) -> dict[str, Any]:
    """Insert the source's rows (read into memory first, untimed) into a fresh schema's events
    table, one plain multi-row INSERT per page, autocommit: the copy's ceiling."""
    import psycopg

    from workloads.postgres import fresh_schema

    FileEventStore = require("orchestrix.infrastructure.file", "FileEventStore")
    PostgresEventStore = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    PassThrough = require("orchestrix.core.eventsourcing.copy", "PassThroughSerializer")
    with FileEventStore(os.path.join(dir, "store"), PassThrough()) as source:
        rows = [
            (
                r.position,
                r.stream,
                r.version,
                r.event_id,
                r.event.type_name,
                r.event.data.decode(),
                r.recorded_at,
            )
            for r in source.read_all()
        ]
    assert len(rows) == n
    pages = [list(zip(*rows[k : k + page], strict=True)) for k in range(0, n, page)]
    with fresh_schema("cpceil") as schema:
        PostgresEventStore(PG_DSN, PassThrough(), schema=schema).close()  # the same table and indexes
        sql = (
            f'INSERT INTO "{schema}".events '
            "(position, stream, version, event_id, event_type, data, recorded_at) "
            "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::uuid[], %s::text[], "
            "%s::text[], %s::timestamptz[])"
        )
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            start = clock()
            for columns in pages:
                conn.execute(sql, [list(c) for c in columns])
            seconds = clock() - start
    return rate(n, seconds)
