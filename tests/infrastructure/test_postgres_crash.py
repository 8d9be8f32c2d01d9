"""Crash loop on PostgreSQL: SIGKILL a writing client at random moments, single and multi-stream appends.

A child process appends from two threads and two asyncio tasks (both paths at once); one append
in two is a multi-stream append over two or three streams, some with checked expected versions
(so conflicts happen too). Each acknowledged append is logged by the child. The test kills it at
a random (seeded) moment, waits until the server has finished with the child's sessions (a
statement sent before the kill still runs to its end), and checks the whole log:

* every acknowledged append is stored exactly where its results said, in every stream it touched;
* every batch (acknowledged or not) is whole in every stream or absent from all of them;
* every stream's versions are gapless, and no event id is stored twice.

``ORCHESTRIX_PG_CRASH_KILLS`` sets the number of kills (default 12; e.g. 200 for the long run).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrix.infrastructure.postgres import PostgresEventStore
from tests.infrastructure.kill_support import kill_child_at_random
from tests.infrastructure.pg_support import dsn_or_skip, sql_execute, throwaway_schema
from tests.infrastructure.pg_workers import crash_serializer

DSN = dsn_or_skip()
KILLS = int(os.environ.get("ORCHESTRIX_PG_CRASH_KILLS", "12"))
ROOT = Path(__file__).parents[2]
CHILD = "import sys; from tests.infrastructure.pg_workers import crash_child; crash_child(*sys.argv[1:])"


def _child_dsn(application: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(DSN, application_name=application)


def _wait_for_sessions_to_end(application: str) -> None:
    """Until the server has dropped every session of the killed child (statements sent end first)."""
    for _ in range(600):
        rows = sql_execute(
            DSN, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        )
        if rows[0][0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the killed child's sessions did not end")


def _acknowledged(ack_file: Path) -> Iterator[list[tuple[str, list[str], list[int], list[int]]]]:
    raw = ack_file.read_bytes() if ack_file.exists() else b""
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        os.truncate(ack_file, end)  # a line the kill cut short was never acknowledged
    for line in raw[:end].splitlines():
        yield json.loads(line)


def _check(store: PostgresEventStore, ack_file: Path) -> tuple[int, int, int]:
    """Check the whole log against the acknowledgements; (acknowledged, batches, multi-stream ones)."""
    stored: dict[str, tuple[str, int, int]] = {}  # event id -> stream, version, position
    batches: dict[str, list[tuple[str, int, int]]] = {}  # batch -> (stream, index, size) per event
    versions: dict[str, int] = {}
    last = 0
    for r in store.read_all():
        assert r.position > last, "positions must increase"
        last = r.position
        assert r.version == versions.get(r.stream, -1) + 1, f"gap in {r.stream} at version {r.version}"
        versions[r.stream] = r.version
        assert r.event_id.hex not in stored, f"event {r.event_id} stored twice"
        stored[r.event_id.hex] = (r.stream, r.version, r.position)
        batches.setdefault(r.event.batch, []).append((r.stream, r.event.index, r.event.size))
    for batch, parts in batches.items():
        size = parts[0][2]
        assert sorted(index for _, index, _ in parts) == list(range(size)), f"batch {batch} is partly stored"
    acked = 0
    for line in _acknowledged(ack_file):
        acked += 1
        for stream, ids, stream_versions, positions in line:
            for event_id, version, position in zip(ids, stream_versions, positions, strict=True):
                assert stored.get(event_id) == (stream, version, position), f"acknowledged {event_id} differs"
    spread = sum(len({stream for stream, _, _ in parts}) > 1 for parts in batches.values())
    return acked, len(batches), spread


@pytest.mark.slow
def test_every_acknowledged_multi_stream_append_survives_a_killed_client(tmp_path: Path) -> None:
    rng = random.Random(17_017)
    ack_file = tmp_path / "acks"
    with throwaway_schema(DSN, "crash") as schema:
        store = PostgresEventStore(DSN, crash_serializer(), schema=schema, pool_size=2)
        try:
            acked = batches = spread = 0
            for kill in range(KILLS):
                application = f"orx_crash_{schema[-12:]}_{kill}"
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD, _child_dsn(application), schema, str(ack_file), str(kill)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's orchestrix
                )
                kill_child_at_random(child, rng, (0.05, 0.4), f"kill {kill}")
                _wait_for_sessions_to_end(application)
                acked, batches, spread = _check(store, ack_file)
        finally:
            store.close()
    print(
        f"postgres crash: {KILLS} kills, {acked} appends acknowledged,"
        f" {batches} stored, {spread} multi-stream"
    )
    assert acked > KILLS, "the children acknowledged too little to test anything"
    assert spread > KILLS, f"only {spread} multi-stream batches were stored"
    assert batches >= acked
