"""Issue 3: the durable file store vs the peer's SQLite store (as it ships) vs the disk's fsync ceiling."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

from workloads.common import (
    clock,
    duration,
    payload,
    peak_rss,
    rate,
    require,
    run_processes,
    run_threads,
    temp_dir,
)

RAW_RECORD_BYTES = 256


def _file_store() -> Any:
    return require("orchestrix.infrastructure.file", "FileEventStore")


def _orx(path: str, sync: bool = True) -> tuple[Any, Any]:
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from workloads.orx_model import serializer

    store = _file_store()(path, serializer(), sync=sync)
    return store, AggregateRepository(event_store=store)


# -- one writer, one event per append ------------------------------------------------------


def raw_write1(n: int = 10_000) -> dict[str, Any]:
    """Ceiling: append a 256-byte record to a growing file and fdatasync, ``n`` times."""
    record = (payload(0) * 2).encode()[:RAW_RECORD_BYTES]
    with temp_dir() as path:
        fd = os.open(os.path.join(path, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dir_fd = os.open(path, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        try:
            start = clock()
            for _ in range(n):
                os.write(fd, record)
                os.fdatasync(fd)
            seconds = clock() - start
        finally:
            os.close(fd)
    return rate(n, seconds)


def orx_write1(n: int = 10_000) -> dict[str, Any]:
    """orchestrix: create and save ``n`` new aggregates, one durable append each."""
    from workloads.orx_model import save_new_notes

    with temp_dir() as path:
        store, repo = _orx(os.path.join(path, "store"))
        seconds = save_new_notes(repo, [payload(i) for i in range(n)])
        assert store.last_position() >= n
        store.close()
    return rate(n, seconds)


def orx_build_indexed(dir: str, n: int = 0, events: int = 50_000) -> dict[str, Any]:
    """Prepare once per run: ``events`` new aggregates of one event each, all covered by the index.

    (``n`` is the measured row's own count, which the preparation is handed too.)
    """
    from workloads.orx_model import save_new_notes

    store, repo = _orx(os.path.join(dir, "store"), sync=False)
    seconds = save_new_notes(repo, [payload(i) for i in range(events)])
    store.close()  # the last checkpoint: the index covers every event
    return duration(seconds, events=events)


def orx_write1_indexed(dir: str, n: int = 5_000) -> dict[str, Any]:
    """orchestrix: one writer, one event per append, on a store whose index holds 50k+ events."""
    import time

    from workloads.orx_model import save_new_notes

    store, repo = _orx(os.path.join(dir, "store"))
    save_new_notes(repo, [payload(i) for i in range(100)])  # the first append starts the index filters
    deadline = time.monotonic() + 60
    while not store._view.seen.ready and time.monotonic() < deadline:  # measure the steady state
        time.sleep(0.01)
    seconds = save_new_notes(repo, [payload(i) for i in range(n)])
    store.close()
    return rate(n, seconds)


def es_write1(n: int = 10_000) -> dict[str, Any]:
    """eventsourcing SQLite: create and save ``n`` new aggregates, one commit each."""
    from workloads.es_model import Note, sqlite_app

    with temp_dir() as path:
        app = sqlite_app(os.path.join(path, "es.sqlite"))
        texts = [payload(i) for i in range(n)]
        start = clock()
        for text in texts:
            app.save(Note(text=text))
        seconds = clock() - start
        assert app.recorder.max_notification_id() == n
        app.close()
    return rate(n, seconds)


# -- concurrent writers --------------------------------------------------------------------


def orx_write8(n: int = 16_000, threads: int = 8) -> dict[str, Any]:
    """orchestrix: ``threads`` writers, each saving one event at a time to its own aggregate."""
    from workloads.orx_model import Note

    per_thread = n // threads
    with temp_dir() as path:
        store, repo = _orx(os.path.join(path, "store"))

        def work(i: int) -> None:
            note = Note()
            note_id = str(uuid.uuid4())
            for k in range(per_thread):
                note.write(note_id, payload(k))
                repo.save(note)

        seconds = run_threads(threads, work)
        assert store.last_position() >= per_thread * threads
        store.close()
    return rate(per_thread * threads, seconds)


def orx_write8_async(n: int = 16_000, tasks: int = 8) -> dict[str, Any]:
    """orchestrix: ``tasks`` asyncio tasks, each saving one event at a time to its own aggregate."""
    import asyncio

    from workloads.orx_model import Note

    per_task = n // tasks
    with temp_dir() as path:
        store, repo = _orx(os.path.join(path, "store"))

        async def work() -> None:
            note = Note()
            note_id = str(uuid.uuid4())
            for k in range(per_task):
                note.write(note_id, payload(k))
                await repo.save_async(note)

        async def main() -> float:
            start = clock()
            await asyncio.gather(*(work() for _ in range(tasks)))
            return clock() - start

        seconds = asyncio.run(main())
        assert store.last_position() >= per_task * tasks
        store.close()
    return rate(per_task * tasks, seconds)


def es_write8(n: int = 8_000, threads: int = 8) -> dict[str, Any]:
    """eventsourcing SQLite: ``threads`` writers, each saving one event at a time to its own aggregate."""
    from workloads.es_model import Note, sqlite_app

    per_thread = n // threads
    with temp_dir() as path:
        app = sqlite_app(os.path.join(path, "es.sqlite"))

        def work(i: int) -> None:
            note = Note(text=payload(0))
            app.save(note)
            for k in range(1, per_thread):
                note.write(payload(k))
                app.save(note)

        seconds = run_threads(threads, work)
        assert app.recorder.max_notification_id() == per_thread * threads
        app.close()
    return rate(per_thread * threads, seconds)


# -- loading -------------------------------------------------------------------------------

NOTE_ID = "00000000-0000-4000-8000-000000000001"


def orx_build_stream(dir: str, n: int = 10_000, batch: int = 1000) -> dict[str, Any]:
    """Write one aggregate of ``n`` events into the store at ``dir`` (no fsync per batch)."""
    from workloads.orx_model import Note

    store, repo = _orx(dir, sync=False)
    note = Note()
    start = clock()
    for i in range(n):
        note.write(NOTE_ID, payload(i))
        if (i + 1) % batch == 0:
            repo.save(note)
    repo.save(note)
    seconds = clock() - start
    store.close()
    return duration(seconds, events=n)


def es_build_stream(dir: str, n: int = 10_000, batch: int = 1000) -> dict[str, Any]:
    """Write one aggregate of ``n`` events into a SQLite database in ``dir``; print its id."""
    from workloads.es_model import Note, sqlite_app

    app = sqlite_app(os.path.join(dir, "es.sqlite"))
    note = Note(text=payload(0))
    start = clock()
    for i in range(1, n):
        note.write(payload(i))
        if (i + 1) % batch == 0:
            app.save(note)
    app.save(note)
    seconds = clock() - start
    app.close()
    return duration(seconds, events=n, note_id=str(note.id))


def _build_in_child(name: str, dir: str, n: int) -> dict[str, Any]:
    """Build a store in a separate process, so its memory does not count against the loader."""
    import json

    child = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child.py")
    out = subprocess.run(
        [sys.executable, child, f"file.{name}", f"dir={dir}", f"n={n}"],
        capture_output=True,
        text=True,
        check=False,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if out.returncode == 3:
        from workloads.common import NotLanded

        raise NotLanded(result.get("not_landed", "not landed"))
    if out.returncode != 0:
        raise RuntimeError(f"building {name} failed: {result} {out.stderr[-1000:]}")
    return result


def orx_load(n: int = 10_000) -> dict[str, Any]:
    """orchestrix: open the store, then time loading one aggregate of ``n`` events."""
    from workloads.orx_model import Note

    with temp_dir() as path:
        store_path = os.path.join(path, "store")
        _build_in_child("orx_build_stream", store_path, n)
        store, repo = _orx(store_path)
        start = clock()
        note = repo.load(Note, NOTE_ID)
        seconds = clock() - start
        assert note.version == n - 1 and note.text == payload(n - 1)
        store.close()
    return duration(seconds, events=n, per_event_us=seconds / n * 1e6)


def es_load(n: int = 10_000) -> dict[str, Any]:
    """eventsourcing SQLite: open the application, then time loading one aggregate of ``n`` events."""
    from workloads.es_model import sqlite_app

    with temp_dir() as path:
        built = _build_in_child("es_build_stream", path, n)
        app = sqlite_app(os.path.join(path, "es.sqlite"))
        start = clock()
        note = app.repository.get(uuid.UUID(built["note_id"]))
        seconds = clock() - start
        assert note.version == n and note.text == payload(n - 1)
        app.close()
    return duration(seconds, events=n, per_event_us=seconds / n * 1e6)


def orx_rss(n: int = 100_000) -> dict[str, Any]:
    """orchestrix: peak RSS growth (bytes) while opening the store and loading one ``n``-event aggregate."""
    from workloads.orx_model import Note

    with temp_dir() as path:
        store_path = os.path.join(path, "store")
        _build_in_child("orx_build_stream", store_path, n)
        versions: list[int] = []

        def open_store() -> Any:
            return _orx(store_path)

        def load(handle: Any) -> None:
            versions.append(handle[1].load(Note, NOTE_ID).version)

        result = peak_rss(open_store, load)
        result.pop("handle")[0].close()
    assert versions == [n - 1], versions
    return {**result, "bytes_per_event": result["value"] / n}


def es_rss(n: int = 100_000) -> dict[str, Any]:
    """eventsourcing SQLite: the same measure for the peer's application."""
    from workloads.es_model import sqlite_app

    with temp_dir() as path:
        built = _build_in_child("es_build_stream", path, n)
        note_id = uuid.UUID(built["note_id"])
        versions: list[int] = []

        def open_store() -> Any:
            return sqlite_app(os.path.join(path, "es.sqlite"))

        def load(app: Any) -> None:
            versions.append(app.repository.get(note_id).version)

        result = peak_rss(open_store, load)
        result.pop("handle").close()
    assert versions == [n], versions
    return {**result, "bytes_per_event": result["value"] / n}


# -- opening a big store -------------------------------------------------------------------

EVENTS_PER_STREAM = 10


def orx_build(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """Prepare once per run: ``n`` events in ``n/10`` streams of 10, written with sync=False."""
    from workloads.orx_model import NoteWritten, serializer

    store = _file_store()(os.path.join(dir, "store"), serializer(), sync=False)
    text = payload(0)
    start = clock()
    for s in range(n // EVENTS_PER_STREAM):
        note_id = f"{s:08d}-0000-4000-8000-000000000000"
        store.append(f"Note-{note_id}", [NoteWritten(note_id, text)] * EVENTS_PER_STREAM, -1)
    store.close()
    return duration(clock() - start, events=n)


def orx_open(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """Time opening the prepared store in this fresh process, up to answering a stream's version."""
    from workloads.orx_model import serializer

    ser = serializer()
    cls = _file_store()
    start = clock()
    store = cls(os.path.join(dir, "store"), ser, sync=True)
    last = store.last_position()
    version = store.stream_version(f"Note-{(n // EVENTS_PER_STREAM) // 2:08d}-0000-4000-8000-000000000000")
    seconds = clock() - start
    store.close()
    assert last >= n and version == EVENTS_PER_STREAM - 1, (last, version)
    return duration(seconds, events=n)


# -- issue 19: the in-place sync ceiling, several writer processes, event-loop lag --------------


def raw_pwrite1(n: int = 10_000) -> dict[str, Any]:
    """Ceiling: pwrite a 256-byte record into a preallocated, zero-written file, fdatasync each.

    The file's blocks exist and are written before timing, so each sync flushes data only (no
    size or block-map change to journal): the least a durable append can cost on this disk.
    """
    record = (payload(0) * 2).encode()[:RAW_RECORD_BYTES]
    with temp_dir() as path:
        fd = os.open(os.path.join(path, "log"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            chunk = bytes(1 << 20)
            for offset in range(0, n * RAW_RECORD_BYTES + len(chunk), len(chunk)):
                os.pwrite(fd, chunk, offset)
            os.fsync(fd)
            start = clock()
            for i in range(n):
                os.pwrite(fd, record, i * RAW_RECORD_BYTES)
                os.fdatasync(fd)
            seconds = clock() - start
        finally:
            os.close(fd)
    return rate(n, seconds)


def _proc_worker(i: int, barrier: Any, results: Any, path: str, count: int) -> None:
    import time

    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from workloads.orx_model import Note, serializer

    try:
        store = _file_store()(path, serializer(), sync=True)
        repo = AggregateRepository(event_store=store)
        texts = [payload(k) for k in range(count)]
        barrier.wait()
        start = time.perf_counter()
        for text in texts:
            note = Note()
            note.write(str(uuid.uuid4()), text)
            repo.save(note)
        end = time.perf_counter()
        store.close()
        results.put((start, end))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise


def orx_write_procs(n: int = 4_000, procs: int = 4) -> dict[str, Any]:
    """orchestrix: ``procs`` processes on one store, each saving new one-event aggregates."""
    per = n // procs
    with temp_dir() as path:
        store_path = os.path.join(path, "store")
        _file_store()(store_path, require("workloads.orx_model", "serializer")(), sync=True).close()
        seconds = run_processes(procs, _proc_worker, (store_path, per), timeout=600)
        store = _file_store()(store_path, require("workloads.orx_model", "serializer")(), sync=True)
        assert store.last_position() >= per * procs
        store.close()
    return rate(per * procs, seconds)


def _lag(open_store: Any, n: int, tasks: int, tick: float = 0.001, stat: str = "p99") -> dict[str, Any]:
    """How late a ticker sleeping ``tick`` wakes while ``tasks`` asyncio tasks append (``n`` events)."""
    import asyncio
    import statistics
    import time

    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from workloads.orx_model import Note

    per_task = n // tasks if tasks else 0

    async def main() -> tuple[list[float], float]:
        store = open_store()
        repo = AggregateRepository(event_store=store) if store is not None else None
        lates: list[float] = []
        stop = False

        async def ticker() -> None:
            while not stop:
                before = time.perf_counter()
                await asyncio.sleep(tick)
                lates.append(time.perf_counter() - before - tick)

        async def work() -> None:
            note = Note()
            note_id = str(uuid.uuid4())
            for k in range(per_task):
                note.write(note_id, payload(k))
                await repo.save_async(note)  # type: ignore[union-attr]

        tick_task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)  # warm up
        lates.clear()
        start = clock()
        if tasks:
            await asyncio.gather(*(work() for _ in range(tasks)))
        else:
            await asyncio.sleep(2.0)
        seconds = clock() - start
        stop = True
        await tick_task
        if store is not None:
            store.close()
        return lates, seconds

    lates, seconds = asyncio.run(main())
    lates.sort()
    p99 = lates[min(len(lates) - 1, int(len(lates) * 0.99))]
    return {
        "value": p99 if stat == "p99" else lates[-1],
        "p50": statistics.median(lates),
        "p99": p99,
        "max": lates[-1],
        "ticks": len(lates),
        "events_per_s": per_task * tasks / seconds if tasks else 0.0,
        "seconds": seconds,
    }


def lag_file(n: int = 16_000, tasks: int = 8, stat: str = "p99") -> dict[str, Any]:
    """Loop lag (p99, or ``stat="max"``, of a 1 ms ticker) while 8 tasks append to the file store."""
    with temp_dir() as path:
        return _lag(lambda: _orx(os.path.join(path, "store"))[0], n, tasks, stat=stat)


def lag_idle(n: int = 0, tasks: int = 0) -> dict[str, Any]:
    """Floor: the same ticker on an idle loop for 2 s."""
    return _lag(lambda: None, n, 0)


def lag_pg(n: int = 4_000, tasks: int = 8) -> dict[str, Any]:
    """The same loop lag with the PostgreSQL store (its asyncio appends) under the same load."""
    from workloads.postgres import _pg_store, fresh_schema

    with fresh_schema("lag") as schema:
        _pg_store(schema).close()
        return _lag(lambda: _pg_store(schema), n, tasks)


def _raw_proc(i: int, barrier: Any, results: Any, path: str, count: int, procs: int) -> None:
    import time

    record = (payload(0) * 2).encode()[:RAW_RECORD_BYTES]
    fd = os.open(path, os.O_RDWR)
    try:
        barrier.wait()
        start = time.perf_counter()
        for k in range(count):
            os.pwrite(fd, record, (k * procs + i) * RAW_RECORD_BYTES)  # interleaved, like one log
            os.fdatasync(fd)
        results.put((start, time.perf_counter()))
    finally:
        os.close(fd)


def raw_pwrite_procs(n: int = 8_000, procs: int = 4) -> dict[str, Any]:
    """Ceiling for several writer processes: each pwrites records into one preallocated file and
    fdatasyncs after each, with no lock: how many concurrent syncs the disk takes at once."""
    per = n // procs
    with temp_dir() as path:
        log = os.path.join(path, "log")
        fd = os.open(log, os.O_RDWR | os.O_CREAT, 0o644)
        chunk = bytes(1 << 20)
        for offset in range(0, n * RAW_RECORD_BYTES + len(chunk), len(chunk)):
            os.pwrite(fd, chunk, offset)
        os.fsync(fd)
        os.close(fd)
        seconds = run_processes(procs, _raw_proc, (log, per, procs), timeout=600)
    return rate(per * procs, seconds)
