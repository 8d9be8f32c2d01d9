"""Issue 15: ``orchestrix copy`` from a file store into PostgreSQL, in events per second.

The source (``n`` events over 1,000 streams, 128-character payloads) is written first, outside
the timing, without fsync; the timing covers the copy alone (pages of 1,000 events, one
``append_many`` each), not the verification that ``orchestrix copy`` runs after it.
"""

from __future__ import annotations

import os
from typing import Any

from workloads.common import PG_DSN, clock, payload, rate, require, temp_dir


def file_to_pg(n: int = 100_000, streams: int = 1_000, page: int = 1_000) -> dict[str, Any]:
    """Copy ``n`` events from a file store into a fresh PostgreSQL schema."""
    from workloads.orx_model import NoteWritten, serializer
    from workloads.postgres import fresh_schema

    FileEventStore = require("orchestrix.infrastructure.file", "FileEventStore")
    PostgresEventStore = require("orchestrix.infrastructure.postgres", "PostgresEventStore")
    copy_store, PassThrough = require(
        "orchestrix.core.eventsourcing.copy", "copy_store", "PassThroughSerializer"
    )
    with temp_dir() as path, fresh_schema("cp") as schema:
        source_path = os.path.join(path, "store")
        with FileEventStore(source_path, serializer(), sync=False) as source:
            chunk = 500  # events written per append: the source is made fast, then copied
            for k in range(0, n, chunk):
                stream = f"note-{(k // chunk) % streams}"
                source.append(stream, [NoteWritten(stream, payload(k + i)) for i in range(min(chunk, n - k))])
        with (
            FileEventStore(source_path, PassThrough()) as source,
            PostgresEventStore(PG_DSN, PassThrough(), schema=schema) as target,
        ):
            start = clock()
            result = copy_store(source, target, page=page)
            seconds = clock() - start
            assert result.copied == n and target.last_position() > 0
    return rate(n, seconds)
