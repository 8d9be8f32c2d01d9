"""Issue 19 item 6: a projection catching up on 1M stored events, decoded into typed events.

The same store is built once per run (prepare) for each library: ``n`` events in streams of 10,
each a 128-character note. Measured in a fresh process that opens the store:

- ``orx_catchup``: a :class:`ProjectionRunner` feeding one projection (the latest text of each
  note, a dict) from the file store, pages of 500, checkpoints in memory, until idle;
- ``orx_read_all``: the floor, ``store.read_all()`` iterated with nothing done per event;
- ``es_catchup``: the peer's equivalent on its SQLite store, as its ``system.Follower`` pulls:
  ``recorder.select_notifications`` in sections of 500, each notification decoded by the
  application's mapper into its domain event and handed to the same dict projection.
  (eventsourcing 9.5.6's ``ProjectionRunner`` needs a recorder with subscriptions, which its
  SQLite recorder does not have; the pull loop is what its followers do on SQLite.)
"""

from __future__ import annotations

import os
import time
from typing import Any

from workloads.common import clock, duration, payload, rate, require

STREAM_EVENTS = 10
PAGE = 500


def _with_cpu(result: dict[str, Any], cpu: float) -> dict[str, Any]:
    """Add the process's CPU time: on a shared machine it moves less than the wall clock."""
    result["cpu_seconds"] = cpu
    result["cpu_ev_per_s"] = result["events"] / cpu if cpu > 0 else None
    return result


def _note_id(s: int) -> str:
    return f"{s:08d}-0000-4000-8000-000000000000"


def orx_build(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """Prepare: ``n`` events in streams of 10, written with sync=False."""
    from workloads.orx_model import NoteWritten, serializer

    store = require("orchestrix.infrastructure.file", "FileEventStore")(
        os.path.join(dir, "store"), serializer(), sync=False
    )
    start = clock()
    for s in range(n // STREAM_EVENTS):
        note_id = _note_id(s)
        store.append(
            f"Note-{note_id}", [NoteWritten(note_id, payload(s * STREAM_EVENTS + k)) for k in range(10)], -1
        )
    store.close()
    return duration(clock() - start, events=n)


def es_build(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """Prepare: the peer's SQLite store with ``n`` events, 10 per aggregate, 100 aggregates a commit."""
    from workloads.es_model import Note, sqlite_app

    app = sqlite_app(os.path.join(dir, "es.sqlite"))
    start = clock()
    batch = []
    for s in range(n // STREAM_EVENTS):
        note = Note(text=payload(s * STREAM_EVENTS))
        for k in range(1, STREAM_EVENTS):
            note.write(payload(s * STREAM_EVENTS + k))
        batch.append(note)
        if len(batch) == 100:
            app.save(*batch)
            batch = []
    if batch:
        app.save(*batch)
    assert app.recorder.max_notification_id() == n
    app.close()
    return duration(clock() - start, events=n)


def _orx_projection() -> Any:
    from orchestrix.core.execution.projection import Projection, projects
    from workloads.orx_model import NoteWritten

    class Latest(Projection):
        """The latest text of each note."""

        name = "latest"

        def __init__(self) -> None:
            super().__init__()
            self.texts: dict[str, str] = {}

        @projects(NoteWritten)
        def written(self, event: NoteWritten) -> None:
            self.texts[event.note_id] = event.text

    return Latest()


def orx_catchup(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """orchestrix: a projection runner catching up on the prepared file store; events/s."""
    from orchestrix.core.execution.checkpoint import InMemoryCheckpointStore
    from orchestrix.core.execution.projection import ProjectionRunner
    from workloads.orx_model import serializer

    store = require("orchestrix.infrastructure.file", "FileEventStore")(
        os.path.join(dir, "store"), serializer(), sync=False
    )
    projection = _orx_projection()
    runner = ProjectionRunner(store, [projection], InMemoryCheckpointStore(), page_size=PAGE)
    profile = os.environ.get("ORX_BENCH_PROFILE")
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu = time.process_time()
    start = clock()
    read = runner.run_until_idle()
    seconds = clock() - start
    cpu = time.process_time() - cpu
    if profile:
        prof.disable()
        prof.dump_stats(profile)
    store.close()
    assert read == n and len(projection.texts) == n // STREAM_EVENTS, (read, len(projection.texts))
    assert projection.texts[_note_id(0)] == payload(STREAM_EVENTS - 1)
    return _with_cpu(rate(n, seconds), cpu)


def orx_read_all(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """The floor: the file store's read_all iterated to the end, nothing done per event."""
    from workloads.orx_model import serializer

    store = require("orchestrix.infrastructure.file", "FileEventStore")(
        os.path.join(dir, "store"), serializer(), sync=False
    )
    cpu = time.process_time()
    start = clock()
    count = 0
    for _ in store.read_all():
        count += 1
    seconds = clock() - start
    cpu = time.process_time() - cpu
    store.close()
    assert count == n, count
    return _with_cpu(rate(n, seconds), cpu)


def es_catchup(dir: str, n: int = 1_000_000) -> dict[str, Any]:
    """eventsourcing SQLite: pull notifications in sections, decode each into its domain event."""
    from workloads.es_model import Note, sqlite_app

    app = sqlite_app(os.path.join(dir, "es.sqlite"))
    recorder, mapper = app.recorder, app.mapper
    texts: dict[Any, str] = {}
    created, written = Note.Created, Note.Written
    cpu = time.process_time()
    start = clock()
    position = 0
    count = 0
    while True:
        section = recorder.select_notifications(start=position + 1, limit=PAGE)
        if not section:
            break
        for notification in section:
            event = mapper.to_domain_event(notification)
            if isinstance(event, (created, written)):
                texts[event.originator_id] = event.text
            count += 1
        position = section[-1].id
    seconds = clock() - start
    cpu = time.process_time() - cpu
    app.close()
    assert count == n and len(texts) == n // STREAM_EVENTS, (count, len(texts))
    return _with_cpu(rate(n, seconds), cpu)
