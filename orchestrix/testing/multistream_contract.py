"""The multi-stream part of the EventStore contract: ``append_many`` stores all of it or none.

:class:`~orchestrix.testing.contract.EventStoreContract` inherits these tests, so every store
that runs the contract runs them too; they use its ``store`` fixture and ``reopen``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrix.core.errors import (
    ConcurrencyError,
    DuplicateEventIdError,
    EmptyBatchError,
    InvalidArgumentError,
    InvalidExpectedVersionError,
    InvalidStreamNameError,
    MultiStreamConflictError,
    SerializationError,
)
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, STREAM_EXISTS, EventStore, StreamAppend
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = ["MultiStreamContract"]


def _events(*numbers: int) -> list[NewEvent]:
    # Imported here: the contract module imports this one to inherit from it.
    from orchestrix.testing.contract import ContractEvent

    return [NewEvent(ContractEvent(n)) for n in numbers]


def _numbers(recorded: Iterator[RecordedEvent]) -> list[int]:
    return [r.event.n for r in recorded]


class MultiStreamContract:
    """``append_many`` and ``append_many_async``: atomic, checked, idempotent, in global order."""

    store: Any  # the contract's fixture

    def reopen(self, store: EventStore) -> EventStore:
        """Overridden by the contract (and by durable stores)."""
        return store

    def test_append_many_stores_every_stream_at_consecutive_positions(self, store: EventStore) -> None:
        store.append("m-2", _events(0), NO_STREAM)
        results = store.append_many(
            [
                StreamAppend("m-1", _events(10, 11), NO_STREAM),
                StreamAppend("m-2", _events(12), 0),
                StreamAppend("m-3", _events(13)),
            ]
        )
        assert [(r.stream, r.versions) for r in results] == [("m-1", (0, 1)), ("m-2", (1,)), ("m-3", (0,))]
        positions = [p for r in results for p in r.positions]
        assert positions == sorted(positions) and len(set(positions)) == 4
        stored = list(store.read_all())
        assert [r.position for r in stored[-4:]] == positions, "no other event between them"
        assert [r.event.n for r in stored[-4:]] == [10, 11, 12, 13]
        assert _numbers(store.read_stream("m-2")) == [0, 12]
        assert store.last_position() == positions[-1]

    def test_a_multi_stream_conflict_names_every_failed_stream_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        store.append("m-1", _events(0), NO_STREAM)
        store.append("m-3", _events(1), NO_STREAM)
        before = store.last_position()
        with pytest.raises(MultiStreamConflictError) as caught:
            store.append_many(
                [
                    StreamAppend("m-1", _events(2), NO_STREAM),
                    StreamAppend("m-2", _events(3), STREAM_EXISTS),
                    StreamAppend("m-3", _events(4), 0),
                ]
            )
        error = caught.value
        assert isinstance(error, ConcurrencyError)
        assert error.streams == ("m-1", "m-2")
        assert [(c.stream, c.expected, c.actual) for c in error.conflicts] == [
            ("m-1", NO_STREAM, 0),
            ("m-2", STREAM_EXISTS, NO_STREAM),
        ]
        assert (error.stream, error.expected, error.actual) == ("m-1", NO_STREAM, 0)
        assert store.last_position() == before
        assert _numbers(store.read_stream("m-3")) == [1]
        assert store.stream_version("m-2") == NO_STREAM

    def test_a_retried_multi_stream_append_returns_the_original_results(self, store: EventStore) -> None:
        appends = [StreamAppend("m-1", _events(0, 1), NO_STREAM), StreamAppend("m-2", _events(2), NO_STREAM)]
        first = store.append_many(appends)
        store.append("m-1", _events(3), 1)
        assert store.append_many(appends) == first
        store = self.reopen(store)
        assert store.append_many(appends) == first
        assert _numbers(store.read_stream("m-1")) == [0, 1, 3]
        assert _numbers(store.read_stream("m-2")) == [2]
        assert len(list(store.read_all())) == 4

    def test_a_multi_stream_append_with_some_streams_stored_is_refused(self, store: EventStore) -> None:
        stored = _events(0)
        store.append("m-1", stored, NO_STREAM)
        with pytest.raises(DuplicateEventIdError) as caught:
            store.append_many([StreamAppend("m-1", stored, NO_STREAM), StreamAppend("m-2", _events(1))])
        assert caught.value.stream == "m-2"
        assert store.stream_version("m-2") == NO_STREAM

    def test_an_id_in_two_streams_of_one_append_is_refused(self, store: EventStore) -> None:
        event = NewEvent(_events(0)[0].event, uuid.uuid4())
        with pytest.raises(DuplicateEventIdError):
            store.append_many([StreamAppend("m-1", [event]), StreamAppend("m-2", [event])])
        assert list(store.read_all()) == []

    def test_a_stream_given_twice_is_refused(self, store: EventStore) -> None:
        with pytest.raises(InvalidArgumentError) as caught:
            store.append_many([StreamAppend("m-1", _events(0)), StreamAppend("m-1", _events(1))])
        assert (caught.value.parameter, caught.value.value) == ("appends", "m-1")
        assert list(store.read_all()) == []

    @pytest.mark.parametrize(
        "appends", [[], (), None, "m-1", [("m-1", [], ANY)], iter([StreamAppend("m-1", [])])]
    )
    def test_appends_that_are_no_list_of_stream_appends_are_refused(
        self, store: EventStore, appends: object
    ) -> None:
        with pytest.raises(InvalidArgumentError) as caught:
            store.append_many(appends)  # type: ignore[arg-type]
        assert caught.value.parameter == "appends"
        assert list(store.read_all()) == []

    def test_bad_input_in_any_stream_stores_nothing(self, store: EventStore) -> None:
        from orchestrix.testing.contract import NotRegistered

        good = StreamAppend("m-1", _events(0))
        cases: list[tuple[StreamAppend, type[Exception]]] = [
            (StreamAppend("", _events(1)), InvalidStreamNameError),
            (StreamAppend("m-2", _events(1), -3), InvalidExpectedVersionError),
            (StreamAppend("m-2", _events(1), True), InvalidExpectedVersionError),  # type: ignore[arg-type]
            (StreamAppend("m-2", []), EmptyBatchError),
            (StreamAppend("m-2", _events(1)[0]), InvalidArgumentError),  # type: ignore[arg-type]
            (StreamAppend("m-2", [NotRegistered(1)]), SerializationError),
        ]
        for bad, error in cases:
            with pytest.raises(error):
                store.append_many([good, bad])
        assert list(store.read_all()) == []

    def test_append_many_async_matches_the_sync_form(self, store: EventStore) -> None:
        async def scenario() -> None:
            results = await store.append_many_async(
                [StreamAppend("m-1", _events(0), NO_STREAM), StreamAppend("m-2", _events(1), NO_STREAM)]
            )
            assert [r.versions for r in results] == [(0,), (0,)]
            with pytest.raises(MultiStreamConflictError) as caught:
                await store.append_many_async(
                    [StreamAppend("m-1", _events(2), 0), StreamAppend("m-2", _events(3), NO_STREAM)]
                )
            assert caught.value.streams == ("m-2",)
            assert await store.stream_version_async("m-1") == 0

        asyncio.run(scenario())

    def test_concurrent_transfers_between_streams_stay_whole(self, store: EventStore) -> None:
        """Threads move units between four streams with expected versions: each move is one
        append to two streams, so every stream's units add up and each move is seen whole."""
        streams = [f"acct-{k}" for k in range(4)]
        store.append_many([StreamAppend(s, _events(0), NO_STREAM) for s in streams])
        errors: list[BaseException] = []

        def mover(me: int) -> None:
            try:
                for i in range(15):
                    a, b = streams[(me + i) % 4], streams[(me + i + 1 + me % 2) % 4]
                    while True:
                        va, vb = store.stream_version(a), store.stream_version(b)
                        try:
                            store.append_many(
                                [StreamAppend(a, _events(-1), va), StreamAppend(b, _events(1), vb)]
                            )
                            break
                        except ConcurrencyError:
                            continue
            except BaseException as exc:  # reported in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=mover, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        stored = list(store.read_all())
        moves = stored[4:]
        assert len(moves) == 4 * 15 * 2
        for k in range(0, len(moves), 2):  # each move's two events are adjacent in global order
            assert [moves[k].event.n, moves[k + 1].event.n] == [-1, 1]
        assert sum(sum(_numbers(store.read_stream(s))) for s in streams) == 0
        for s in streams:
            assert [r.version for r in store.read_stream(s)] == list(range(store.stream_version(s) + 1))
