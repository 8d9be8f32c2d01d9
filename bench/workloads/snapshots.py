"""Issue 15: load one long aggregate from a snapshot, on the file store and on the peer's SQLite.

Both sides hold one aggregate of ``n`` events with a snapshot every ``every`` events, built so
that the load replays ``every`` events after the newest snapshot (the most it can be): the
first ``n - every + 1`` events are saved with snapshotting on, the rest without. Each store is
built once per run (``prepare``) and loaded in a fresh process per repetition.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from workloads.common import clock, duration, payload, require

NOTE_ID = "00000000-0000-4000-8000-00000000cafe"


def _snap_note() -> Any:
    from workloads.orx_model import Note

    class SnapNote(Note):
        """The benchmark's Note, with its state (the latest text) as a plain-JSON snapshot."""

        category = "Note"

        def snapshot(self) -> dict[str, str]:
            return {"text": self.text}

        def restore(self, state: dict[str, str]) -> None:
            self.text = state["text"]

    return SnapNote


def _orx(path: str, every: int, snapshots: bool, sync: bool = True) -> tuple[Any, Any, Any]:
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository
    from workloads.orx_model import serializer

    store = require("orchestrix.infrastructure.file", "FileEventStore")(path, serializer(), sync=sync)
    if snapshots and not hasattr(store, "snapshots"):
        from workloads.common import NotLanded

        store.close()
        raise NotLanded("FileEventStore.snapshots()")
    note = _snap_note()
    note.snapshot_every = every
    repo = AggregateRepository(store, snapshots=store.snapshots() if snapshots else None)
    return store, repo, note


def orx_build(dir: str, n: int = 100_000, every: int = 1000, batch: int = 1000, **_: Any) -> dict[str, Any]:
    """Write the aggregate (no fsync per batch); snapshots as described in the module docstring."""
    path = os.path.join(dir, "store")
    start = clock()
    store, repo, cls = _orx(path, every, snapshots=True, sync=False)
    note = cls()
    with_snapshots = n - every + 1
    for i in range(with_snapshots):
        note.write(NOTE_ID, payload(i))
        if (i + 1) % batch == 0:
            repo.save(note)
    repo.save(note)
    store.close()
    store, repo, cls = _orx(path, every, snapshots=False, sync=False)
    note = repo.load(cls, NOTE_ID)
    for i in range(with_snapshots, n):
        note.write(NOTE_ID, payload(i))
    repo.save(note)
    snapshot = store.snapshots().load(f"Note-{NOTE_ID}")
    store.close()
    assert snapshot is not None and n - 1 - snapshot.version == every, snapshot
    return duration(clock() - start, events=n, snapshot_version=snapshot.version)


def orx_load(dir: str, n: int = 100_000, every: int = 1000, snapshots: int = 1) -> dict[str, Any]:
    """Open the store in this fresh process, then time loading the aggregate (with or without snapshots)."""
    store, repo, cls = _orx(os.path.join(dir, "store"), every, snapshots=bool(snapshots))
    start = clock()
    note = repo.load(cls, NOTE_ID)
    seconds = clock() - start
    assert note.version == n - 1 and note.text == payload(n - 1)
    store.close()
    return duration(seconds, events=n)


def _es_apps(path: str, every: int) -> tuple[Any, Any]:
    from eventsourcing.application import Application

    from workloads.es_model import Note

    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}

    class SnapNotes(Application):
        """The peer's application with its snapshotting on, as its docs set it up."""

        snapshotting_intervals = {Note: every}  # noqa: RUF012  (the peer's API is a class attribute)

    class PlainNotes(Application):
        """The same database, saving without taking snapshots."""

    return SnapNotes(env=env), PlainNotes(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})


def es_build(dir: str, n: int = 100_000, every: int = 1000, batch: int = 1000) -> dict[str, Any]:
    """The peer's SQLite database with the same aggregate and snapshots."""
    from workloads.es_model import Note

    path = os.path.join(dir, "es.sqlite")
    snapping, plain = _es_apps(path, every)
    start = clock()
    note = Note(text=payload(0))  # version 1 is the peer's first event
    with_snapshots = n - every + 1
    for i in range(1, with_snapshots):
        note.write(payload(i))
        if (i + 1) % batch == 0:
            snapping.save(note)
    snapping.save(note)
    for i in range(with_snapshots, n):
        note.write(payload(i))
    plain.save(note)
    newest = list(plain.snapshots.get(note.id, desc=True, limit=1))  # type: ignore[union-attr]
    snapping.close()
    plain.close()
    assert newest and n - newest[0].originator_version == every, newest
    with open(os.path.join(dir, "note_id"), "w") as f:
        f.write(str(note.id))
    return duration(clock() - start, events=n, snapshot_version=newest[0].originator_version)


def es_load(dir: str, n: int = 100_000, every: int = 1000) -> dict[str, Any]:
    """Open the peer's application in this fresh process, then time loading the aggregate."""
    with open(os.path.join(dir, "note_id")) as f:
        note_id = f.read()
    snapping, plain = _es_apps(os.path.join(dir, "es.sqlite"), every)
    plain.close()
    start = clock()
    note = snapping.repository.get(uuid.UUID(note_id))
    seconds = clock() - start
    assert note.version == n and note.text == payload(n - 1)
    snapping.close()
    return duration(seconds, events=n)
