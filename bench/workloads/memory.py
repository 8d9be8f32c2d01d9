"""Issue 2: in-memory saves of new aggregates and loading one long aggregate."""

from __future__ import annotations

import uuid
from typing import Any

from workloads.common import clock, duration, payload, rate


def orx_save(n: int = 10_000) -> dict[str, Any]:
    """orchestrix: create and save ``n`` new aggregates of one event each (AggregateRepository)."""
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from orchestrix.infrastructure.memory.store import InMemoryEventStore
    from workloads.orx_model import save_new_notes

    repo = AggregateRepository(event_store=InMemoryEventStore())
    seconds = save_new_notes(repo, [payload(i) for i in range(n)])
    assert repo.event_store.last_position() == n
    return rate(n, seconds)


def es_save(n: int = 10_000) -> dict[str, Any]:
    """eventsourcing: create and save ``n`` new aggregates of one event each (POPO Application)."""
    from workloads.es_model import Note, popo_app

    app = popo_app()
    texts = [payload(i) for i in range(n)]
    start = clock()
    for text in texts:
        app.save(Note(text=text))
    seconds = clock() - start
    assert app.recorder.max_notification_id() == n
    return rate(n, seconds)


def orx_load(n: int = 10_000) -> dict[str, Any]:
    """orchestrix: load one aggregate of ``n`` events from the in-memory store."""
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from orchestrix.infrastructure.memory.store import InMemoryEventStore
    from workloads.orx_model import Note

    repo = AggregateRepository(event_store=InMemoryEventStore())
    note_id = str(uuid.uuid4())
    note = Note()
    for i in range(n):
        note.write(note_id, payload(i))
        if i % 100 == 99:
            repo.save(note)
    repo.save(note)
    start = clock()
    loaded = repo.load(Note, note_id)
    seconds = clock() - start
    assert loaded.version == n - 1 and loaded.text == payload(n - 1)
    return duration(seconds, events=n, per_event_us=seconds / n * 1e6)


def es_load(n: int = 10_000) -> dict[str, Any]:
    """eventsourcing: load one aggregate of ``n`` events from the POPO store."""
    from workloads.es_model import Note, popo_app

    app = popo_app()
    note = Note(text=payload(0))
    for i in range(1, n):
        note.write(payload(i))
        if i % 100 == 99:
            app.save(note)
    app.save(note)
    start = clock()
    loaded = app.repository.get(note.id)
    seconds = clock() - start
    assert loaded.version == n and loaded.text == payload(n - 1)
    return duration(seconds, events=n, per_event_us=seconds / n * 1e6)
