"""The EventStore contract suite: subclass it once per store and pytest runs every promise.

Example::

    from orchestrix.testing import EventStoreContract, contract_serializer

    class TestMyStore(EventStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyStore(tmp_path, serializer=contract_serializer())
            yield store
            store.close()

Durable stores should also override :meth:`EventStoreContract.reopen` so that the
"survives reopening" tests close the store and open it again from its storage.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrix.core.errors import (
    ConcurrencyError,
    DuplicateEventIdError,
    EmptyBatchError,
    InvalidEventIdError,
    InvalidExpectedVersionError,
    InvalidStreamNameError,
    SerializationError,
)
from orchestrix.core.eventsourcing.store import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventStore,
)
from orchestrix.core.execution.subscription import subscribe
from orchestrix.core.messaging.messages import Event, NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.testing.argument_contract import ArgumentContract, _refused_promptly
from orchestrix.testing.multistream_contract import MultiStreamContract
from orchestrix.testing.strategies import money
from orchestrix.testing.type_filter_contract import TypeFilterContract

__all__ = [
    "ContractEvent",
    "EventStoreContract",
    "MoneyMoved",
    "NotRegistered",
    "contract_serializer",
]


@attrs.frozen
class ContractEvent(Event):
    """A small event the contract suite appends."""

    n: int
    note: str = ""


@attrs.frozen
class MoneyMoved(Event):
    """An event carrying an exact amount, for the Decimal round trip."""

    amount: Decimal
    at: datetime
    ref: uuid.UUID


@attrs.frozen
class NotRegistered(Event):
    """Never registered with the contract serializer: appending it must fail cleanly."""

    n: int


def contract_serializer() -> Serializer:
    """A serializer that knows the contract suite's event types."""
    return Serializer(types=[ContractEvent, MoneyMoved])


def _events(*numbers: int) -> list[NewEvent]:
    return [NewEvent(ContractEvent(n)) for n in numbers]


def _numbers(recorded: Iterator[RecordedEvent]) -> list[int]:
    return [r.event.n for r in recorded]


