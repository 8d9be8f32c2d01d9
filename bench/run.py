#!/usr/bin/env python3
"""orchestrix benchmark harness: orchestrix and eventsourcing 9.5.6 measured in the same run.

    python3 bench/run.py [SUITE ...] [--reps N] [--json OUT.json] [--quick] [--rev REV]

Suites: memory, file, postgres, multistream, copy, saga, deadlines, snapshots, projection
(default: all), and growth (on demand only: it fills a 10M-event store, ~3 GB; ORCHESTRIX_BENCH_TMP
picks its disk, ORCHESTRIX_BENCH_GROWTH_KEEP keeps the stores between runs, ORCHESTRIX_BENCH_GROWTH
the sizes).
Every workload runs in a fresh child process per repetition, with a fresh store; repetitions are
interleaved across workloads so that machine drift hits every side alike. Prints medians
[min-max], ratios and targets, and
writes JSON (default bench/results/<timestamp>.json). On first run it creates bench/.venv
with eventsourcing==9.5.6, psycopg and orchestrix (editable); the project itself never
depends on eventsourcing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
REQUIREMENTS = ["eventsourcing==9.5.6", "psycopg[binary]>=3.1", "psycopg-pool>=3.2"]
MARKER = os.path.join(VENV, ".orxbench-requirements")
CHILD_TIMEOUT = 900
PREPARE_TIMEOUT = 7200
"""Preparing may take longer: the growth suite fills a 10M-event store."""
EXIT_NOT_LANDED = 3
BENCH_TMP = "ORCHESTRIX_BENCH_TMP"
"""Where prepared stores go (default: the system's temporary directory)."""
GROWTH_KEEP = "ORCHESTRIX_BENCH_GROWTH_KEEP"
"""A directory where the growth suite keeps its stores between runs (filling 10M events takes minutes)."""


# -- what is measured ----------------------------------------------------------------------


@dataclass
class Row:
    """One workload, run once per repetition in a fresh child process."""

    key: str
    label: str
    workload: str
    unit: str
    better: str = "higher"
    params: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    prepare: str | None = None


@dataclass
class Check:
    """A target: ``a`` vs ``b`` as a ratio (>1 means a is better), or ``a`` alone vs a bound."""

    label: str
    a: str
    b: str | None
    target: float | None
    kind: str = "ratio"  # ratio: ratio >= target; max: value <= target; min: value >= target
    source: str = ""


MiB = 1 / (1024 * 1024)


def _growth_sizes() -> list[tuple[str, int]]:
    """(name, events) of the growth suite's stores: ORCHESTRIX_BENCH_GROWTH, else 0, 1M, 3M, 10M."""
    sizes = [
        int(x) for x in os.environ.get("ORCHESTRIX_BENCH_GROWTH", "0,1000000,3000000,10000000").split(",")
    ]
    return [(f"{n // 1_000_000}M" if n and n % 1_000_000 == 0 else str(n), n) for n in sorted(set(sizes))]


GROWTH_SIZES = _growth_sizes()

SUITES: dict[str, tuple[list[Row], list[Check]]] = {
    "memory": (
        [
            Row(
                "orx_save",
                "orchestrix  save 10k new aggregates (1 event each)",
                "memory.orx_save",
                "ev/s",
                params={"n": 10_000},
            ),
            Row("es_save", "eventsourcing POPO  same", "memory.es_save", "ev/s", params={"n": 10_000}),
            Row(
                "orx_load",
                "orchestrix  load 1 aggregate of 10k events",
                "memory.orx_load",
                "ms",
                better="lower",
                params={"n": 10_000},
                scale=1e3,
            ),
            Row(
                "es_load",
                "eventsourcing POPO  same",
                "memory.es_load",
                "ms",
                better="lower",
                params={"n": 10_000},
                scale=1e3,
            ),
        ],
        [
            Check("saves: orchestrix vs peer", "orx_save", "es_save", 3.0, source="issue 2"),
            Check("load: peer time / orchestrix time", "orx_load", "es_load", 4.0, source="issue 2"),
        ],
    ),
    "file": (
        [
            Row(
                "orx_write1",
                "orchestrix FileEventStore  1 writer, 1 event/append (10k new aggregates)",
                "file.orx_write1",
                "ev/s",
                params={"n": 10_000},
            ),
            Row(
                "orx_write1_indexed",
                "orchestrix  same, on a store whose index holds 50k+ events",
                "file.orx_write1_indexed",
                "ev/s",
                params={"n": 5_000},
                prepare="file.orx_build_indexed",
            ),
            Row(
                "es_write1",
                "eventsourcing SQLite (WAL, sync FULL)  same",
                "file.es_write1",
                "ev/s",
                params={"n": 10_000},
            ),
            Row(
                "raw_fsync1",
                "ceiling: raw write+fdatasync loop, 1 record/sync",
                "file.raw_write1",
                "rec/s",
                params={"n": 10_000},
            ),
            Row(
                "raw_pwrite1",
                "ceiling: pwrite into a preallocated, zero-written file + fdatasync, 1 record/sync",
                "file.raw_pwrite1",
                "rec/s",
                params={"n": 10_000},
            ),
            Row(
                "orx_procs1",
                "orchestrix  1 writer process, 1 event/append (new aggregates)",
                "file.orx_write_procs",
                "ev/s",
                params={"n": 3_000, "procs": 1},
            ),
            Row(
                "orx_procs4",
                "orchestrix  4 writer processes on one store, same",
                "file.orx_write_procs",
                "ev/s",
                params={"n": 8_000, "procs": 4},
            ),
            Row(
                "raw_pwrite4p",
                "ceiling: 4 processes pwrite into one preallocated file + fdatasync each, no lock",
                "file.raw_pwrite_procs",
                "rec/s",
                params={"n": 8_000, "procs": 4},
            ),
            Row(
                "orx_write8",
                "orchestrix  8 writer threads, own stream each, 1 event/append",
                "file.orx_write8",
                "ev/s",
                params={"n": 16_000, "threads": 8},
            ),
            Row(
                "orx_write8_async",
                "orchestrix  8 asyncio writer tasks, own stream each, 1 event/append",
                "file.orx_write8_async",
                "ev/s",
                params={"n": 16_000, "tasks": 8},
            ),
            Row(
                "orx_write8_async_long",
                "orchestrix  same, 128k events (index checkpoints every 16k run meanwhile)",
                "file.orx_write8_async",
                "ev/s",
                params={"n": 128_000, "tasks": 8},
            ),
            Row(
                "es_write8",
                "eventsourcing SQLite  8 writer threads, same",
                "file.es_write8",
                "ev/s",
                params={"n": 8_000, "threads": 8},
            ),
            Row(
                "lag_file",
                "loop lag p99, 1 ms ticker, 8 asyncio tasks appending to the file store",
                "file.lag_file",
                "ms",
                better="lower",
                params={"n": 16_000, "tasks": 8},
                scale=1e3,
            ),
            Row(
                "lag_file_max",
                "loop lag max, same (a separate run)",
                "file.lag_file",
                "ms",
                better="lower",
                params={"n": 16_000, "tasks": 8, "stat": "max"},
                scale=1e3,
            ),
            Row(
                "lag_pg",
                "loop lag p99, same, PostgreSQL store",
                "file.lag_pg",
                "ms",
                better="lower",
                params={"n": 4_000, "tasks": 8},
                scale=1e3,
            ),
            Row(
                "lag_idle",
                "loop lag p99, same ticker, idle loop (floor)",
                "file.lag_idle",
                "ms",
                better="lower",
                scale=1e3,
            ),
            Row(
                "orx_load10k",
                "orchestrix  load 1 stream of 10k events (aggregate replay)",
                "file.orx_load",
                "ms",
                better="lower",
                params={"n": 10_000},
                scale=1e3,
            ),
            Row(
                "es_load10k",
                "eventsourcing SQLite  same",
                "file.es_load",
                "ms",
                better="lower",
                params={"n": 10_000},
                scale=1e3,
            ),
            Row(
                "orx_rss100k",
                "orchestrix  peak RSS growth loading 100k-event stream",
                "file.orx_rss",
                "MiB",
                better="lower",
                params={"n": 100_000},
                scale=MiB,
            ),
            Row(
                "es_rss100k",
                "eventsourcing SQLite  same",
                "file.es_rss",
                "MiB",
                better="lower",
                params={"n": 100_000},
                scale=MiB,
            ),
            Row(
                "orx_open1m",
                "orchestrix  open a store of 1M events (fresh process)",
                "file.orx_open",
                "s",
                better="lower",
                params={"n": 1_000_000},
                prepare="file.orx_build",
            ),
        ],
        [
            Check("1 writer: orchestrix vs peer SQLite", "orx_write1", "es_write1", 1.5, source="issue 3"),
            Check("1 writer: orchestrix / fsync ceiling", "orx_write1", "raw_fsync1", 0.85, source="issue 3"),
            Check("peer SQLite / fsync ceiling (info)", "es_write1", "raw_fsync1", None),
            Check(
                "1 writer: orchestrix / in-place fdatasync ceiling",
                "orx_write1",
                "raw_pwrite1",
                0.8,
                source="issue 19",
            ),
            Check("4 writer processes / 1 process", "orx_procs4", "orx_procs1", 3.0, source="issue 19"),
            Check(
                "4 raw processes / 1 raw writer: the disk's concurrency (info)",
                "raw_pwrite4p",
                "raw_pwrite1",
                None,
            ),
            Check("4 writer processes / 4 raw processes (info)", "orx_procs4", "raw_pwrite4p", None),
            Check("8 writers: orchestrix / in-place ceiling (info)", "orx_write8", "raw_pwrite1", None),
            Check(
                "loop lag p99 <= 2 ms (file store)", "lag_file", None, 0.002, kind="max", source="issue 19"
            ),
            Check(
                "loop lag max <= 10 ms (file store)",
                "lag_file_max",
                None,
                0.010,
                kind="max",
                source="issue 19",
            ),
            Check("loop lag p99: PostgreSQL store / file store (info)", "lag_file", "lag_pg", None),
            Check("loop lag p99: idle floor / file store (info)", "lag_file", "lag_idle", None),
            Check("1 writer: indexed store / fresh store (info)", "orx_write1_indexed", "orx_write1", None),
            Check(
                "8 writers: orchestrix / 1-writer ceiling", "orx_write8", "raw_fsync1", 4.0, source="issue 3"
            ),
            Check(
                "8 asyncio writers: orchestrix / 1-writer ceiling",
                "orx_write8_async",
                "raw_fsync1",
                4.0,
                source="issue 3",
            ),
            Check("8 writers: orchestrix vs peer 8 threads (info)", "orx_write8", "es_write8", None),
            Check(
                "8 asyncio writers: 128k / 16k events (info)",
                "orx_write8_async_long",
                "orx_write8_async",
                None,
            ),
            Check(
                "load 10k: peer time / orchestrix time", "orx_load10k", "es_load10k", 5.0, source="issue 3"
            ),
            Check("peak RSS 100k: peer / orchestrix", "orx_rss100k", "es_rss100k", 10.0, source="issue 3"),
            Check("open 1M events <= 0.5 s", "orx_open1m", None, 0.5, kind="max", source="issue 3"),
        ],
    ),
    "postgres": (
        [
            Row(
                "orx_pg1",
                "orchestrix PostgresEventStore  1 writer, 1 event/append",
                "postgres.orx_write",
                "ev/s",
                params={"n": 3_000, "procs": 1},
            ),
            Row(
                "es_pg1",
                "eventsourcing PostgreSQL  same",
                "postgres.es_write",
                "ev/s",
                params={"n": 3_000, "procs": 1},
            ),
            Row(
                "raw_pg1",
                "raw psycopg INSERT+commit loop, 1 writer",
                "postgres.raw_write",
                "ev/s",
                params={"n": 3_000, "procs": 1},
            ),
            Row(
                "orx_pg4",
                "orchestrix  4 writer processes (total)",
                "postgres.orx_write",
                "ev/s",
                params={"n": 8_000, "procs": 4},
            ),
            Row(
                "es_pg4",
                "eventsourcing  4 writer processes (total)",
                "postgres.es_write",
                "ev/s",
                params={"n": 8_000, "procs": 4},
            ),
            Row(
                "raw_pg4",
                "raw psycopg  4 writer processes, no lock (total)",
                "postgres.raw_write",
                "ev/s",
                params={"n": 8_000, "procs": 4},
            ),
            Row(
                "orx_pgread",
                "orchestrix  read_all 50k events in order",
                "postgres.orx_read_all",
                "ev/s",
                params={"n": 50_000},
            ),
            Row(
                "es_pgread",
                "eventsourcing  select_notifications+decode 50k",
                "postgres.es_read_all",
                "ev/s",
                params={"n": 50_000},
            ),
            Row(
                "orx_pglag",
                "orchestrix  tailing subscriber lag p50, 4 writers (ms)",
                "postgres.orx_tail_lag",
                "ms",
                better="lower",
                params={"n": 4_000, "procs": 4},
                scale=1e3,
            ),
        ],
        [
            Check("1 writer: orchestrix vs peer", "orx_pg1", "es_pg1", 1.5, source="issue 5"),
            Check(
                "1 writer: orchestrix / raw psycopg INSERT+commit",
                "orx_pg1",
                "raw_pg1",
                0.8,
                source="issue 19",
            ),
            Check("4 writers: orchestrix vs peer 4 writers", "orx_pg4", "es_pg4", 2.5, source="issue 5"),
            Check("4 writers: orchestrix scaling vs its 1 writer (info)", "orx_pg4", "orx_pg1", None),
            Check(
                "4 writers: orchestrix / raw no-lock INSERTs", "orx_pg4", "raw_pg4", 0.8, source="issue 19"
            ),
            Check(
                "read all: orchestrix vs peer select+decode",
                "orx_pgread",
                "es_pgread",
                1.5,
                source="issue 19",
            ),
        ],
    ),
    "multistream": (
        [
            Row(
                "orx_file_pair_atomic",
                "orchestrix file  2-stream atomic append (append_many)",
                "multistream.file_pairs",
                "pairs/s",
                params={"n": 3_000, "atomic": 1},
            ),
            Row(
                "orx_file_pair_two",
                "orchestrix file  same pairs as 2 single appends",
                "multistream.file_pairs",
                "pairs/s",
                params={"n": 3_000, "atomic": 0},
            ),
            Row(
                "orx_file_pair_atomic_4w",
                "orchestrix file  4 writers interleaved, 2-stream atomic appends",
                "multistream.file_pairs",
                "pairs/s",
                params={"n": 3_000, "atomic": 1, "writers": 4},
            ),
            Row(
                "orx_file_pair_two_4w",
                "orchestrix file  4 writers interleaved, same pairs as 2 single appends",
                "multistream.file_pairs",
                "pairs/s",
                params={"n": 3_000, "atomic": 0, "writers": 4},
            ),
            Row(
                "orx_pg_pair_atomic",
                "orchestrix PostgreSQL  2-stream atomic append (append_many)",
                "multistream.pg_pairs",
                "pairs/s",
                params={"n": 2_000, "atomic": 1},
            ),
            Row(
                "orx_pg_pair_two",
                "orchestrix PostgreSQL  same pairs as 2 single appends",
                "multistream.pg_pairs",
                "pairs/s",
                params={"n": 2_000, "atomic": 0},
            ),
            Row(
                "orx_pg_pair_atomic_4w",
                "orchestrix PostgreSQL  4 writers interleaved, 2-stream atomic appends",
                "multistream.pg_pairs",
                "pairs/s",
                params={"n": 2_000, "atomic": 1, "writers": 4},
            ),
            Row(
                "orx_pg_pair_two_4w",
                "orchestrix PostgreSQL  4 writers interleaved, same pairs as 2 single appends",
                "multistream.pg_pairs",
                "pairs/s",
                params={"n": 2_000, "atomic": 0, "writers": 4},
            ),
        ],
        [
            Check(
                "file: atomic pair vs 2 appends",
                "orx_file_pair_atomic",
                "orx_file_pair_two",
                1.8,
                source="issue 17",
            ),
            Check(
                "postgres: atomic pair vs 2 appends",
                "orx_pg_pair_atomic",
                "orx_pg_pair_two",
                1.5,
                source="issue 17",
            ),
            Check(
                "file 4 writers: atomic pairs vs 2 appends (info)",
                "orx_file_pair_atomic_4w",
                "orx_file_pair_two_4w",
                None,
            ),
            Check(
                "postgres 4 writers: atomic pairs vs 2 appends (info)",
                "orx_pg_pair_atomic_4w",
                "orx_pg_pair_two_4w",
                None,
            ),
        ],
    ),
    "copy": (
        [
            Row(
                "orx_copy_file_pg",
                "orchestrix copy  file store -> PostgreSQL, 1M events (times kept)",
                "copy.file_to_pg",
                "ev/s",
                params={"n": 1_000_000},
                prepare="copy.build_source",
            ),
            Row(
                "pg_insert_ceiling",
                "ceiling: the same rows from memory, one INSERT ... unnest per 1,000",
                "copy.pg_insert_ceiling",
                "ev/s",
                params={"n": 1_000_000},
                prepare="copy.build_source",
            ),
        ],
        [
            Check(
                "copy file -> PostgreSQL >= 20k ev/s",
                "orx_copy_file_pg",
                None,
                20_000,
                kind="min",
                source="issue 15",
            ),
            Check("copy / INSERT ceiling (info)", "orx_copy_file_pg", "pg_insert_ceiling", None),
        ],
    ),
    "saga": (
        [
            Row(
                "saga_file",
                "TransferSaga on FileEventStore (sync), 32 in flight, 1,024 accounts",
                "saga.transfers",
                "transfers/s",
                params={"n": 2_000, "in_flight": 32, "store": "file"},
            ),
            Row(
                "saga_memory",
                "TransferSaga on InMemoryEventStore, 32 in flight, 1,024 accounts",
                "saga.transfers",
                "transfers/s",
                params={"n": 2_000, "in_flight": 32, "store": "memory"},
            ),
            Row(
                "saga_pg",
                "TransferSaga on PostgresEventStore, 32 in flight, 1,024 accounts",
                "saga.transfers",
                "transfers/s",
                params={"n": 1_000, "in_flight": 32, "store": "postgres"},
            ),
            Row(
                "saga_pg_ceiling",
                "PostgreSQL append ceiling: 8 asyncio tasks, 1-event appends, / 6 events per transfer",
                "saga.pg_append_ceiling",
                "transfers/s",
                params={"seconds": 3.0, "tasks": 8},
            ),
            Row(
                "saga_es",
                "eventsourcing 9.5.6 process application, same transfer, SQLite",
                "es_saga.transfers",
                "transfers/s",
                params={"n": 1_000},
            ),
        ],
        [
            Check(
                "durable file store >= 1,000 transfers/s",
                "saga_file",
                None,
                1000.0,
                kind="min",
                source="issue 4",
            ),
            Check(
                "durable file store >= 3,000 transfers/s",
                "saga_file",
                None,
                3000.0,
                kind="min",
                source="issue 19",
            ),
            Check("memory store (info)", "saga_memory", None, None, kind="min"),
            Check("PostgreSQL vs its append ceiling", "saga_pg", "saga_pg_ceiling", 0.8, source="issue 19"),
            Check("file store vs the peer on SQLite", "saga_file", "saga_es", 5.0, source="issue 19"),
        ],
    ),
    "deadlines": (
        [
            Row(
                "deadlines_rss",
                "10,000 open sagas with a pending deadline (file store): runner peak RSS growth",
                "deadlines.open_sagas",
                "MiB",
                better="lower",
                params={"n": 10_000},
                scale=MiB,
            ),
            Row(
                "deadlines_latency",
                "deadlines due at 1,000/s (file store, asyncio runner): firing latency p99",
                "deadlines.firing_latency",
                "ms",
                better="lower",
                params={"n": 2_000, "rate": 1_000.0},
                scale=1e3,
            ),
        ],
        [
            Check(
                "runner memory with 10,000 pending deadlines (info)", "deadlines_rss", None, None, kind="max"
            ),
            Check(
                "firing latency p99 < 50 ms at 1,000/s",
                "deadlines_latency",
                None,
                0.050,
                kind="max",
                source="issue 16",
            ),
        ],
    ),
    "snapshots": (
        [
            Row(
                "orx_snap",
                "orchestrix FileEventStore  load 1 aggregate of 100k events, snapshot every 1,000",
                "snapshots.orx_load",
                "ms",
                better="lower",
                params={"n": 100_000, "every": 1000, "snapshots": 1},
                scale=1e3,
                prepare="snapshots.orx_build",
            ),
            Row(
                "orx_nosnap",
                "orchestrix  same store, loaded without snapshots",
                "snapshots.orx_load",
                "ms",
                better="lower",
                params={"n": 100_000, "every": 1000, "snapshots": 0},
                scale=1e3,
                prepare="snapshots.orx_build",
            ),
            Row(
                "es_snap",
                "eventsourcing SQLite  same, snapshotting_intervals 1,000",
                "snapshots.es_load",
                "ms",
                better="lower",
                params={"n": 100_000, "every": 1000},
                scale=1e3,
                prepare="snapshots.es_build",
            ),
        ],
        [
            Check("load 100k: without snapshots / with", "orx_snap", "orx_nosnap", 50.0, source="issue 15"),
            Check(
                "load 100k: peer with snapshots / orchestrix", "orx_snap", "es_snap", 3.0, source="issue 15"
            ),
        ],
    ),
    "projection": (
        [
            Row(
                "orx_catchup",
                "orchestrix ProjectionRunner  catch up on 1M events (file store, typed events)",
                "projection.orx_catchup",
                "ev/s",
                params={"n": 1_000_000},
                prepare="projection.orx_build",
            ),
            Row(
                "orx_read_all",
                "floor: file store read_all 1M events, nothing done per event",
                "projection.orx_read_all",
                "ev/s",
                params={"n": 1_000_000},
                prepare="projection.orx_build",
            ),
            Row(
                "es_catchup",
                "eventsourcing SQLite  pull notifications + decode 1M (its followers' loop)",
                "projection.es_catchup",
                "ev/s",
                params={"n": 1_000_000},
                prepare="projection.es_build",
            ),
        ],
        [
            Check(
                "catch-up >= 250k ev/s",
                "orx_catchup",
                None,
                250_000,
                kind="min",
                source="issue 19",
            ),
            Check("catch-up: orchestrix vs peer", "orx_catchup", "es_catchup", None),
            Check("catch-up / read_all floor (info)", "orx_catchup", "orx_read_all", None),
        ],
    ),
    "growth": (
        [
            *(
                Row(
                    f"growth_{name}",
                    f"orchestrix FileEventStore  1 event/append, sync=False, store holding {name} events",
                    "growth.append_rate",
                    "ev/s",
                    params={"n": 100_000, "events": events},
                    prepare="growth.fill",
                )
                for name, events in GROWTH_SIZES
            ),
            Row(
                "growth_disk",
                f"orchestrix  disk use while open / after close, filling to {GROWTH_SIZES[-1][0]} events",
                "growth.disk_ratio",
                "x",
                better="lower",
                params={"events": GROWTH_SIZES[-1][1]},
                prepare="growth.fill",
            ),
        ],
        [
            *(
                Check(f"appends at {name} / empty store (info)", f"growth_{name}", "growth_0", None)
                for name, _ in GROWTH_SIZES[1:-1]
            ),
            Check(
                f"appends at {GROWTH_SIZES[-1][0]} / empty store",
                f"growth_{GROWTH_SIZES[-1][0]}",
                "growth_0",
                0.9,
                source="issue 19",
            ),
            Check(
                "disk use while open / after close", "growth_disk", None, 1.2, kind="max", source="issue 19"
            ),
        ],
    ),
}
ON_DEMAND = ("growth",)
"""Suites that only run when named."""

QUICK_KEYS = ("n",)


# -- environment ---------------------------------------------------------------------------


def ensure_venv() -> None:
    """Create bench/.venv with the peer and orchestrix (editable) unless it is already there."""
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if os.path.exists(VENV_PY) and os.path.exists(MARKER):
        with open(MARKER) as f:
            if f.read() == wanted:
                return
    print(f"bench: creating {VENV} (eventsourcing 9.5.6, psycopg, orchestrix editable) ...", flush=True)
    if not os.path.exists(VENV_PY):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pip = [VENV_PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    subprocess.run([*pip, "-e", ROOT], check=True)
    with open(MARKER, "w") as f:
        f.write(wanted)


def versions() -> dict[str, str]:
    """Versions of what is measured, read inside the bench venv."""
    code = (
        "import json, sys, sqlite3\n"
        "from importlib.metadata import version as v\n"
        "print(json.dumps({'python': sys.version.split()[0], 'sqlite': sqlite3.sqlite_version,"
        " 'eventsourcing': v('eventsourcing'), 'orchestrix-es': v('orchestrix-es'),"
        " 'psycopg': v('psycopg'), 'attrs': v('attrs')}))"
    )
    out = subprocess.run([VENV_PY, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def git_commit() -> str:
    """The checkout's HEAD (plus '+dirty' if tracked files changed)."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD"], check=False).returncode
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- running -------------------------------------------------------------------------------


PEER_PREFIXES = ("es_", "raw_")
"""Workloads (by function name) that measure the peer or the machine, not orchestrix: in a --rev
comparison their two trees run the same code, so their ratio shows the run's noise."""


def export_rev(rev: str) -> str:
    """Export orchestrix/ and bases/ at ``rev`` into a temp dir (read-only use of git); return it.

    ``git archive`` rather than ``git worktree add``: nothing is written to the repository's
    shared metadata, and the children only need the package's files.
    """
    path = tempfile.mkdtemp(prefix="orxbench-code-")
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", rev, "orchestrix", "bases"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    return path


def run_child(
    workload: str, params: dict[str, Any], code: str = ROOT, timeout: int = CHILD_TIMEOUT
) -> dict[str, Any]:
    """Run one workload in a fresh process on the orchestrix tree at ``code``; return its JSON result."""
    args = [VENV_PY, os.path.join(BENCH, "child.py"), workload, *(f"{k}={v}" for k, v in params.items())]
    env = dict(os.environ, PYTHONPATH=code, ORCHESTRIX_BENCH_CODE=code, PYTHONDONTWRITEBYTECODE="1")
    load_before = os.getloadavg()[0]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s", "loadavg_before": load_before}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    if proc.returncode not in (0, EXIT_NOT_LANDED) and "error" not in result:
        result["error"] = f"exit {proc.returncode}"
    if "error" in result and proc.stderr:
        result["stderr"] = proc.stderr.strip()[-2000:]
    result["loadavg_before"] = load_before
    return result


def quick_params(params: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Params for this run; --quick divides event counts by 10."""
    if not quick:
        return dict(params)
    return {k: max(1, v // 10) if k in QUICK_KEYS and isinstance(v, int) else v for k, v in params.items()}


def run_suite(
    name: str, reps: int, quick: bool, trees: dict[str, str] | None = None, only: set[str] | None = None
) -> dict[str, Any]:
    """All rows of a suite (or those in ``only``), ``reps`` times, interleaved; then medians and checks.

    ``trees`` maps a label to an orchestrix tree (default: this checkout, labelled ``this``). With
    two trees every row runs on each, one after the other within each repetition, and the
    summary holds both and their comparison row by row.
    """
    trees = trees or {"this": ROOT}
    rows, checks = SUITES[name]
    if only is not None:
        rows = [r for r in rows if r.key in only]
        keys = {r.key for r in rows}
        checks = [c for c in checks if c.a in keys and (c.b is None or c.b in keys)]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t: {row.key: [] for row in rows} for t in trees}
    prepared: dict[tuple[str, str, str], dict[str, Any]] = {}
    tmpdirs: list[str] = []
    load_start = os.getloadavg()
    started = time.time()
    try:
        for rep in range(reps):
            for row in rows:
                # Which tree goes first alternates: the second of two back-to-back runs of the
                # same work finds caches warm and the box in another state.
                order = list(trees.items())
                if rep % 2:
                    order.reverse()
                for tree, code in order:
                    params = quick_params(row.params, quick)
                    tag = f"{row.key}" if len(trees) == 1 else f"{row.key} @{tree}"
                    if row.prepare:
                        # One preparation per (tree, workload, parameters): rows that read the same
                        # data share it (the growth suite's big stores too); each tree builds its
                        # own, as the format may differ.
                        # (a growth store is known by its size alone: the rate and disk rows share it)
                        what = (
                            str(params["events"])
                            if "events" in params
                            else json.dumps(params, sort_keys=True)
                        )
                        pkey = (tree, row.prepare, what)
                        keep = os.environ.get(GROWTH_KEEP) if row.prepare == "growth.fill" else None
                        if pkey not in prepared:
                            if keep:  # kept between runs: a store is only grown to the size asked
                                path = os.path.join(keep, tree, str(params["events"]))
                                os.makedirs(path, exist_ok=True)
                            else:
                                path = tempfile.mkdtemp(
                                    prefix=f"orxbench-{row.key}-", dir=os.environ.get(BENCH_TMP)
                                )
                                tmpdirs.append(path)
                            print(f"  [{name}] preparing {tag} in {path} ...", flush=True)
                            prepared[pkey] = run_child(
                                row.prepare, {**params, "dir": path}, code, PREPARE_TIMEOUT
                            )
                            prepared[pkey]["dir"] = path
                        prep = prepared[pkey]
                        if "error" in prep or "not_landed" in prep:
                            results[tree][row.key].append(dict(prep))
                            continue
                        params["dir"] = prep["dir"]
                    result = run_child(row.workload, params, code)
                    results[tree][row.key].append(result)
                    print(f"  [{name}] rep {rep + 1}/{reps} {tag}: {_brief(result, row)}", flush=True)
    finally:
        for path in tmpdirs:
            subprocess.run(["rm", "-rf", path], check=False)
    by_key = {r.key: r for r in rows}
    summaries: dict[str, dict[str, Any]] = {}
    for tree in trees:
        rows_out = {row.key: _row_summary(row, results[tree][row.key]) for row in rows}
        summaries[tree] = {"rows": rows_out, "checks": [_check(c, by_key, rows_out) for c in checks]}
    first = next(iter(trees))
    summary: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "reps": reps,
        "rows": summaries[first]["rows"],
        "checks": summaries[first]["checks"],
        "prepared": {" ".join(k[:2]): v for k, v in prepared.items()},
    }
    if len(trees) > 1:
        summary["trees"] = {tree: {"code": code, **summaries[tree]} for tree, code in trees.items()}
        other = list(trees)[1]
        summary["compare"] = compare_rows(rows, summaries[first]["rows"], summaries[other]["rows"])
    return summary


WORSE_BELOW = 0.95


def compare_rows(rows: list[Row], this: dict[str, Any], rev: dict[str, Any]) -> list[dict[str, Any]]:
    """Row by row, this tree vs the other: ratio of medians (> 1: this is better), per-rep range."""
    out = []
    for row in rows:
        a, b = this[row.key], rev[row.key]
        item: dict[str, Any] = {"key": row.key, "label": row.label, "unit": row.unit}
        noise = row.workload.partition(".")[2].startswith(PEER_PREFIXES)
        if "median" not in a or "median" not in b:
            item["verdict"] = "n/a"
        else:
            paired = [_ratio(row, x, y) for x, y in zip(a["values"], b["values"], strict=False)]
            ratio = _ratio(row, a["median"], b["median"])
            item.update(this=a["median"], rev=b["median"], ratio=ratio, paired_min=min(paired))
            item["paired_max"] = max(paired)
            judged = ratio
            if "cpu_median" in a and "cpu_median" in b:
                # Judged on CPU time when the row reports it: on a shared box it moves far less.
                judged = item["cpu_ratio"] = a["cpu_median"] / b["cpu_median"]
            if noise:
                item["verdict"] = "noise (peer/ceiling: same code on both sides)"
            else:
                item["verdict"] = "WORSE" if judged < WORSE_BELOW else "ok"
        out.append(item)
    return out


def _brief(result: dict[str, Any], row: Row) -> str:
    if "not_landed" in result:
        return f"not landed ({result['not_landed']})"
    if "error" in result:
        return f"ERROR {result['error']}"
    rate = result.get("events_per_s", result.get("events_per_second"))
    extra = ""
    if "max" in result:  # a lag row: its worst tick, and what the writers did meanwhile
        extra = f" (max {_fmt(result['max'] * row.scale)}" + (f", {_fmt(rate)} ev/s)" if rate else ")")
    return f"{_fmt(result['value'] * row.scale)} {row.unit}{extra}"


def _row_summary(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["value"] for r in runs if "value" in r]
    out: dict[str, Any] = {
        "label": row.label,
        "workload": row.workload,
        "params": row.params,
        "unit": row.unit,
        "better": row.better,
        "scale": row.scale,
        "values": values,
        "runs": runs,
    }
    if values:
        out.update(median=statistics.median(values), min=min(values), max=max(values))
        cpu = [r["cpu_ev_per_s"] for r in runs if r.get("cpu_ev_per_s")]
        if cpu and len(cpu) == len(values):  # the same rate over the process's CPU time
            out.update(cpu_median=statistics.median(cpu), cpu_min=min(cpu), cpu_max=max(cpu))
    else:
        reasons = {r.get("not_landed") or r.get("error") for r in runs}
        out["status"] = "not landed" if any("not_landed" in r for r in runs) else "error"
        out["reason"] = "; ".join(sorted(str(x) for x in reasons))[:500]
    return out


def _ratio(row: Row, a: float, b: float) -> float:
    return a / b if row.better == "higher" else b / a


def _check(check: Check, rows: dict[str, Row], summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": check.label,
        "a": check.a,
        "b": check.b,
        "kind": check.kind,
        "target": check.target,
        "source": check.source,
    }
    ra = summary[check.a]
    if "median" not in ra or (check.b and "median" not in summary[check.b]):
        out["result"] = "N/A"
        return out
    row = rows[check.a]
    if check.b is None:
        value = ra["median"]
        out["value"] = value
        if check.target is None:
            out["result"] = "info"
        elif check.kind == "max":
            out["result"] = "PASS" if value <= check.target else "MISS"
        else:
            out["result"] = "PASS" if value >= check.target else "MISS"
        return out
    rb = summary[check.b]
    ratio = _ratio(row, ra["median"], rb["median"])
    paired = [_ratio(row, a, b) for a, b in zip(ra["values"], rb["values"], strict=False)]
    out.update(ratio=ratio, paired_min=min(paired), paired_max=max(paired))
    out["result"] = "info" if check.target is None else ("PASS" if ratio >= check.target else "MISS")
    return out


# -- output --------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def print_suite(name: str, summary: dict[str, Any]) -> None:
    """The readable table for one suite."""
    load = summary["loadavg_start"][0], summary["loadavg_end"][0]
    header = f"reps {summary['reps']}, {summary['seconds']} s, load avg {load[0]:.2f} -> {load[1]:.2f}"
    print(f"\n== {name}  ({header})")
    width = max(len(r["label"]) for r in summary["rows"].values())
    for row in summary["rows"].values():
        if "median" in row:
            s = row["scale"]
            value = f"{_fmt(row['median'] * s):>10}  [{_fmt(row['min'] * s)} - {_fmt(row['max'] * s)}]"
            print(f"  {row['label']:<{width}}  {value:<34} {row['unit']}")
            if "cpu_median" in row:
                cpu = f"{_fmt(row['cpu_median'])}  [{_fmt(row['cpu_min'])} - {_fmt(row['cpu_max'])}]"
                print(f"  {'  (same, per second of its CPU time)':<{width}}  {cpu:>10}{'':<4} {row['unit']}")
        else:
            print(f"  {row['label']:<{width}}  {row['status'].upper()}: {row['reason'][:150]}")
    print()
    cwidth = max((len(c["label"]) for c in summary["checks"]), default=0)
    for c in summary["checks"]:
        if c["result"] == "N/A":
            shown = "n/a"
        elif "ratio" in c:
            shown = f"{c['ratio']:.2f}x [{c['paired_min']:.2f}-{c['paired_max']:.2f}]"
        else:
            unit = summary["rows"][c["a"]]["unit"]
            shown = f"{_fmt(c['value'] * summary['rows'][c['a']]['scale'])} {unit}"
        if c["target"] is None:
            target = ""
        elif c["kind"] == "ratio":
            target = f">= {c['target']:g}x"
        else:
            a = summary["rows"][c["a"]]
            target = f"{'<=' if c['kind'] == 'max' else '>='} {_fmt(c['target'] * a['scale'])} {a['unit']}"
        print(f"  {c['label']:<{cwidth}}  {shown:<24} {target:<10} {c['result']}")


def print_compare(name: str, rev: str, summary: dict[str, Any]) -> None:
    """This tree vs ``rev``, row by row, measured in the same run."""
    load = summary["loadavg_start"][0], summary["loadavg_end"][0]
    print(f"\n== {name}: this tree vs {rev}, same run (load avg {load[0]:.2f} -> {load[1]:.2f})")
    width = max(len(c["label"]) for c in summary["compare"])
    for c in summary["compare"]:
        if "ratio" not in c:
            print(f"  {c['label']:<{width}}  n/a")
            continue
        row = summary["rows"][c["key"]]
        values = f"{_fmt(c['this'] * row['scale'])} vs {_fmt(c['rev'] * row['scale'])} {c['unit']}"
        shown = f"{c['ratio']:.2f}x [{c['paired_min']:.2f}-{c['paired_max']:.2f}]"
        if "cpu_ratio" in c:
            shown += f", CPU time {c['cpu_ratio']:.2f}x"
        print(f"  {c['label']:<{width}}  {values:<32} {shown:<36} {c['verdict']}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the suites, print tables, write JSON."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="any of: " + ", ".join(SUITES))
    parser.add_argument("--reps", type=int, default=5, help="repetitions per workload (default 5)")
    parser.add_argument("--json", dest="json_path", help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="event counts / 10, for a smoke run")
    parser.add_argument(
        "--rev",
        help="also measure orchestrix as committed at this git revision, interleaved in the same run, "
        "and print this tree / REV per row (WORSE below 0.95)",
    )
    parser.add_argument(
        "--rows", help="comma-separated row keys: run only these (and the checks between them)"
    )
    args = parser.parse_args(argv)
    suites = args.suites or [s for s in SUITES if s not in ON_DEMAND]
    only = set(args.rows.split(",")) if args.rows else None
    if only is not None:
        suites = [s for s in suites if any(r.key in only for r in SUITES[s][0])]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    ensure_venv()
    trees = {"this": ROOT}
    if args.rev:
        trees[args.rev] = export_rev(args.rev)
    meta = {
        "command": " ".join(["python3", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(),
        "code": "working tree"
        + (f", compared with git archive {args.rev} ({_rev(args.rev)})" if args.rev else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "loadavg_start": os.getloadavg(),
        },
        "versions": versions(),
        "reps": args.reps,
        "quick": args.quick,
        "method": "fresh child process and fresh store per repetition; repetitions interleaved across "
        "workloads; median [min-max]; ratios are of medians, with the min-max of per-repetition ratios",
    }
    print(f"bench: {meta['versions']}  git {meta['git']}  load avg {meta['machine']['loadavg_start'][0]:.2f}")
    out: dict[str, Any] = {"meta": meta, "suites": {}}
    for name in suites:
        print(f"\n-- running {name} ...", flush=True)
        out["suites"][name] = run_suite(name, args.reps, args.quick, trees, only)
        print_suite(name, out["suites"][name])
        if args.rev:
            print_compare(name, args.rev, out["suites"][name])
    meta["loadavg_end"] = os.getloadavg()
    path = args.json_path or os.path.join(BENCH, "results", time.strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nJSON: {path}")
    if args.rev:
        subprocess.run(["rm", "-rf", trees[args.rev]], check=False)
    return 0


def _rev(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True, check=False
    ).stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
