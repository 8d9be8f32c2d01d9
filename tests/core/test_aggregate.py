import asyncio
import uuid

import attrs
import pytest

from orchestrix.core.errors import (
    AggregateError,
    AggregateNotFoundError,
    ConcurrencyError,
    InvalidArgumentError,
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
    repo.update(Counter, "c-1", lambda c: None)  # now cached: the conflict hits a cached aggregate
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


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"])
def test_retry_on_conflict_refuses_an_attempt_count_that_is_no_positive_int(
    repo: AggregateRepository, bad: object
) -> None:
    calls: list[int] = []
    with pytest.raises(InvalidArgumentError) as refused:
        retry_on_conflict(lambda: calls.append(1), attempts=bad)  # type: ignore[arg-type]
    assert refused.value.parameter == "attempts" and calls == []
    with pytest.raises(InvalidArgumentError):
        repo.update(Counter, "c-1", lambda c: calls.append(1), attempts=bad)  # type: ignore[arg-type]
    assert calls == []


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


# -- the repository's cache of idle aggregates ---------------------------------------------------


class CountingStore(InMemoryEventStore):
    """Counts the events each read hands out, to tell a replay from a cache hit."""

    def __init__(self) -> None:
        super().__init__()
        self.replayed = 0

    def read_stream(self, stream: str, from_version: int = 0):  # type: ignore[no-untyped-def]
        for recorded in super().read_stream(stream, from_version):  # the async form reads through here
            self.replayed += 1
            yield recorded


def _created(repo: AggregateRepository, counter_id: str = "c-1", increments: int = 0) -> None:
    counter = Counter()
    counter.create(counter_id)
    for _ in range(increments):
        counter.increment(1)
    repo.save(counter)


def test_an_update_after_an_update_replays_only_what_was_stored_since() -> None:
    store = CountingStore()
    repo = AggregateRepository(store)
    _created(repo, increments=9)
    repo.update(Counter, "c-1", lambda c: c.increment(1))
    assert store.replayed == 10  # the first update replays the stream
    repo.update(Counter, "c-1", lambda c: c.increment(1))
    assert store.replayed == 10  # the second finds the aggregate it saved, still current
    other = AggregateRepository(store, cache_size=0)
    other.update(Counter, "c-1", lambda c: c.increment(100))  # another writer moves the stream on
    replayed = store.replayed
    assert repo.update(Counter, "c-1", lambda c: (c.increment(1), c.value)[1]) == 112
    assert store.replayed == replayed + 1  # only the other writer's event was replayed
    assert repo.load(Counter, "c-1").value == 112


def test_the_async_update_uses_the_same_cache() -> None:
    store = CountingStore()
    repo = AggregateRepository(store)
    _created(repo, increments=4)

    async def scenario() -> int:
        await repo.update_async(Counter, "c-1", lambda c: c.increment(1))
        replayed = store.replayed
        await repo.update_async(Counter, "c-1", lambda c: c.increment(1))
        assert store.replayed == replayed
        AggregateRepository(store, cache_size=0).update(Counter, "c-1", lambda c: c.increment(10))
        return await repo.update_async(Counter, "c-1", lambda c: (c.increment(1), c.value)[1])

    assert asyncio.run(scenario()) == 17
    assert store.replayed == 5 + 7 + 1  # first replay, the other writer's own replay, its one event


def test_a_failed_decision_drops_the_cached_aggregate() -> None:
    store = CountingStore()
    repo = AggregateRepository(store)
    _created(repo)
    repo.update(Counter, "c-1", lambda c: c.increment(1))

    def half_done(c: Counter) -> None:
        c.increment(1000)  # applied to this instance, never saved
        raise ValueError("refused after all")

    with pytest.raises(ValueError):
        repo.update(Counter, "c-1", half_done)
    replayed = store.replayed
    assert repo.update(Counter, "c-1", lambda c: c.value) == 1  # replayed from the stream, not 1001
    assert store.replayed == replayed + 2


def test_concurrent_updates_never_share_an_aggregate() -> None:
    import threading

    repo = AggregateRepository(InMemoryEventStore())
    _created(repo)
    in_use: set[int] = set()
    shared: list[int] = []
    guard = threading.Lock()

    def decide(c: Counter) -> None:
        with guard:
            if id(c) in in_use:
                shared.append(id(c))
            in_use.add(id(c))
        c.increment(1)
        with guard:
            in_use.discard(id(c))

    def worker() -> None:
        for _ in range(50):
            repo.update(Counter, "c-1", decide, attempts=1000)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared == []
    assert repo.load(Counter, "c-1").value == 400


def test_the_cache_is_bounded_and_can_be_turned_off() -> None:
    store = CountingStore()
    repo = AggregateRepository(store, cache_size=2)
    for k in range(3):
        _created(repo, f"c-{k}")
        repo.update(Counter, f"c-{k}", lambda c: c.increment(1))
    replayed = store.replayed
    repo.update(Counter, "c-2", lambda c: c.increment(1))
    repo.update(Counter, "c-1", lambda c: c.increment(1))
    assert store.replayed == replayed  # the two most recent are cached
    repo.update(Counter, "c-0", lambda c: c.increment(1))
    assert store.replayed == replayed + 2  # the oldest was evicted: replayed (created + 1)
    off = AggregateRepository(store, cache_size=0)
    off.update(Counter, "c-0", lambda c: c.increment(1))
    off.update(Counter, "c-0", lambda c: c.increment(1))
    assert store.replayed == replayed + 2 + 3 + 4  # without a cache each update replays it all
    with pytest.raises(ValueError, match="cache_size"):
        AggregateRepository(store, cache_size=-1)


def test_a_store_that_lost_events_makes_the_cache_replay_from_scratch() -> None:
    repo = AggregateRepository(InMemoryEventStore())
    _created(repo, increments=3)
    repo.update(Counter, "c-1", lambda c: c.increment(1))
    fresh = InMemoryEventStore()  # e.g. reopened after losing unsynced writes
    _created(AggregateRepository(fresh, cache_size=0), increments=1)
    repo.event_store = fresh
    assert repo.update(Counter, "c-1", lambda c: c.value) == 1


def test_retries_after_the_first_wait_a_short_growing_random_time() -> None:
    from orchestrix.core.eventsourcing._conflicts import _conflict_backoff as conflict_backoff

    assert conflict_backoff(1) == 0.0  # the first retry is immediate
    for failed, bound in ((2, 0.001), (3, 0.002), (4, 0.004), (10, 0.05), (30, 0.05)):
        waits = [conflict_backoff(failed) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        assert len(set(waits)) > 1  # random, so colliding writers fall out of step


DEPOSIT_ID = uuid.UUID(int=42)  # a deterministic id, "derived from an idempotency key"


def test_an_idempotent_repeat_does_not_leave_a_twice_applied_aggregate_in_the_cache() -> None:
    store = InMemoryEventStore()
    repo = AggregateRepository(store)  # this worker: cache on
    other = AggregateRepository(store, cache_size=0)  # another worker / process

    counter = Counter()
    counter.create("c-1")
    repo.save(counter)
    repo.update(Counter, "c-1", lambda c: c.raise_event(Incremented(5), event_id=DEPOSIT_ID))  # v1
    repo.update(Counter, "c-1", lambda c: c.increment(1))  # v2, value 6
    # the command with DEPOSIT_ID is delivered again: the store answers with the original
    # result (version 1) and stores nothing, but the cached aggregate applied it a second time
    repo.update(Counter, "c-1", lambda c: c.raise_event(Incremented(5), event_id=DEPOSIT_ID))
    assert repo.load(Counter, "c-1").value == 6
    other.update(Counter, "c-1", lambda c: c.increment(100))  # stream now at version 3: value 106

    seen = repo.update(Counter, "c-1", lambda c: c.value)
    assert seen == repo.load(Counter, "c-1").value == 106, f"update() acted on value {seen}"
