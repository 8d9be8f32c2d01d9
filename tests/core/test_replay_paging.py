"""A repository replays a stream while reading it, a page at a time: loading an aggregate holds
its state and one page of events, never its whole history (a 100k-event stream took 64 MiB of
events in a list before the first was applied).

Checked by counting, not by measuring memory: the store notes how far the aggregate had got each
time it hands out an event, so the test sees how many events were out of the store unapplied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from orchestrix.core.eventsourcing import AggregateRepository, AggregateRoot, applies
from orchestrix.core.messaging import Event
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemorySnapshotStore

EVENTS = 1_000
STREAM_PAGE = 128  # orchestrix.core._io.STREAM_PAGE: what a replay reads ahead at most


@attrs.frozen
class Ticked(Event):
    n: int


class Clock(AggregateRoot):
    applied = 0  # across instances: the store reads it while a load is under way

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0

    def tick(self) -> None:
        self.raise_event(Ticked(self.ticks))

    @applies(Ticked)
    def _ticked(self, event: Ticked) -> None:
        self.ticks += 1
        Clock.applied += 1

    def snapshot(self) -> dict[str, Any]:
        return {"ticks": self.ticks}

    def restore(self, state: dict[str, Any]) -> None:
        self.ticks = state["ticks"]


class CountingStore(InMemoryEventStore):
    """Notes, for each event handed out, how many it had handed out that were not yet applied."""

    def __init__(self) -> None:
        super().__init__()
        self.ahead: list[int] = []

    def _note(self, handed: int) -> None:
        self.ahead.append(handed - Clock.applied)

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[Any]:
        start = Clock.applied
        for handed, recorded in enumerate(super().read_stream(stream, from_version), 1):
            self._note(start + handed)
            yield recorded

    # read_stream_async: the memory store's own hands out read_stream's events, counted above.


def _stored(store: CountingStore, repo: AggregateRepository) -> Clock:
    clock = Clock()
    clock.id = "c1"
    for _ in range(EVENTS):
        clock.tick()
    repo.save(clock)
    return clock


@pytest.mark.parametrize("form", ["sync", "async"])
def test_load_replays_while_reading_a_page_at_a_time(form: str) -> None:
    store = CountingStore()
    repo = AggregateRepository(event_store=store, cache_size=0)
    _stored(store, repo)
    Clock.applied = 0
    store.ahead.clear()
    loaded = repo.load(Clock, "c1") if form == "sync" else asyncio.run(repo.load_async(Clock, "c1"))
    assert loaded.ticks == EVENTS and loaded.version == EVENTS - 1
    assert len(store.ahead) == EVENTS
    assert max(store.ahead) <= STREAM_PAGE  # main read all 1,000 before applying the first


class SnapClock(Clock):
    snapshot_every = EVENTS


def test_load_from_a_snapshot_replays_a_page_at_a_time() -> None:
    store = CountingStore()
    repo = AggregateRepository(event_store=store, cache_size=0, snapshots=InMemorySnapshotStore())
    clock = SnapClock()
    clock.id = "c1"
    for _ in range(EVENTS + 1):
        clock.tick()
    repo.save(clock)  # version EVENTS: the snapshot is taken there
    clock = repo.load(SnapClock, "c1")
    for _ in range(EVENTS - 1):
        clock.tick()
    repo.save(clock)  # EVENTS - 1 past the snapshot: none taken
    Clock.applied = 0
    store.ahead.clear()
    loaded = repo.load(SnapClock, "c1")
    assert loaded.ticks == 2 * EVENTS and loaded.version == 2 * EVENTS - 1
    assert Clock.applied == EVENTS - 1  # only the events after the snapshot
    assert max(store.ahead) <= STREAM_PAGE + 1  # the snapshot's own event is read, not applied
