"""Issue 19 item 8: cost that does not grow with the store, and disk use that does not grow with uptime.

A store is filled once per size (100-event appends, ``sync=False``) and kept between the rows of
a run; each measured row opens it in a fresh process, appends single events to new streams
(``sync=False``: the CPU of an append, not the disk's sync) and reports the rate, beside the
disk use sampled while the store was open and after it closed.

Big stores need a big disk: ``ORCHESTRIX_BENCH_TMP`` picks the directory (10M events take
about 2.6 GB); ``ORCHESTRIX_BENCH_GROWTH_KEEP`` keeps the stores between runs (a kept store is
only grown to the size asked). Sizes come from ``ORCHESTRIX_BENCH_GROWTH`` (events, comma
separated; default ``0,1000000,3000000,10000000``). The rates are CPU-bound: on a shared machine
compare ``cpu_us_per_event`` (every thread of the process) as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any

from workloads.common import clock, payload, require

FILL_BATCH = 100
"""Events per append while filling."""
PROBE_EVERY = 20
"""Fill appends between two samples of the disk use."""


def _store(dir: str) -> Any:
    from workloads.orx_model import serializer

    cls = require("orchestrix.infrastructure.file", "FileEventStore")
    return cls(os.path.join(dir, "store"), serializer(), sync=False)


def disk_use(path: str) -> int:
    """Bytes the store's directory takes on disk (allocated blocks, so sparse files count as they are)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a WAL file removed meanwhile
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def _grow(dir: str, events: int) -> dict[str, Any]:
    """Append 100-event batches to new streams until the store holds ``events``; disk use open and closed."""
    from workloads.orx_model import NoteWritten

    store = _store(dir)
    text = payload(0)
    start = clock()
    have = first = store.last_position()
    peak = disk_use(dir)
    k = 0
    while have < events:
        note_id = str(uuid.uuid4())
        store.append(f"Note-{note_id}", [NoteWritten(note_id, text) for _ in range(FILL_BATCH)], -1)
        have += FILL_BATCH
        k += 1
        if k % PROBE_EVERY == 0:
            peak = max(peak, disk_use(dir))
    peak = max(peak, disk_use(dir))
    store.close()
    seconds = clock() - start
    closed = disk_use(dir)
    return {
        "value": seconds,
        "seconds": seconds,
        "events": have - first,
        "store_events": have,
        "disk_open_peak": peak,
        "disk_closed": closed,
    }


def fill(dir: str, events: int = 0, n: int = 0) -> dict[str, Any]:
    """Prepare once per run: a store of ``events`` events (``n`` is the measured rows' own count)."""
    return _grow(dir, events)


def disk_ratio(dir: str, events: int = 0, more: int = 200_000) -> dict[str, Any]:
    """Grow the prepared store by ``more`` events: the peak disk use while open over the use after close."""
    store = _store(dir)
    have = store.last_position()
    store.close()
    result = _grow(dir, have + more)
    result["value"] = result["disk_open_peak"] / result["disk_closed"]
    return result


def append_rate(dir: str, n: int = 20_000, events: int = 0) -> dict[str, Any]:
    """Single-event appends to new streams on the prepared store (sync=False), filters built, until closed."""
    import time

    from workloads.orx_model import NoteWritten

    if not events:  # the empty store's row: empty at every repetition
        shutil.rmtree(os.path.join(dir, "store"), ignore_errors=True)
    store = _store(dir)
    size = store.last_position()
    text = payload(1)
    first = str(uuid.uuid4())
    store.append(f"Note-{first}", [NoteWritten(first, text)], -1)  # starts the filters' build
    deadline = time.monotonic() + 300
    while size and not store._view.seen.ready and time.monotonic() < deadline:  # the steady state
        time.sleep(0.01)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    peak = disk_use(dir)
    cpu = time.process_time()
    start = clock()
    for i, note_id in enumerate(ids):
        store.append(f"Note-{note_id}", [NoteWritten(note_id, text)], -1)
        if i % 2000 == 0:
            peak = max(peak, disk_use(dir))
    appended = clock() - start
    peak = max(peak, disk_use(dir))
    # Up to the close, whose last checkpoint indexes what is left: index work a background
    # thread had not caught up with would otherwise flatter a store that indexes slowly.
    store.close()
    seconds = clock() - start
    cpu = time.process_time() - cpu  # every thread's: the appends' and the index checkpoints'
    closed = disk_use(dir)
    return {
        "value": n / seconds,
        "cpu_us_per_event": cpu / n * 1e6,
        "events": n,
        "seconds": seconds,
        "append_seconds": appended,
        "store_events": size,
        "disk_open_peak": peak,
        "disk_closed": closed,
    }
