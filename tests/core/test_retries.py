"""Retry policies and dead letters: transient failures wait their backoff, the rest are parked."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from orchestrix.core.errors import DeadLetterNotFoundError, InvalidRetryPolicyError
from orchestrix.core.execution import InMemoryCheckpointStore, Saga, SagaRunner, handles
from orchestrix.core.execution.dead_letters import DEAD_LETTER_STREAM, DeadLetters
from orchestrix.core.execution.retry import RetryPolicy, StepFailed
from orchestrix.core.messaging import Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from tests.core.deadline_support import START, Clock
from tests.core.test_saga_support import (
    EVENTS,
    OrderPlaced,
    OutOfStock,
    Reserve,
    ShippingSaga,
    Warehouse,
    place,
)


class Flaky(Exception):
    """The warehouse is briefly unreachable."""


class RetryingShipping(ShippingSaga):
    category = "shipping"
    retry_policy = RetryPolicy(max_attempts=3, initial_delay=1.0, backoff_multiplier=2.0, transient=(Flaky,))


def make(policy_saga: type[Saga] = RetryingShipping) -> tuple[Any, Warehouse, Clock, SagaRunner]:
    store = InMemoryEventStore(serializer=Serializer(types=EVENTS))
    warehouse, clock = Warehouse(), Clock()
    runner = SagaRunner(store, [policy_saga], warehouse, InMemoryCheckpointStore(), clock=clock)
    return store, warehouse, clock, runner


def failing(times: int, error: Exception) -> Any:
    left = [times]

    def hook(command: Any) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise error

    return hook


def types(store: Any, stream: str) -> list[str]:
    return [r.event_type for r in store.read_stream(stream)]


# -- the policy -------------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, backoff_multiplier=2.0, max_delay=60.0)
    assert [policy.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff(10_000) == 60.0


def test_jitter_only_ever_lengthens_the_wait_and_never_past_the_cap() -> None:
    policy = RetryPolicy(initial_delay=10.0, max_delay=25.0, jitter=0.5)
    assert policy.delay(1, rand=lambda: 0.0) == timedelta(seconds=10)
    assert policy.delay(1, rand=lambda: 0.999) == timedelta(seconds=14.995)
    assert policy.delay(2, rand=lambda: 0.999) == timedelta(seconds=25)


def test_transient_errors_are_chosen_by_class_or_predicate() -> None:
    by_class = RetryPolicy(transient=(Flaky,))
    assert by_class.retries(Flaky(), 1) and not by_class.retries(ValueError(), 1)
    assert not by_class.retries(Flaky(), 3)  # the third attempt was the last
    by_predicate = RetryPolicy(transient=lambda e: "again" in str(e))
    assert by_predicate.is_transient(RuntimeError("try again")) and not by_predicate.is_transient(Flaky())


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"initial_delay": -1},
        {"initial_delay": float("nan")},
        {"backoff_multiplier": 0.5},
        {"max_delay": 0.5},
        {"jitter": -0.1},
        {"transient": (ValueError, "x")},
        {"transient": 3},
    ],
)
def test_a_policy_that_cannot_work_is_refused_naming_the_field(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRetryPolicyError) as caught:
        RetryPolicy(**fields)
    assert caught.value.field in fields or caught.value.field == "max_delay"
    assert isinstance(caught.value, ValueError)


# -- retries in the runner ----------------------------------------------------------------------


def test_a_transient_failure_is_retried_after_its_backoff_and_then_succeeds() -> None:
    store, warehouse, clock, runner = make()
    warehouse.hooks[Reserve] = failing(2, Flaky("unreachable"))
    place(store, "o-1")
    runner.run_until_idle()
    saga = runner.repository.load(RetryingShipping, "o-1")
    assert Saga.state.fget(saga) == "retrying" and saga.retrying is not None
    assert saga.retrying.retry_at == START + timedelta(seconds=1)

    clock.advance(0.9)
    runner.run_until_idle()
    assert warehouse.applied == []  # not before its backoff
    clock.advance(0.1)
    runner.run_until_idle()
    saga = runner.repository.load(RetryingShipping, "o-1")
    assert saga.retrying is not None and saga.retrying.attempt == 2
    assert saga.retrying.retry_at == clock() + timedelta(seconds=2)
    clock.advance(2)
    runner.run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert runner.repository.load(RetryingShipping, "o-1").completed
    assert (runner.stats.retries_scheduled, runner.stats.failed, runner.stats.dead_lettered) == (2, 0, 0)
    assert DeadLetters(store).list() == []


def test_retries_exhausted_park_a_dead_letter_and_get_the_saga_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, warehouse, clock, runner = make()
    warehouse.hooks[Reserve] = failing(99, Flaky("unreachable"))
    place(store, "o-1")
    with caplog.at_level(logging.INFO, "orchestrix"):
        for _ in range(5):
            runner.run_until_idle()
            clock.advance(10)
    [letter] = DeadLetters(store).list()
    assert (letter.saga_type, letter.saga_id, letter.event_type) == ("shipping", "o-1", "OrderPlaced")
    assert (letter.error_type, letter.error, letter.attempts) == ("Flaky", "unreachable", 3)
    assert letter.first_failed_at == START and letter.last_failed_at > letter.first_failed_at
    assert letter.status == "parked"
    [stuck] = runner.stuck()
    assert "retries exhausted after 3 attempts; dead-lettered" in stuck.reason
    assert runner.stats.dead_lettered == 1 and runner.stats.retries_scheduled == 2
    assert runner.deadlines() == []  # a stuck saga waits for a person, not a timer
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO", "ERROR"]


def test_a_permanent_error_is_parked_at_once() -> None:
    store, warehouse, _clock, runner = make()
    warehouse.hooks[Reserve] = failing(1, KeyError("no such shelf"))
    place(store, "o-1")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    assert letter.attempts == 1 and letter.error_type == "KeyError"
    assert "permanent error after 1 attempt;" in runner.stuck()[0].reason
    assert "StepFailed" not in types(store, "shipping-o-1")


def test_a_waiting_saga_does_not_hold_up_the_rest_of_its_partition() -> None:
    store, warehouse, clock, runner = make()
    flaky = failing(1, Flaky("unreachable"))
    warehouse.hooks[Reserve] = lambda c: flaky(c) if c.order_id == "o-1" else None
    place(store, "o-1")
    place(store, "o-2")
    runner.run_until_idle()
    assert "o-2:ship" in warehouse.applied and "o-1:reserve" not in warehouse.applied
    clock.advance(1)
    runner.run_until_idle()
    assert "o-1:ship" in warehouse.applied


def test_a_handler_policy_overrides_the_saga_policy() -> None:
    class Patient(ShippingSaga):
        category = "shipping"
        retry_policy = RetryPolicy(max_attempts=1)

        @handles(OrderPlaced, start=True, retry=RetryPolicy(max_attempts=5, initial_delay=7.0))
        def on_placed(self, event: OrderPlaced) -> Any:
            return ShippingSaga.on_placed(self, event)

    store, warehouse, _clock, runner = make(Patient)
    warehouse.hooks[Reserve] = failing(1, Flaky("unreachable"))
    place(store, "o-1")
    runner.run_until_idle()
    saga = runner.repository.load(Patient, "o-1")
    assert saga.retrying is not None and saga.retrying.retry_at == START + timedelta(seconds=7)


def test_without_a_policy_a_failed_step_is_stuck_at_once_and_nothing_is_parked() -> None:
    store, warehouse, _clock, runner = make(ShippingSaga)
    warehouse.hooks[Reserve] = failing(1, Flaky("unreachable"))
    place(store, "o-1")
    runner.run_until_idle()
    assert runner.stuck()[0].reason == "Flaky: unreachable"
    assert list(store.read_stream(DEAD_LETTER_STREAM)) == []


def test_a_domain_refusal_the_saga_handles_is_no_failure() -> None:
    store, warehouse, _clock, runner = make()
    warehouse.stock = 0
    place(store, "o-1", items=5)
    runner.run_until_idle()
    assert not isinstance(OutOfStock("x"), Flaky)
    assert DeadLetters(store).list() == [] and runner.stats.retries_scheduled == 0


def test_retry_state_survives_a_restart() -> None:
    store, warehouse, clock, runner = make()
    warehouse.hooks[Reserve] = failing(1, Flaky("unreachable"))
    place(store, "o-1")
    runner.run_until_idle()
    clock.advance(5)
    restarted = SagaRunner(store, [RetryingShipping], warehouse, InMemoryCheckpointStore(), clock=clock)
    restarted.run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    failed = [r.event for r in store.read_stream("shipping-o-1") if isinstance(r.event, StepFailed)]
    assert [f.attempt for f in failed] == [1]


# -- operators: dead letters and stuck sagas ----------------------------------------------------


def parked() -> tuple[Any, Warehouse, Clock, SagaRunner, str]:
    store, warehouse, clock, runner = make()
    warehouse.hooks[Reserve] = failing(1, KeyError("no such shelf"))
    place(store, "o-1")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    return store, warehouse, clock, runner, letter.id


def test_retrying_a_dead_letter_is_carried_out_by_the_owning_runner() -> None:
    store, warehouse, _clock, runner, letter_id = parked()
    assert DeadLetters(store).retry(letter_id).status == "retry requested"
    runner.run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert DeadLetters(store).list() == []
    record = DeadLetters(store).get(letter_id)
    assert record.status == "retried" and record.detail == "saga completed"
    runner.run_until_idle()  # a redelivered request does nothing more
    assert types(store, DEAD_LETTER_STREAM) == [
        "MessageDeadLettered",
        "DeadLetterRetryRequested",
        "DeadLetterResolved",
    ]


def test_discarding_a_dead_letter_releases_the_saga_without_the_message() -> None:
    store, warehouse, _clock, runner, letter_id = parked()
    DeadLetters(store).discard(letter_id, "shelf retired")
    runner.run_until_idle()
    assert warehouse.applied == []
    record = DeadLetters(store).get(letter_id)
    assert (record.status, record.detail) == ("discarded", "shelf retired")
    assert runner.stuck() == []
    assert types(store, "shipping-o-1")[-1] == "SagaRetried"


def test_a_dead_letter_that_is_not_parked_cannot_be_retried_or_discarded() -> None:
    store, _warehouse, _clock, _runner, letter_id = parked()
    letters = DeadLetters(store)
    letters.discard(letter_id)
    with pytest.raises(DeadLetterNotFoundError, match="is discard requested, not parked"):
        letters.retry(letter_id)
    with pytest.raises(DeadLetterNotFoundError, match="no such dead letter"):
        letters.discard("nope")
    assert types(store, DEAD_LETTER_STREAM) == ["MessageDeadLettered", "DeadLetterDiscardRequested"]


def test_a_stored_saga_retry_request_runs_a_stuck_saga_again() -> None:
    from orchestrix.core.execution.saga import SagaRetryRequested

    store, warehouse, clock, runner = make(ShippingSaga)
    warehouse.hooks[Reserve] = failing(1, Flaky("unreachable"))
    place(store, "o-1")
    runner.run_until_idle()
    assert runner.stuck()
    store.append("shipping-o-1", [SagaRetryRequested("o-1", clock())])
    runner.run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"] and runner.stuck() == []


@pytest.mark.parametrize("step_threads", [False, True], ids=["loop", "step-threads"])
def test_the_asyncio_form_retries_and_parks_alike(step_threads: bool) -> None:
    import asyncio

    store = InMemoryEventStore(serializer=Serializer(types=EVENTS))
    warehouse, clock = Warehouse(), Clock()
    runner = SagaRunner(
        store,
        [RetryingShipping],
        warehouse,
        InMemoryCheckpointStore(),
        clock=clock,
        step_threads=step_threads,
    )
    flaky = failing(1, Flaky("unreachable"))
    broken = failing(1, KeyError("no such shelf"))
    warehouse.hooks[Reserve] = lambda c: flaky(c) if c.order_id == "o-1" else broken(c)
    place(store, "o-1")
    place(store, "o-2")

    async def main() -> None:
        await runner.run_until_idle_async()
        clock.advance(1)
        await runner.run_until_idle_async()

    asyncio.run(main())
    assert "o-1:ship" in warehouse.applied and "o-2:reserve" not in warehouse.applied
    [letter] = DeadLetters(store).list()
    assert letter.saga_id == "o-2" and letter.attempts == 1
