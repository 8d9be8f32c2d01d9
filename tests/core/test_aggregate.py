import asyncio
import uuid

import attrs
import pytest

from orchestrix.core.errors import (
    AggregateError,
    AggregateNotFoundError,
    ConcurrencyError,
    UnhandledEventError,
)
from orchestrix.core.eventsourcing import NO_STREAM, AggregateRepository, AggregateRoot, applies
from orchestrix.core.eventsourcing.aggregate import retry_on_conflict
from orchestrix.core.messaging import Event
from orchestrix.infrastructure.memory.store import InMemoryEventStore


@attrs.frozen
class Created(Event):
    counter_id: str


@attrs.frozen
class Incremented(Event):
    by: int


@attrs.frozen
class Forgotten(Event):
    pass


class Counter(AggregateRoot):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def create(self, counter_id: str) -> None:
        self.raise_event(Created(counter_id))

    def increment(self, by: int = 1) -> None:
        self.raise_event(Incremented(by))

    @applies(Created)
    def _created(self, event: Created) -> None:
        self.id = event.counter_id

    @applies(Incremented)
    def _incremented(self, event: Incremented) -> None:
        self.value += event.by


class LoudCounter(Counter):
    category = "Loud"

    @applies(Incremented)
    def _incremented(self, event: Incremented) -> None:
        self.value += 10 * event.by


@pytest.fixture
def repo() -> AggregateRepository:
    return AggregateRepository(event_store=InMemoryEventStore())


def test_state_changes_only_through_applied_events_and_replays_the_same(repo: AggregateRepository) -> None:
    counter = Counter()
    counter.create("c-1")
    counter.increment(2)
    counter.increment(3)
    assert (counter.value, counter.version, len(counter.pending_events)) == (5, 2, 3)
    repo.save(counter)
    assert counter.pending_events == ()
    loaded = repo.load(Counter, "c-1")
    assert (loaded.value, loaded.version, loaded.id) == (5, 2, "c-1")


def test_dispatch_is_per_class_and_subclasses_override(repo: AggregateRepository) -> None:
    loud = LoudCounter()
    loud.create("c-1")
    loud.increment(1)
    assert loud.value == 10
    assert LoudCounter.stream_name("c-1") == "Loud-c-1"
    assert Counter.stream_name("c-1") == "Counter-c-1"


def test_an_event_without_an_apply_handler_is_an_error_not_ignored(repo: AggregateRepository) -> None:
    counter = Counter()
    with pytest.raises(UnhandledEventError, match="Counter has no apply handler for Forgotten"):
        counter.raise_event(Forgotten())
    repo.event_store.append("Counter-c-9", [Created("c-9"), Forgotten()])
    with pytest.raises(UnhandledEventError):
        repo.load(Counter, "c-9")


def test_loading_a_missing_aggregate_raises_a_clear_error(repo: AggregateRepository) -> None:
    with pytest.raises(AggregateNotFoundError, match="Counter 'nope' not found") as raised:
        repo.load(Counter, "nope")
    assert raised.value.stream == "Counter-nope"


def test_save_uses_the_loaded_version_so_a_lost_update_conflicts(repo: AggregateRepository) -> None:
    counter = Counter()
    counter.create("c-1")
    repo.save(counter)
    first, second = repo.load(Counter, "c-1"), repo.load(Counter, "c-1")
    first.increment()
    repo.save(first)
    second.increment()
    with pytest.raises(ConcurrencyError) as raised:
        repo.save(second)
    assert (raised.value.expected, raised.value.actual) == (0, 1)
    assert repo.load(Counter, "c-1").value == 1


def test_saving_a_new_aggregate_twice_conflicts(repo: AggregateRepository) -> None:
    for _ in range(2):
        counter = Counter()
        counter.create("c-1")
        if _ == 0:
            repo.save(counter)
    with pytest.raises(ConcurrencyError) as raised:
        repo.save(counter)
    assert raised.value.expected == NO_STREAM


def test_saving_nothing_stores_nothing(repo: AggregateRepository) -> None:
    assert repo.save(Counter()) is None
    assert repo.event_store.last_position() == 0


def test_an_aggregate_without_an_id_cannot_be_saved(repo: AggregateRepository) -> None:
    counter = Counter()
    counter.increment()
    with pytest.raises(AggregateError, match="no id"):
        repo.save(counter)


def test_correlation_and_causation_ids_reach_the_envelope(repo: AggregateRepository) -> None:
    counter = Counter()
    counter.create("c-1")
    correlation, causation = uuid.uuid4(), uuid.uuid4()
    repo.save(counter, correlation_id=correlation, causation_id=causation)
    (recorded,) = repo.event_store.read_stream("Counter-c-1")
    assert (recorded.correlation_id, recorded.causation_id) == (correlation, causation)


def test_a_deterministic_event_id_makes_a_repeated_save_a_no_op(repo: AggregateRepository) -> None:
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, "c-1:create")
    results = []
    for _ in range(2):
        counter = Counter()
        counter.raise_event(Created("c-1"), event_id=event_id)
        results.append(repo.save(counter))
    assert results[0] == results[1]
    assert repo.event_store.stream_version("Counter-c-1") == 0


def test_update_reloads_and_retries_after_a_conflict(repo: AggregateRepository) -> None:
    counter = Counter()
    counter.create("c-1")
    repo.save(counter)
    calls = 0

    def decide(c: Counter) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else writes between our load and our save
            other = repo.load(Counter, "c-1")
            other.increment(100)
            repo.save(other)
        c.increment(1)
        return c.value

    assert repo.update(Counter, "c-1", decide) == 101
    assert calls == 2
    assert repo.load(Counter, "c-1").value == 101


def test_retry_on_conflict_gives_up_after_the_bounded_attempts() -> None:
    attempts = 0

    def always_conflicts() -> None:
        nonlocal attempts
        attempts += 1
        raise ConcurrencyError("s", 0, 1)

    with pytest.raises(ConcurrencyError):
        retry_on_conflict(always_conflicts, attempts=3)
    assert attempts == 3


def test_async_forms_load_save_and_update(repo: AggregateRepository) -> None:
    async def scenario() -> int:
        counter = Counter()
        counter.create("c-1")
        await repo.save_async(counter)
        await repo.update_async(Counter, "c-1", lambda c: c.increment(4))
        with pytest.raises(AggregateNotFoundError):
            await repo.load_async(Counter, "missing")
        return (await repo.load_async(Counter, "c-1")).value

    assert asyncio.run(scenario()) == 4
