"""Retry policies for projections: transient failures tried again with backoff, permanent ones
parked as dead letters while the projection goes on (or, ordered, the projection stops), and the
operators' retry and discard requests carried out by the runner feeding that projection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrix.core.errors import DeadLetterNotFoundError, InvalidRetryPolicyError
from orchestrix.core.execution import (
    DeadLetters,
    InMemoryCheckpointStore,
    Projection,
    ProjectionError,
    ProjectionRunner,
    RetryPolicy,
    projects,
)
from orchestrix.core.execution.dead_letters import (
    DEAD_LETTER_EVENTS,
    DEAD_LETTER_STREAM,
    ProjectionEventFailed,
    projection_dead_letter_id,
)
from orchestrix.core.messaging import Event, Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@attrs.frozen
class Shipped(Event):
    order: str


@attrs.frozen
class Cancelled(Event):
    order: str


class Flaky(Exception):
    """A failure worth another try (a timeout, a lost connection)."""


class Broken(Exception):
    """A failure no retry mends."""


class Now:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Sleeps:
    """Virtual waits: the backoffs asked for, each moving the virtual clock."""

    def __init__(self, now: Now) -> None:
        self.now = now
        self.waited: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)
        self.now.now += timedelta(seconds=seconds)


POLICY = RetryPolicy(
    max_attempts=3, initial_delay=1.0, backoff_multiplier=2.0, max_delay=60.0, transient=(Flaky,)
)


class Shipping(Projection):
    """Fails on orders named in ``failures``: a list of errors to raise, one per call."""

    name = "shipping"
    retry_policy: ClassVar[RetryPolicy | None] = POLICY

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        super().__init__()
        self.failures = failures or {}
        self.shipped: list[str] = []
        self.cancelled: list[str] = []

    def _maybe_fail(self, order: str) -> None:
        queue = self.failures.get(order)
        if queue:
            raise queue.pop(0)

    @projects(Shipped)
    def on_shipped(self, event: Shipped) -> None:
        self._maybe_fail(event.order)
        self.shipped.append(event.order)

    @projects(Cancelled, retry=RetryPolicy(max_attempts=1))
    def on_cancelled(self, event: Cancelled) -> None:
        self._maybe_fail(event.order)
        self.cancelled.append(event.order)


def make_store() -> InMemoryEventStore:
    return InMemoryEventStore(serializer=Serializer(types=[Shipped, Cancelled, *DEAD_LETTER_EVENTS]))


def make_runner(
    store: Any, projection: Projection, now: Now, sleeps: Sleeps, **options: Any
) -> ProjectionRunner:
    return ProjectionRunner(store, [projection], InMemoryCheckpointStore(), now=now, sleep=sleeps, **options)


def world(
    failures: dict[str, list[Exception]],
) -> tuple[InMemoryEventStore, Shipping, ProjectionRunner, Sleeps]:
    store, now = make_store(), Now()
    sleeps = Sleeps(now)
    projection = Shipping(failures)
    return store, projection, make_runner(store, projection, now, sleeps), sleeps


def ship(store: Any, *orders: str) -> None:
    for order in orders:
        store.append(f"Order-{order}", [Shipped(order)])


def test_a_transient_failure_is_tried_again_after_its_backoff_and_nothing_is_parked() -> None:
    store, projection, runner, sleeps = world({"o-2": [Flaky("timeout"), Flaky("timeout")]})
    ship(store, "o-1", "o-2", "o-3")
    runner.run_until_idle()
    assert projection.shipped == ["o-1", "o-2", "o-3"]
    assert sleeps.waited == [1.0, 2.0]  # exponential backoff: initial_delay, then doubled
    assert runner.stats["shipping"].retried == 2 and runner.stats["shipping"].dead_lettered == 0
    assert DeadLetters(store).list() == []


def test_exhausted_retries_park_the_event_and_the_projection_goes_on() -> None:
    store, projection, runner, sleeps = world({"o-2": [Flaky("timeout")] * 3})
    ship(store, "o-1", "o-2", "o-3")
    runner.run_until_idle()
    assert projection.shipped == ["o-1", "o-3"]  # o-2 parked, o-3 not held up
    assert sleeps.waited == [1.0, 2.0]
    [letter] = DeadLetters(store).list()
    position = next(r.position for r in store.read_all() if r.stream == "Order-o-2")
    assert letter.id == projection_dead_letter_id("shipping", position)
    assert (letter.kind, letter.projection, letter.status) == ("projection", "shipping", "parked")
    assert (letter.event_type, letter.stream, letter.position) == ("Shipped", "Order-o-2", position)
    assert (letter.error_type, letter.error, letter.attempts) == ("Flaky", "timeout", 3)
    assert (letter.first_failed_at, letter.last_failed_at) == (START, START + timedelta(seconds=3))
    assert runner.stats["shipping"].dead_lettered == 1
    assert runner.positions == {"shipping": store.last_position()}


def test_a_permanent_error_is_parked_at_once_without_a_retry() -> None:
    store, projection, runner, sleeps = world({"o-1": [Broken("no such warehouse")]})
    ship(store, "o-1", "o-2")
    runner.run_until_idle()
    assert projection.shipped == ["o-2"] and sleeps.waited == []
    [letter] = DeadLetters(store).list()
    assert (letter.error_type, letter.attempts) == ("Broken", 1)


def test_a_handler_policy_overrides_the_projections() -> None:
    store, projection, runner, sleeps = world({"o-1": [Flaky("timeout")]})
    store.append("Order-o-1", [Cancelled("o-1")])
    runner.run_until_idle()
    assert projection.cancelled == [] and sleeps.waited == []  # max_attempts=1: parked at once
    [letter] = DeadLetters(store).list()
    assert (letter.event_type, letter.attempts) == ("Cancelled", 1)


def test_a_predicate_says_which_errors_are_transient() -> None:
    class Picky(Shipping):
        retry_policy = RetryPolicy(max_attempts=5, initial_delay=0.5, transient=lambda e: "again" in str(e))

    store, now = make_store(), Now()
    sleeps = Sleeps(now)
    projection = Picky({"o-1": [Flaky("try again"), Flaky("gone")]})
    ship(store, "o-1")
    make_runner(store, projection, now, sleeps).run_until_idle()
    assert sleeps.waited == [0.5]
    [letter] = DeadLetters(store).list()
    assert (letter.error, letter.attempts) == ("gone", 2)


def test_backoff_is_capped_and_jitter_only_stretches_it() -> None:
    class Patient(Shipping):
        retry_policy = RetryPolicy(
            max_attempts=6, initial_delay=1.0, max_delay=5.0, jitter=0.5, transient=(Flaky,)
        )

    store, now = make_store(), Now()
    sleeps = Sleeps(now)
    projection = Patient({"o-1": [Flaky("timeout")] * 5})
    ship(store, "o-1")
    make_runner(store, projection, now, sleeps).run_until_idle()
    backoffs = [1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(sleeps.waited) == 5 and projection.shipped == ["o-1"]
    for backoff, waited in zip(backoffs, sleeps.waited, strict=True):
        assert backoff <= waited <= 5.0  # never below the backoff, never above max_delay


def test_an_ordered_policy_stops_the_projection_at_the_failing_event_and_records_why() -> None:
    class InOrder(Shipping):
        retry_policy = RetryPolicy(max_attempts=2, initial_delay=1.0, transient=(Flaky,), ordered=True)

    store, now = make_store(), Now()
    sleeps = Sleeps(now)
    projection = InOrder({"o-2": [Flaky("timeout")] * 2})
    ship(store, "o-1", "o-2", "o-3")
    runner = make_runner(store, projection, now, sleeps)
    with pytest.raises(ProjectionError) as raised:
        runner.run_until_idle()
    assert raised.value.event_type == "Shipped" and raised.value.stream == "Order-o-2"
    assert "o-3" not in projection.shipped
    assert DeadLetters(store).list() == []  # not parked: handed over again on the next run
    [failed] = [r.event for r in store.read_stream(DEAD_LETTER_STREAM)]
    assert isinstance(failed, ProjectionEventFailed)
    assert (failed.projection, failed.stream, failed.attempts, failed.error_type) == (
        "shipping",
        "Order-o-2",
        2,
        "Flaky",
    )
    runner.run_until_idle()  # the cause went away: the same event, then the rest
    assert projection.shipped[-2:] == ["o-2", "o-3"]


def test_an_operators_retry_runs_the_handler_on_the_parked_event_once() -> None:
    store, projection, runner, _ = world({"o-2": [Broken("warehouse offline")]})
    ship(store, "o-1", "o-2")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    assert DeadLetters(store).retry(letter.id).status == "retry requested"
    runner.run_until_idle()
    assert projection.shipped == ["o-1", "o-2"]
    assert DeadLetters(store).list() == []
    [closed] = DeadLetters(store).list(include_closed=True)
    assert closed.status == "retried"
    # A redelivered request (a crash before the checkpoint) does nothing again.
    again = ProjectionRunner(store, [projection], InMemoryCheckpointStore(), now=Now(), sleep=Sleeps(Now()))
    again.run_until_idle()
    assert projection.shipped.count("o-2") == 2  # once in the first run's redelivery, once by the retry
    assert (
        len([r for r in store.read_stream(DEAD_LETTER_STREAM) if r.event_type == "DeadLetterResolved"]) == 1
    )


def test_a_retry_that_fails_again_leaves_the_event_parked_and_says_why() -> None:
    store, _projection, runner, _ = world({"o-1": [Broken("offline"), Broken("still offline")]})
    ship(store, "o-1")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    DeadLetters(store).retry(letter.id)
    runner.run_until_idle()
    [still] = DeadLetters(store).list()
    assert (still.status, still.detail) == ("parked", "Broken: still offline")


def test_an_operators_discard_closes_the_record_without_handling_the_event() -> None:
    store, projection, runner, _ = world({"o-1": [Broken("offline")]})
    ship(store, "o-1")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    DeadLetters(store).discard(letter.id, "order was refunded by hand")
    runner.run_until_idle()
    assert projection.shipped == [] and DeadLetters(store).list() == []
    [closed] = DeadLetters(store).list(include_closed=True)
    assert (closed.status, closed.detail) == ("discarded", "order was refunded by hand")
    with pytest.raises(DeadLetterNotFoundError):
        DeadLetters(store).retry(letter.id)


def test_another_projections_request_is_left_to_its_runner() -> None:
    store, _projection, runner, _ = world({"o-1": [Broken("offline")]})
    ship(store, "o-1")
    runner.run_until_idle()
    [letter] = DeadLetters(store).list()
    DeadLetters(store).retry(letter.id)

    class Other(Shipping):
        name = "other"

    other = ProjectionRunner(store, [Other()], InMemoryCheckpointStore(), now=Now(), sleep=Sleeps(Now()))
    other.run_until_idle()
    assert DeadLetters(store).get(letter.id).status == "retry requested"


def test_the_asyncio_form_retries_and_parks_alike() -> None:
    store, now = make_store(), Now()
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    projection = Shipping({"o-1": [Flaky("timeout")], "o-2": [Broken("gone")]})
    ship(store, "o-1", "o-2", "o-3")
    runner = ProjectionRunner(store, [projection], InMemoryCheckpointStore(), now=now, sleep=sleep)
    asyncio.run(runner.run_until_idle_async())
    assert projection.shipped == ["o-1", "o-3"] and waited == [1.0]
    [letter] = DeadLetters(store).list()
    assert letter.stream == "Order-o-2"


def test_without_a_policy_a_failing_handler_still_stops_the_runner() -> None:
    class Strict(Shipping):
        retry_policy = None

        @projects(Shipped)
        def on_shipped(self, event: Shipped) -> None:
            raise Broken("no")

    store, now = make_store(), Now()
    ship(store, "o-1")
    with pytest.raises(ProjectionError):
        make_runner(store, Strict(), now, Sleeps(now)).run_until_idle()
    assert list(store.read_stream(DEAD_LETTER_STREAM)) == []


@pytest.mark.parametrize("bad", [None, "yes", 1])
def test_ordered_must_be_a_bool(bad: Any) -> None:
    with pytest.raises(InvalidRetryPolicyError, match="ordered"):
        RetryPolicy(ordered=bad)


def test_projects_takes_only_a_retry_policy() -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        projects(Shipped, retry=3)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    scripts=st.lists(st.lists(st.sampled_from(["flaky", "broken"]), max_size=4), min_size=1, max_size=8),
    page_size=st.integers(1, 5),
    ordered=st.booleans(),
)
def test_every_event_ends_handled_or_parked_and_every_retry_waited_its_backoff(
    scripts: list[list[str]], page_size: int, ordered: bool
) -> None:
    """Whatever fails how often: each event is handled once or parked once (never both, never
    neither), in order; each wait is at least its backoff; ordered stops instead of parking."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.3, transient=(Flaky,), ordered=ordered)

    class Scripted(Shipping):
        retry_policy = policy

    def error(kind: str) -> Exception:
        return Flaky("timeout") if kind == "flaky" else Broken("gone")

    failures: dict[str, list[Exception]] = {
        f"o-{i}": [error(kind) for kind in script] for i, script in enumerate(scripts)
    }
    store, now = make_store(), Now()
    sleeps = Sleeps(now)
    projection = Scripted({k: list(v) for k, v in failures.items()})
    ship(store, *failures)
    runner = make_runner(store, projection, now, sleeps, page_size=page_size)
    stopped_at: str | None = None
    try:
        runner.run_until_idle()
    except ProjectionError as exc:
        assert ordered
        stopped_at = exc.stream
    parked = {letter.stream.removeprefix("Order-") for letter in DeadLetters(store).list()}
    expected_parked: set[str] = set()
    expected_shipped: list[str] = []
    expected_waits: list[float] = []
    for index, script in enumerate(scripts):
        order = f"o-{index}"
        failed_after = next(
            (n for n, kind in enumerate(script, 1) if kind == "broken" or n == policy.max_attempts),
            None,
        )
        expected_waits += [policy.backoff(n) for n in range(1, failed_after or len(script) + 1)]
        if failed_after is None:
            expected_shipped.append(order)
        elif ordered:
            assert stopped_at == f"Order-{order}"
            break
        else:
            expected_parked.add(order)
    assert projection.shipped == expected_shipped
    assert parked == (set() if ordered else expected_parked)
    assert len(sleeps.waited) == len(expected_waits)
    for backoff, waited in zip(expected_waits, sleeps.waited, strict=True):
        assert backoff <= waited <= max(backoff * 1.3, backoff)
