"""The import contract: what a store with ``import_events`` (``EventImport``) promises.

Subclass it beside :class:`~orchestrix.testing.EventStoreContract`; it uses that contract's
``store`` fixture and ``reopen``::

    class TestMyStore(EventStoreContract, EventImportContract):
        ...
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from orchestrix.core.errors import (
    ImportOrderError,
    InvalidArgumentError,
    InvalidRecordedAtError,
    MultiStreamConflictError,
)
from orchestrix.core.eventsourcing.store import NO_STREAM, EventImport, ImportedEvent
from orchestrix.testing.contract import ContractEvent

__all__ = ["EventImportContract"]

_T0 = datetime(2019, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _imported(stream: str, version: int, n: int, at: datetime, **ids: Any) -> ImportedEvent:
    return ImportedEvent(stream, version, ContractEvent(n), uuid.uuid4(), at, **ids)


class EventImportContract:
    """``import_events``: versions, ids and times kept, in the order given, all or nothing."""

    def reopen(self, store: Any) -> Any:
        """Overridden by the contract (and by durable stores)."""
        return store

    def test_the_store_can_import(self, store: Any) -> None:
        assert isinstance(store, EventImport)

    def test_an_import_keeps_versions_ids_times_and_order(self, store: Any) -> None:
        cause = uuid.uuid4()
        events = [
            _imported("imp-a", 0, 0, _T0),
            _imported("imp-a", 1, 1, _T0 + timedelta(microseconds=1), correlation_id=cause),
            _imported("imp-a", 2, 2, _T0 + timedelta(microseconds=1)),
            _imported("imp-b", 0, 3, _T0 - timedelta(days=400), causation_id=cause),  # not monotonic: kept
            _imported("imp-c", 0, 4, datetime(2020, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=-5)))),
        ]
        results = store.import_events(events)
        assert [(r.stream, r.versions) for r in results] == [
            ("imp-a", (0, 1, 2)),
            ("imp-b", (0,)),
            ("imp-c", (0,)),
        ]
        positions = [p for r in results for p in r.positions]
        assert positions == sorted(positions) and len(set(positions)) == 5
        for reopened in (False, True):
            if reopened:
                store = self.reopen(store)
            stored = list(store.read_all())[-5:]
            assert [(r.stream, r.version, r.event_id, r.event.n) for r in stored] == [
                (e.stream, e.version, e.event_id, e.event.n) for e in events
            ]
            assert [r.recorded_at for r in stored] == [e.recorded_at for e in events]
            assert all(r.recorded_at.utcoffset() == timedelta(0) for r in stored)
            assert stored[1].correlation_id == cause and stored[3].causation_id == cause
        before = store.last_position()
        assert store.import_events(events) == results  # a retry, its runs cut by time or not
        assert store.last_position() == before

    def test_an_import_continues_a_stream_and_appends_continue_it(self, store: Any) -> None:
        store.import_events([_imported("imp-d", 0, 0, _T0)])
        results = store.import_events(
            [_imported("imp-d", 1, 1, _T0 + timedelta(seconds=1)), _imported("imp-d", 2, 2, _T0)]
        )
        assert results[0].versions == (1, 2)
        assert store.append("imp-d", [ContractEvent(3)], 2).versions == (3,)
        assert [r.event.n for r in store.read_stream("imp-d")] == [0, 1, 2, 3]

    def test_importing_the_same_events_again_stores_nothing(self, store: Any) -> None:
        events = [_imported("imp-e", 0, 0, _T0), _imported("imp-e", 1, 1, _T0), _imported("imp-f", 0, 2, _T0)]
        first = store.import_events(events)
        before = store.last_position()
        assert store.import_events(events) == first
        assert store.last_position() == before

    def test_a_naive_time_is_refused_and_nothing_is_stored(self, store: Any) -> None:
        before = store.last_position()
        with pytest.raises(InvalidRecordedAtError) as caught:
            store.import_events(
                [_imported("imp-g", 0, 0, _T0), _imported("imp-g", 1, 1, datetime(2020, 1, 1))]
            )
        assert caught.value.stream == "imp-g" and caught.value.version == 1
        with pytest.raises(InvalidRecordedAtError):
            store.import_events([_imported("imp-g", 0, 0, "2020-01-01T00:00:00Z")])  # type: ignore[arg-type]
        assert store.last_position() == before and store.stream_version("imp-g") == NO_STREAM

    def test_versions_out_of_order_are_refused_and_nothing_is_stored(self, store: Any) -> None:
        before = store.last_position()
        with pytest.raises(ImportOrderError, match="version 2 follows version 0"):
            store.import_events([_imported("imp-h", 0, 0, _T0), _imported("imp-h", 2, 1, _T0)])
        with pytest.raises(ImportOrderError, match="two runs"):
            store.import_events(
                [_imported("imp-h", 0, 0, _T0), _imported("imp-i", 0, 1, _T0), _imported("imp-h", 1, 2, _T0)]
            )
        for bad in ([], "events", [ContractEvent(1)]):
            with pytest.raises(InvalidArgumentError):
                store.import_events(bad)
        with pytest.raises(InvalidArgumentError):
            store.import_events([_imported("imp-h", -1, 0, _T0)])
        assert store.last_position() == before

    def test_a_stream_that_is_not_where_the_import_starts_is_refused_whole(self, store: Any) -> None:
        store.append("imp-j", [ContractEvent(0)])
        before = store.last_position()
        with pytest.raises(MultiStreamConflictError) as caught:
            store.import_events([_imported("imp-k", 0, 1, _T0), _imported("imp-j", 0, 2, _T0)])
        assert [c.stream for c in caught.value.conflicts] == ["imp-j"]
        assert store.last_position() == before and store.stream_version("imp-k") == NO_STREAM

    def test_the_asyncio_form_imports_the_same_way(self, store: Any) -> None:
        events = [_imported("imp-l", 0, 0, _T0), _imported("imp-l", 1, 1, _T0 + timedelta(hours=1))]
        results = asyncio.run(store.import_events_async(events))
        assert results[0].versions == (0, 1)
        assert [r.recorded_at for r in store.read_stream("imp-l")] == [e.recorded_at for e in events]