class EventStoreContract(MultiStreamContract, TypeFilterContract, ArgumentContract):
    """Every promise an EventStore makes, as tests. Subclass and provide the ``store`` fixture.

    The multi-stream appends' tests come from :class:`MultiStreamContract`, most of the refused
    arguments' from :class:`ArgumentContract`."""

    @pytest.fixture
    def store(self) -> EventStore:
        """The store under test, built with :func:`contract_serializer`."""
        raise NotImplementedError("subclasses provide a `store` fixture")

    def reopen(self, store: EventStore) -> EventStore:
        """Close ``store`` and open it again from its storage; in-memory stores return it as is."""
        return store

    # -- streams and versions ---------------------------------------------------------------

    def test_versions_start_at_zero_and_have_no_gaps(self, store: EventStore) -> None:
        first = store.append("s-1", _events(0, 1), NO_STREAM)
        second = store.append("s-1", _events(2), 1)
        assert first.versions == (0, 1)
        assert second.versions == (2,)
        assert [r.version for r in store.read_stream("s-1")] == [0, 1, 2]
        assert store.stream_version("s-1") == 2

    def test_missing_stream_reads_empty_and_has_no_version(self, store: EventStore) -> None:
        assert list(store.read_stream("nothing-here")) == []
        assert store.stream_version("nothing-here") == NO_STREAM

    def test_read_stream_is_lazy_and_starts_at_from_version(self, store: EventStore) -> None:
        store.append("s-1", _events(0, 1, 2, 3), NO_STREAM)
        reader = store.read_stream("s-1", 2)
        assert iter(reader) is reader
        assert _numbers(reader) == [2, 3]
        assert list(store.read_stream("s-1", 9)) == []

    def test_envelope_carries_ids_time_and_type(self, store: EventStore) -> None:
        correlation, causation = uuid.uuid4(), uuid.uuid4()
        new = NewEvent(ContractEvent(7, "hi"), uuid.uuid4(), correlation, causation)
        before = datetime.now(UTC)
        result = store.append("s-1", [new], NO_STREAM)
        (recorded,) = store.read_stream("s-1")
        assert recorded.event_id == new.event_id
        assert recorded.stream == "s-1"
        assert recorded.version == 0
        assert recorded.position == result.positions[0]
        assert recorded.event_type == "ContractEvent"
        assert recorded.event == ContractEvent(7, "hi")
        assert recorded.correlation_id == correlation
        assert recorded.causation_id == causation
        offset = recorded.recorded_at.utcoffset()
        assert offset is not None
        assert offset.total_seconds() == 0
        assert before.replace(microsecond=0) <= recorded.recorded_at

    # -- expected version modes --------------------------------------------------------------

    def test_no_stream_appends_to_a_new_stream_only(self, store: EventStore) -> None:
        store.append("s-1", _events(0), NO_STREAM)
        with pytest.raises(ConcurrencyError) as raised:
            store.append("s-1", _events(1), NO_STREAM)
        assert (raised.value.stream, raised.value.expected, raised.value.actual) == ("s-1", NO_STREAM, 0)

    def test_stream_exists_needs_an_existing_stream(self, store: EventStore) -> None:
        with pytest.raises(ConcurrencyError) as raised:
            store.append("s-1", _events(0), STREAM_EXISTS)
        assert raised.value.actual == NO_STREAM
        store.append("s-1", _events(0), NO_STREAM)
        assert store.append("s-1", _events(1), STREAM_EXISTS).versions == (1,)

    def test_any_appends_whatever_the_state(self, store: EventStore) -> None:
        assert store.append("s-1", _events(0), ANY).versions == (0,)
        assert store.append("s-1", _events(1), ANY).versions == (1,)

    def test_exact_version_must_match_the_last_event(self, store: EventStore) -> None:
        store.append("s-1", _events(0, 1), NO_STREAM)
        for wrong in (0, 2, 5):
            with pytest.raises(ConcurrencyError) as raised:
                store.append("s-1", _events(9), wrong)
            assert (raised.value.expected, raised.value.actual) == (wrong, 1)
        assert store.append("s-1", _events(2), 1).versions == (2,)

    def test_exact_version_on_a_missing_stream_conflicts(self, store: EventStore) -> None:
        with pytest.raises(ConcurrencyError):
            store.append("s-1", _events(0), 0)
        assert store.stream_version("s-1") == NO_STREAM

    def test_a_conflict_writes_nothing(self, store: EventStore) -> None:
        store.append("s-1", _events(0), NO_STREAM)
        before = store.last_position()
        with pytest.raises(ConcurrencyError):
            store.append("s-1", _events(1, 2, 3), 5)
        assert _numbers(store.read_stream("s-1")) == [0]
        assert store.last_position() == before
        assert _numbers(store.read_all()) == [0]

    def test_another_batch_at_a_taken_version_conflicts(self, store: EventStore) -> None:
        store.append("s-1", _events(0), NO_STREAM)
        store.append("s-1", _events(1), 0)
        with pytest.raises(ConcurrencyError):
            store.append("s-1", _events(99), 0)
        assert _numbers(store.read_stream("s-1")) == [0, 1]

    @pytest.mark.parametrize("bad", [-3, -5, 1.0, "1", None, True, 2**63, 2**70])
    def test_an_invalid_expected_version_is_refused(self, store: EventStore, bad: object) -> None:
        with pytest.raises(InvalidExpectedVersionError) as raised:
            store.append("s-1", _events(0), bad)  # type: ignore[arg-type]
        assert (raised.value.parameter, raised.value.value) == ("expected_version", bad)
        assert store.stream_version("s-1") == NO_STREAM
        store.append("s-1", _events(0), NO_STREAM)
        with pytest.raises(InvalidExpectedVersionError):
            store.append("s-1", _events(1), bad)  # type: ignore[arg-type]
        assert _numbers(store.read_stream("s-1")) == [0]

    def test_the_largest_expected_version_is_a_plain_conflict(self, store: EventStore) -> None:
        with pytest.raises(ConcurrencyError):
            store.append("s-1", _events(0), 2**63 - 1)
        assert list(store.read_all()) == []

    # -- atomic batches and idempotency -----------------------------------------------------

    def test_a_batch_that_cannot_be_encoded_stores_nothing(self, store: EventStore) -> None:
        batch = [*_events(0), NewEvent(NotRegistered(1)), *_events(2)]
        with pytest.raises(SerializationError, match="NotRegistered"):
            store.append("s-1", batch, NO_STREAM)
        assert store.stream_version("s-1") == NO_STREAM
        assert list(store.read_all()) == []

    def test_an_empty_batch_is_refused(self, store: EventStore) -> None:
        with pytest.raises(EmptyBatchError):
            store.append("s-1", [], ANY)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("event_id", "8e5a4d3c"),
            ("event_id", None),
            ("event_id", 7),
            ("correlation_id", "c-1"),
            ("causation_id", b"x"),
        ],
    )
    def test_an_id_that_is_no_uuid_is_refused_and_nothing_is_stored(
        self, store: EventStore, field: str, value: object
    ) -> None:
        bad = NewEvent(ContractEvent(1), **{field: value})  # type: ignore[arg-type]
        for batch in ([bad], [*_events(0), bad]):
            with pytest.raises(InvalidEventIdError, match=field) as caught:
                store.append("s-1", batch, ANY)
            assert (caught.value.stream, caught.value.field, caught.value.value) == ("s-1", field, value)
        assert list(store.read_all()) == []

    def test_re_appending_stored_ids_returns_the_original_result(self, store: EventStore) -> None:
        batch = _events(0, 1)
        first = store.append("s-1", batch, NO_STREAM)
        store.append("s-1", _events(2), 1)
        again = store.append("s-1", batch, NO_STREAM)
        assert again == first
        assert _numbers(store.read_stream("s-1")) == [0, 1, 2]
        assert len(list(store.read_all())) == 3

    def test_re_appending_survives_reopening(self, store: EventStore) -> None:
        batch = _events(0)
        first = store.append("s-1", batch, NO_STREAM)
        store = self.reopen(store)
        assert store.append("s-1", batch, NO_STREAM) == first
        assert _numbers(store.read_stream("s-1")) == [0]

    def test_a_half_stored_batch_is_refused(self, store: EventStore) -> None:
        stored = _events(0)
        store.append("s-1", stored, NO_STREAM)
        with pytest.raises(DuplicateEventIdError):
            store.append("s-1", [*stored, *_events(1)], ANY)
        assert _numbers(store.read_stream("s-1")) == [0]

    def test_a_stored_id_in_another_stream_is_refused(self, store: EventStore) -> None:
        stored = _events(0)
        store.append("s-1", stored, NO_STREAM)
        with pytest.raises(DuplicateEventIdError):
            store.append("s-2", stored, NO_STREAM)
        assert store.stream_version("s-2") == NO_STREAM

    def test_an_id_twice_in_one_batch_is_refused(self, store: EventStore) -> None:
        event = NewEvent(ContractEvent(0))
        with pytest.raises(DuplicateEventIdError):
            store.append("s-1", [event, event], NO_STREAM)
        assert store.stream_version("s-1") == NO_STREAM

    # -- global order ------------------------------------------------------------------------

    def test_positions_strictly_increase_across_streams(self, store: EventStore) -> None:
        results = [store.append(f"s-{i % 3}", _events(i, i + 100), ANY) for i in range(9)]
        positions = [p for r in results for p in r.positions]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        everything = list(store.read_all())
        assert [r.position for r in everything] == positions
        assert store.last_position() == positions[-1]

    def test_read_all_starts_after_a_position_and_honours_limit(self, store: EventStore) -> None:
        results = [store.append("s-1", _events(i), ANY) for i in range(6)]
        third = results[2].last_position
        assert _numbers(store.read_all(third)) == [3, 4, 5]
        assert _numbers(store.read_all(third, limit=2)) == [3, 4]
        assert list(store.read_all(results[-1].last_position)) == []

    def test_empty_store_has_position_zero(self, store: EventStore) -> None:
        assert store.last_position() == 0
        assert list(store.read_all()) == []

    def test_events_survive_reopening(self, store: EventStore) -> None:
        store.append("s-1", _events(0, 1), NO_STREAM)
        store.append("s-2", _events(2), NO_STREAM)
        store = self.reopen(store)
        assert _numbers(store.read_stream("s-1")) == [0, 1]
        assert _numbers(store.read_all()) == [0, 1, 2]
        assert store.append("s-1", _events(3), 1).versions == (2,)

    # -- concurrency -------------------------------------------------------------------------

    def test_threads_racing_on_one_stream_have_one_winner_per_round(self, store: EventStore) -> None:
        threads, rounds = 6, 15
        wins: list[list[int]] = [[] for _ in range(rounds)]
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def racer(me: int) -> None:
            try:
                for round_ in range(rounds):
                    barrier.wait()
                    try:
                        store.append("race", _events(me), round_ - 1)
                        wins[round_].append(me)
                    except ConcurrencyError:
                        pass
                    barrier.wait()
            except BaseException as exc:  # surfaced below; a thread must not die silently
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=racer, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert [len(w) for w in wins] == [1] * rounds
        assert _numbers(store.read_stream("race")) == [w[0] for w in wins]

    def test_concurrent_appends_to_many_streams_keep_positions_unique(self, store: EventStore) -> None:
        def writer(me: int) -> None:
            for i in range(20):
                store.append(f"w-{me}", _events(i), ANY)

        workers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        positions = [r.position for r in store.read_all()]
        assert len(positions) == 80
        assert positions == sorted(set(positions))
        for me in range(4):
            assert [r.version for r in store.read_stream(f"w-{me}")] == list(range(20))

    # -- values and names ----------------------------------------------------------------------

    @settings(
        max_examples=50,
        deadline=None,
        # Each store subclass runs this method; the data drawn never depends on which one.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(amount=money("0.00", "99999999999.99") | st.decimals(allow_nan=False, allow_infinity=False))
    def test_decimals_round_trip_exactly(self, store: EventStore, amount: Decimal) -> None:
        event = MoneyMoved(amount, datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC), uuid.uuid4())
        stream = f"m-{uuid.uuid4()}"
        store.append(stream, [event], NO_STREAM)
        (recorded,) = store.read_stream(stream)
        assert recorded.event == event
        assert str(recorded.event.amount) == str(amount)

    @pytest.mark.parametrize(
        "name", ["", "\x00", "a\x00b", "tab\there", "x" * 256, "é" * 128, 42, None, b"bytes"]
    )
    def test_invalid_stream_names_are_refused_and_nothing_is_stored(
        self, store: EventStore, name: object
    ) -> None:
        with pytest.raises(InvalidStreamNameError):
            store.append(name, _events(0), ANY)  # type: ignore[arg-type]
        with pytest.raises(InvalidStreamNameError):
            list(store.read_stream(name))  # type: ignore[arg-type]
        assert list(store.read_all()) == []

    @pytest.mark.parametrize(
        "name", ["'; DROP TABLE events;--", "../../etc/passwd", "a/b\\c", "$all", "Konto-Müller-€", "x" * 255]
    )
    def test_odd_but_valid_stream_names_are_plain_data(self, store: EventStore, name: str) -> None:
        store.append(name, _events(1), NO_STREAM)
        store = self.reopen(store)
        assert [r.stream for r in store.read_stream(name)] == [name]
        assert store.stream_version(name) == 0

    def test_large_payloads_round_trip(self, store: EventStore) -> None:
        note = "ß€\"'\\" * 50_000
        store.append("big", [ContractEvent(1, note)], NO_STREAM)
        (recorded,) = store.read_stream("big")
        assert recorded.event.note == note

    # -- arguments: every store refuses the same bad input, the same way, and stores nothing ---
    # (the rest of these tests: ArgumentContract)

    @pytest.mark.parametrize("events", [None, ContractEvent(1), NewEvent(ContractEvent(1)), "abc", 7])
    def test_events_that_are_no_list_or_tuple_are_refused(self, store: EventStore, events: object) -> None:
        for append in (
            lambda: store.append("s-1", events, ANY),  # type: ignore[arg-type]
            lambda: asyncio.run(store.append_async("s-1", events, ANY)),  # type: ignore[arg-type]
        ):
            _refused_promptly(append, "events", events)
        assert list(store.read_all()) == []
        assert store.append("s-1", (ContractEvent(1),), NO_STREAM).versions == (0,)

    # -- waiting and subscribing --------------------------------------------------------------

    def test_wait_for_events_times_out_when_nothing_arrives(self, store: EventStore) -> None:
        assert store.wait_for_events(store.last_position(), 0.05) is False

    def test_wait_for_events_wakes_on_append(self, store: EventStore) -> None:
        timer = threading.Timer(0.05, lambda: store.append("s-1", _events(0), ANY))
        timer.start()
        try:
            assert store.wait_for_events(0, 10.0) is True
        finally:
            timer.join()

    def test_subscription_catches_up_then_goes_live_in_order(self, store: EventStore) -> None:
        store.append("s-1", _events(0, 1), ANY)
        stop = threading.Event()
        seen: list[int] = []

        def late_writer() -> None:
            for i in range(2, 6):
                store.append(f"s-{i % 2}", _events(i), ANY)

        writer = threading.Timer(0.05, late_writer)
        writer.start()
        for recorded in subscribe(store, 0, stop=stop, idle_timeout=0.05):
            seen.append(recorded.event.n)
            if len(seen) == 6:
                stop.set()
        writer.join()
        assert seen == [0, 1, 2, 3, 4, 5]

    # -- asyncio forms -----------------------------------------------------------------------

    def test_async_forms_match_the_sync_ones(self, store: EventStore) -> None:
        async def scenario() -> None:
            result = await store.append_async("s-1", _events(0, 1), NO_STREAM)
            assert result.versions == (0, 1)
            with pytest.raises(ConcurrencyError):
                await store.append_async("s-1", _events(2), NO_STREAM)
            assert await store.stream_version_async("s-1") == 1
            assert [r.event.n async for r in store.read_stream_async("s-1")] == [0, 1]
            assert [r.event.n async for r in store.read_all_async(result.positions[0])] == [1]
            assert await store.wait_for_events_async(0, 0.01) is True

        asyncio.run(scenario())

    def test_async_reads_page_through_long_streams(self, store: EventStore) -> None:
        store.append("long", _events(*range(1200)), NO_STREAM)

        async def scenario() -> list[int]:
            return [r.version async for r in store.read_stream_async("long", 5)]

        assert asyncio.run(scenario()) == list(range(5, 1200))
