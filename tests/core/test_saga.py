"""The Saga building block: correlation, lifecycle, deterministic ids and keys, rebuilt state."""

import uuid
from datetime import UTC, datetime

import attrs
import pytest

from orchestrix.core.errors import ConcurrencyError, SagaError
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import Saga, SagaRetried, SagaStuck, handles, saga_event_id
from orchestrix.core.messaging import Event
from tests.core.test_saga_support import (
    OrderCancelled,
    OrderPlaced,
    Shipped,
    ShippingSaga,
    ShippingStarted,
    StockReserved,
    Uncorrelated,
    make_store,
)


def test_the_saga_id_is_the_correlation_id_and_names_its_stream() -> None:
    saga = ShippingSaga("o-1")
    assert saga.stream == "shipping-o-1"
    assert ShippingSaga.stream_name("o-1") == "shipping-o-1"
    assert saga.key("reserve") == "o-1:reserve"


def test_handlers_are_found_per_event_type_with_their_start_flag_and_correlation() -> None:
    specs = ShippingSaga.handlers
    assert set(specs) == {OrderPlaced, OrderCancelled, Uncorrelated}
    assert specs[OrderPlaced].start and not specs[OrderCancelled].start
    assert specs[OrderPlaced].correlation_id(OrderPlaced("o-9", 2)) == "o-9"
    assert specs[Uncorrelated].correlation_id(Uncorrelated(None)) is None
    assert specs[Uncorrelated].correlation_id(Uncorrelated("")) is None


def test_an_event_without_the_correlation_field_cannot_be_handled() -> None:
    @attrs.frozen
    class NoOrderId(Event):
        something: str

    with pytest.raises(TypeError, match="no field 'order_id'"):

        class BadSaga(Saga):
            correlation_field = "order_id"

            @handles(NoOrderId)
            def on_it(self, event: NoOrderId) -> None:
                pass


def test_a_handler_may_correlate_by_another_field_or_a_function() -> None:
    @attrs.frozen
    class Ping(Event):
        ref: str

    class PingSaga(Saga):
        @handles(Ping, correlate="ref")
        def by_field(self, event: Ping) -> None:
            pass

    class PongSaga(Saga):
        @handles(Ping, correlate=lambda e: e.ref.upper())
        def by_function(self, event: Ping) -> None:
            pass

    assert PingSaga.handlers[Ping].correlation_id(Ping("x")) == "x"
    assert PongSaga.handlers[Ping].correlation_id(Ping("x")) == "X"


def test_handles_needs_an_event_type() -> None:
    with pytest.raises(TypeError):
        handles()


def test_state_is_rebuilt_from_the_saga_stream() -> None:
    store = make_store()
    repo = AggregateRepository(store)
    saga = ShippingSaga("o-1")
    saga.raise_event(ShippingStarted("o-1", 3))
    saga.raise_event(StockReserved("o-1"))
    repo.save(saga)

    again = repo.load(ShippingSaga, "o-1")
    assert (again.status, again.items, again.version, again.completed) == ("reserved", 3, 1, False)


def test_a_terminal_event_completes_the_saga_also_on_replay() -> None:
    store = make_store()
    repo = AggregateRepository(store)
    saga = ShippingSaga("o-1")
    saga.raise_event(ShippingStarted("o-1", 1))
    saga.raise_event(Shipped("o-1"))
    assert saga.completed and saga.state == "shipped"
    repo.save(saga)
    assert repo.load(ShippingSaga, "o-1").completed


def test_stuck_and_retried_are_recorded_in_the_saga_stream() -> None:
    store = make_store()
    repo = AggregateRepository(store)
    saga = ShippingSaga("o-1")
    saga.raise_event(ShippingStarted("o-1", 1))
    saga.mark_stuck("the warehouse is on fire")
    repo.save(saga)
    loaded = repo.load(ShippingSaga, "o-1")
    assert loaded.stuck_reason == "the warehouse is on fire"
    assert [type(r.event) for r in store.read_stream("shipping-o-1")] == [ShippingStarted, SagaStuck]
    loaded.raise_event(SagaRetried("o-1", datetime.now(UTC)))
    assert loaded.stuck_reason is None


def test_the_base_state_says_open_stuck_or_completed() -> None:
    class Plain(Saga):
        pass

    saga = Plain("p")
    assert saga.state == "open"
    saga.mark_stuck("why")
    assert saga.state == "stuck"


def test_saga_event_ids_are_deterministic_per_stream_version_and_content() -> None:
    a = saga_event_id("shipping-o-1", 1, StockReserved("o-1"))
    assert a == saga_event_id("shipping-o-1", 1, StockReserved("o-1"))
    assert a != saga_event_id("shipping-o-1", 2, StockReserved("o-1"))
    assert a != saga_event_id("shipping-o-2", 1, StockReserved("o-1"))
    assert a != saga_event_id("shipping-o-1", 1, Shipped("o-1"))
    assert isinstance(a, uuid.UUID) and a.version == 5


def test_a_retried_save_of_the_same_decision_is_a_no_op() -> None:
    store = make_store()
    repo = AggregateRepository(store)
    first = ShippingSaga("o-1")
    first.raise_event(ShippingStarted("o-1", 1))
    batch = list(first.pending_events)
    result = repo.save(first)

    # The same decision, made again by a process that never saw the first save's answer.
    again = ShippingSaga("o-1")
    again.raise_event(ShippingStarted("o-1", 1))
    assert [e.event_id for e in again.pending_events] == [e.event_id for e in batch]
    assert repo.save(again) == result
    assert store.last_position() == 1


def test_a_different_decision_at_the_same_place_conflicts_instead() -> None:
    store = make_store()
    repo = AggregateRepository(store)
    first = ShippingSaga("o-1")
    first.raise_event(ShippingStarted("o-1", 1))
    repo.save(first)
    other = ShippingSaga("o-1")
    other.raise_event(ShippingStarted("o-1", 2))
    with pytest.raises(ConcurrencyError):
        repo.save(other)


def test_a_saga_without_an_id_cannot_raise_events_or_make_keys() -> None:
    saga = ShippingSaga()
    with pytest.raises(SagaError):
        saga.key("x")
    with pytest.raises(SagaError):
        saga.raise_event(ShippingStarted("o-1", 1))
