"""Projections: catch-up then live, checkpoints, exactly-once with an own position, rebuilds, progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix.core.errors import EventLoopRequiredError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution import (
    CheckpointStore,
    InMemoryCheckpointStore,
    Projection,
    ProjectionError,
    ProjectionProgress,
    ProjectionRunner,
    projects,
)
from orchestrix.core.messaging import Event, RecordedEvent, Serializer
from orchestrix.infrastructure.file.checkpoint import FileCheckpointStore
from orchestrix.infrastructure.file.store import FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from tests.infrastructure.pg_support import drop_schema, dsn_or_skip, new_schema_name


@attrs.frozen
class Deposited(Event):
    account: str
    amount: int


@attrs.frozen
class Withdrawn(Event):
    account: str
    amount: int


@attrs.frozen
class Noted(Event):
    """No projection here handles it."""

    text: str


def serializer() -> Serializer:
    return Serializer(types=[Deposited, Withdrawn, Noted])


class Crash(BaseException):
    """The process dies here (not an Exception, so nothing on the way catches it)."""


# -- projections --------------------------------------------------------------------------------


class Balances(Projection):
    """At-least-once: the model lives in ``db`` (a stand-in for a database) and is not idempotent,
    so redeliveries show in ``seen``."""

    name = "balances"

    def __init__(self, db: dict[str, Any] | None = None, *, crash_at: int | None = None) -> None:
        super().__init__()
        self.db = db if db is not None else {}
        self.db.setdefault("balances", {})
        self.db.setdefault("seen", [])
        self.crash_at = crash_at

    @projects(Deposited)
    def on_deposited(self, event: Deposited, recorded: RecordedEvent) -> None:
        self._add(event.account, event.amount, recorded)

    @projects(Withdrawn)
    def on_withdrawn(self, event: Withdrawn, recorded: RecordedEvent) -> None:
        self._add(event.account, -event.amount, recorded)

    def _add(self, account: str, amount: int, recorded: RecordedEvent) -> None:
        if recorded.position == self.crash_at:
            raise Crash
        self.db["seen"].append(recorded.position)
        self.db["balances"][account] = self.db["balances"].get(account, 0) + amount

    def reset(self) -> None:
        self.db["balances"].clear()
        self.db["seen"].clear()


class OwnPosition(Projection):
    """Exactly-once: changes of a page are kept aside and stored with the position in one step."""

    name = "own"

    def __init__(self, db: dict[str, Any], *, crash_at: int | None = None) -> None:
        super().__init__()
        self.db = db
        self.db.setdefault("position", 0)
        self.db.setdefault("balances", {})
        self.work = dict(self.db["balances"])
        self.handed: list[int] = []
        self.crash_at = crash_at

    def position(self) -> int:
        return self.db["position"]

    @projects(Deposited, Withdrawn)
    def on_change(self, event: Deposited | Withdrawn, recorded: RecordedEvent) -> None:
        if recorded.position == self.crash_at:
            raise Crash
        self.handed.append(recorded.position)
        sign = 1 if isinstance(event, Deposited) else -1
        self.work[event.account] = self.work.get(event.account, 0) + sign * event.amount

    def commit(self, position: int) -> None:
        self.db.update(position=position, balances=dict(self.work))

    def rollback(self) -> None:
        self.work = dict(self.db["balances"])

    def reset(self) -> None:
        self.db.update(position=0, balances={})
        self.work = {}


class Counter(Projection):
    """Counts events per type name, with an ``async def`` handler that awaits asyncio itself:
    only the asyncio forms can run it."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    @projects(Deposited, Withdrawn)
    async def on_any(self, event: Event) -> None:
        await asyncio.sleep(0)
        self.counts[type(event).__name__] = self.counts.get(type(event).__name__, 0) + 1

    def reset(self) -> None:
        self.counts.clear()


def fold(store: EventStore, upto: int | None = None) -> dict[str, int]:
    """The balances the log prefix up to ``upto`` adds up to."""
    balances: dict[str, int] = {}
    for recorded in store.read_all(0):
        if upto is not None and recorded.position > upto:
            break
        event = recorded.event
        if isinstance(event, Deposited | Withdrawn):
            sign = 1 if isinstance(event, Deposited) else -1
            balances[event.account] = balances.get(event.account, 0) + sign * event.amount
    return balances


def fill(store: EventStore, count: int, *, start: int = 0) -> list[int]:
    """Append ``count`` events over three accounts (every fifth a withdrawal); return their positions."""
    positions = []
    for n in range(start, start + count):
        event = Withdrawn(f"acc-{n % 3}", 1) if n % 5 == 4 else Deposited(f"acc-{n % 3}", n + 1)
        positions.append(store.append(f"acc-{n % 3}", [event]).last_position)
    return positions


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- backends -----------------------------------------------------------------------------------


@attrs.define
class Backend:
    store: EventStore
    checkpoints: CheckpointStore


@pytest.fixture(params=["memory", "file", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store with its natural checkpoint store."""
    if request.param == "memory":
        yield Backend(InMemoryEventStore(serializer=serializer()), InMemoryCheckpointStore())
    elif request.param == "file":
        store = FileEventStore(tmp_path / "store", serializer(), sync=False)
        yield Backend(store, FileCheckpointStore(tmp_path / "checkpoints.json"))
        store.close()
    else:
        dsn = dsn_or_skip()
        from orchestrix.infrastructure.postgres import PostgresEventStore

        schema = new_schema_name("proj")
        pg = PostgresEventStore(dsn, serializer(), schema=schema, pool_size=2, poll_interval=0.05)
        try:
            yield Backend(pg, pg.checkpoints())
        finally:
            pg.close()
            drop_schema(dsn, schema)


def memory() -> InMemoryEventStore:
    return InMemoryEventStore(serializer=serializer())


# -- catch-up, live, checkpoints ----------------------------------------------------------------


def test_catches_up_then_handles_new_events_live(backend: Backend) -> None:
    fill(backend.store, 30)
    projection = Balances()
    runner = ProjectionRunner(backend.store, [projection], backend.checkpoints, page_size=7)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        wait_until(lambda: projection.db["balances"] == fold(backend.store))
        last = fill(backend.store, 4, start=30)[-1]
        wait_until(lambda: runner.positions == {"balances": last})
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert projection.db["balances"] == fold(backend.store)
    assert backend.checkpoints.load("balances") == last
    assert runner.stats["balances"].handled == 34


def test_a_crash_resumes_from_the_checkpoint_and_redelivers_at_most_one_page(backend: Backend) -> None:
    positions = fill(backend.store, 50)
    db: dict[str, Any] = {}
    crash_at = positions[24]  # the fifth event of the third page of ten
    runner = ProjectionRunner(
        backend.store, [Balances(db, crash_at=crash_at)], backend.checkpoints, page_size=10
    )
    with pytest.raises(Crash):
        runner.run_until_idle()
    assert backend.checkpoints.load("balances") == positions[19]
    assert db["seen"] == positions[:24]

    restarted = ProjectionRunner(backend.store, [Balances(db)], backend.checkpoints, page_size=10)
    restarted.run_until_idle()
    again = [p for p in positions if db["seen"].count(p) == 2]
    assert again == positions[20:24]  # handled before the crash, after the last checkpoint
    assert sorted(set(db["seen"])) == positions
    assert backend.checkpoints.load("balances") == positions[-1]


def test_a_projection_storing_its_own_position_takes_effect_exactly_once(backend: Backend) -> None:
    positions = fill(backend.store, 50)
    db: dict[str, Any] = {}
    runner = ProjectionRunner(
        backend.store, [OwnPosition(db, crash_at=positions[34])], backend.checkpoints, page_size=10
    )
    with pytest.raises(Crash):
        runner.run_until_idle()
    assert db["position"] == positions[29]
    assert db["balances"] == fold(backend.store, positions[29])  # the half page was rolled back

    # The checkpoint store is lost, too: the projection's own position says where it is.
    restarted_projection = OwnPosition(db)
    restarted = ProjectionRunner(
        backend.store, [restarted_projection], InMemoryCheckpointStore(), page_size=10
    )
    restarted.run_until_idle()
    assert restarted_projection.handed == positions[30:]
    assert db == {"position": positions[-1], "balances": fold(backend.store)}


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_failed_page_is_rolled_back_so_a_rerun_stays_exactly_once(form: str) -> None:
    store = memory()
    positions = fill(store, 10)

    class Flaky(OwnPosition):
        failures = 1

        def on_change(self, event: Deposited | Withdrawn, recorded: RecordedEvent) -> None:
            super().on_change(event, recorded)
            if recorded.position == positions[6] and self.failures:
                self.failures -= 1
                raise ConnectionError("database went away")

    db: dict[str, Any] = {}
    runner = ProjectionRunner(store, [Flaky(db)], InMemoryCheckpointStore(), page_size=4)
    drain = runner.run_until_idle if form == "sync" else lambda: asyncio.run(runner.run_until_idle_async())
    with pytest.raises(ProjectionError):
        drain()
    drain()  # the same runner and projection, once the database is back
    assert db == {"position": positions[-1], "balances": fold(store)}


def test_rebuild_resets_the_model_and_replays_from_the_beginning(backend: Backend) -> None:
    positions = fill(backend.store, 12)
    db: dict[str, Any] = {}
    runner = ProjectionRunner(backend.store, [Balances(db)], backend.checkpoints, page_size=5)
    runner.run_until_idle()
    db["balances"]["acc-0"] = 10**6  # the model went wrong (a bug fixed since)

    # A crash during the rebuild leaves the checkpoint where the rebuilt model is.
    crashing = ProjectionRunner(
        backend.store, [Balances(db, crash_at=positions[2])], backend.checkpoints, page_size=5
    )
    with pytest.raises(Crash):
        crashing.rebuild()
    assert backend.checkpoints.load("balances") == 0
    assert db["seen"] == positions[:2]

    runner = ProjectionRunner(backend.store, [Balances(db)], backend.checkpoints, page_size=5)
    assert runner.rebuild() == 12
    assert db["balances"] == fold(backend.store)
    assert len(db["seen"]) == 12
    assert backend.checkpoints.load("balances") == backend.store.last_position()


def test_async_forms_run_async_handlers_then_follow_live_events(backend: Backend) -> None:
    fill(backend.store, 9)
    counter, balances = Counter(), Balances()
    runner = ProjectionRunner(backend.store, [counter, balances], backend.checkpoints, page_size=4)

    async def main() -> None:
        assert await runner.run_until_idle_async() == 9
        assert counter.counts == {"Deposited": 8, "Withdrawn": 1}
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.05))
        await backend.store.append_async("acc-9", [Deposited("acc-9", 5), Withdrawn("acc-9", 2)])
        deadline = time.monotonic() + 5
        while counter.counts.get("Withdrawn") != 2:
            assert time.monotonic() < deadline, "live events did not arrive"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert await runner.rebuild_async("counter") == 11
        assert counter.counts == {"Deposited": 9, "Withdrawn": 2}

    asyncio.run(main())
    assert balances.db["balances"] == fold(backend.store)
    assert len(balances.db["seen"]) == 11  # not rebuilt, so it saw each event once
    assert backend.checkpoints.load("counter") == backend.store.last_position()


# -- several projections, failures, skipping ----------------------------------------------------


class CountingStore(InMemoryEventStore):
    """Counts the pages read from the global order."""

    reads = 0

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        self.reads += 1
        return super().read_all(after, limit)


def test_several_projections_share_one_read_and_keep_their_own_checkpoints() -> None:
    store, checkpoints = CountingStore(serializer=serializer()), InMemoryCheckpointStore()
    fill(store, 20)
    own_db: dict[str, Any] = {}
    balances, own = Balances(), OwnPosition(own_db)
    ProjectionRunner(store, [balances], checkpoints, page_size=10).run_until_idle()
    assert checkpoints.load("balances") == 20 and checkpoints.load("own") == 0

    fill(store, 5, start=20)
    store.reads = 0
    runner = ProjectionRunner(store, [balances, own], checkpoints, page_size=10)
    runner.run_until_idle()
    assert store.reads == 4  # 25 events from position 0 in pages of 10, then an empty page: one read each
    assert own.handed == list(range(1, 26))
    assert balances.db["seen"] == list(range(1, 26))  # positions 21..25 only once, although re-read
    assert checkpoints.load("balances") == checkpoints.load("own") == 25
    assert own_db["balances"] == balances.db["balances"] == fold(store)


class Fragile(Projection):
    name = "fragile"

    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.totals: dict[str, int] = {}

    @projects(Deposited)
    def on_deposited(self, event: Deposited) -> None:
        if event.amount == 7 and self.broken:
            raise ValueError("amount 7 is unlucky")
        self.totals[event.account] = self.totals.get(event.account, 0) + event.amount


def test_a_failing_handler_stops_the_runner_before_the_event_and_nothing_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, checkpoints = memory(), InMemoryCheckpointStore()
    fill(store, 10)  # amount 7 is the deposit at position 7
    projection = Fragile()
    runner = ProjectionRunner(store, [projection], checkpoints, page_size=4)
    with (
        caplog.at_level(logging.ERROR, logger="orchestrix"),
        pytest.raises(ProjectionError) as raised,
    ):
        runner.run_until_idle()
    error = raised.value
    assert (error.projection, error.position, error.event_type, error.stream) == (
        "fragile",
        7,
        "Deposited",
        "acc-0",
    )
    assert isinstance(error.__cause__, ValueError)
    assert checkpoints.load("fragile") == 4
    assert runner.positions is None  # it reloads from the checkpoint next time
    assert "position 7" in caplog.text and "Deposited" in caplog.text and "unlucky" in caplog.text

    projection.broken = False
    runner.run_until_idle()
    assert checkpoints.load("fragile") == 10
    # All deposits add up to 40; the one at position 6 (amount 6) was handled before the failure
    # and again after it (at-least-once), the one at position 7 exactly once.
    assert sum(projection.totals.values()) == 40 + 6
    assert runner.stats["fragile"].handled == 8 + 1


def test_events_without_a_handler_are_skipped_and_counted() -> None:
    store, checkpoints = memory(), InMemoryCheckpointStore()
    store.append("notes", [Noted("a"), Noted("b")])
    store.append("acc-1", [Deposited("acc-1", 3)])
    projection = Balances()
    runner = ProjectionRunner(store, [projection], checkpoints)
    assert runner.run_until_idle() == 3
    stats = runner.stats["balances"]
    assert (stats.events, stats.handled, stats.skipped) == (3, 1, 2)
    assert checkpoints.load("balances") == 3
    assert Balances.handled_types() == {Deposited, Withdrawn}


def test_a_failing_commit_stops_the_runner_without_moving_the_checkpoint() -> None:
    store, checkpoints = memory(), InMemoryCheckpointStore()
    fill(store, 3)

    class Unwritable(OwnPosition):
        def commit(self, position: int) -> None:
            raise OSError("disk full")

    db: dict[str, Any] = {}
    runner = ProjectionRunner(store, [Unwritable(db)], checkpoints)
    with pytest.raises(ProjectionError, match="commit") as raised:
        runner.run_once()
    assert raised.value.position == 1 and raised.value.event_type is None
    assert checkpoints.load("own") == 0 and db == {"position": 0, "balances": {}}


# -- progress -----------------------------------------------------------------------------------


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Slow(Projection):
    """Every event takes 10 ms of the injected clock."""

    name = "slow"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    @projects(Deposited, Withdrawn)
    def on_any(self, event: Event) -> None:
        self.clock.now += 0.01

    def reset(self) -> None:
        pass


def test_a_long_catch_up_reports_progress_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = memory(), Clock()
    store_events = 1000
    for n in range(0, store_events, 100):
        store.append(f"acc-{n}", [Deposited(f"acc-{n}", 1) for _ in range(100)])
    reports: list[ProjectionProgress] = []
    runner = ProjectionRunner(
        store,
        [Slow(clock)],
        InMemoryCheckpointStore(),
        page_size=100,
        progress=reports.append,
        progress_every=2.5,
        catch_up_threshold=200,
        clock=clock,
    )
    with caplog.at_level(logging.INFO, logger="orchestrix"):
        runner.run_until_idle()
    assert [(r.position, r.events, round(r.seconds, 6), r.done) for r in reports] == [
        (300, 300, 3.0, False),
        (600, 600, 6.0, False),
        (900, 900, 9.0, False),
        (1000, 1000, 10.0, True),
    ]
    first = reports[0]
    assert (first.name, first.start, first.target) == ("slow", 0, 1000)
    assert first.rate == pytest.approx(100.0) and first.fraction == pytest.approx(0.3)
    assert first.eta == pytest.approx(7.0)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines[0] == "projections slow: catching up, 300/1000 events (30.0%), 100 events/s, ETA 7s"
    assert lines[-1] == "projections slow: caught up at position 1000, 1000 events in 10s (100 events/s)"
    assert len(lines) == 4


def test_a_runner_close_behind_reports_nothing_but_a_rebuild_always_reports() -> None:
    store, clock = memory(), Clock()
    fill(store, 50)
    reports: list[ProjectionProgress] = []
    runner = ProjectionRunner(
        store, [Slow(clock)], InMemoryCheckpointStore(), page_size=10, progress=reports.append, clock=clock
    )
    runner.run_until_idle()
    assert reports == []
    runner.rebuild()
    assert [(r.position, r.events, r.done) for r in reports] == [(50, 50, True)]


# -- misuse -------------------------------------------------------------------------------------


def test_decorator_misuse_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="at least one event type"):
        projects()
    with pytest.raises(TypeError, match="event classes"):
        projects("Deposited")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"@projects\(EventType\)"):

        class Bare(Projection):
            @projects  # type: ignore[arg-type]
            def on_deposited(self, event: Deposited) -> None: ...

    with pytest.raises(TypeError, match="plain method"):

        class Static(Projection):
            @projects(Deposited)
            @staticmethod
            def on_deposited(event: Deposited) -> None: ...

    with pytest.raises(TypeError, match="handled by both on_a"):

        class Twice(Projection):
            @projects(Deposited)
            def on_a(self, event: Deposited) -> None: ...

            @projects(Deposited, Withdrawn)
            def on_b(self, event: Deposited) -> None: ...

    with pytest.raises(TypeError, match=r"takes \(self, event\) or \(self, event, recorded\)"):

        class NoEvent(Projection):
            @projects(Deposited)
            def on_deposited(self) -> None: ...


def test_a_subclass_may_override_a_handler_method() -> None:
    class Doubled(Balances):
        def on_deposited(self, event: Deposited, recorded: RecordedEvent) -> None:
            super().on_deposited(Deposited(event.account, 2 * event.amount), recorded)

    store = memory()
    store.append("acc-1", [Deposited("acc-1", 3)])
    projection = Doubled()
    ProjectionRunner(store, [projection], InMemoryCheckpointStore()).run_until_idle()
    assert projection.db["balances"] == {"acc-1": 6}


def test_runner_misuse_is_refused_before_anything_runs() -> None:
    store, checkpoints = memory(), InMemoryCheckpointStore()
    fill(store, 3)

    class Nameless(Projection):
        @projects(Deposited)
        def on_deposited(self, event: Deposited) -> None: ...

    class Empty(Projection):
        name = "empty"

    with pytest.raises(TypeError, match="needs a name"):
        ProjectionRunner(store, [Nameless()], checkpoints)
    assert Nameless("named").name == "named"
    with pytest.raises(ValueError, match="two projections are named 'balances'"):
        ProjectionRunner(store, [Balances(), Balances()], checkpoints)
    with pytest.raises(TypeError, match="no @projects handlers"):
        ProjectionRunner(store, [Empty()], checkpoints)
    with pytest.raises(TypeError, match="is not a Projection"):
        ProjectionRunner(store, [Balances], checkpoints)  # type: ignore[list-item]

    runner = ProjectionRunner(store, [Nameless("plain")], checkpoints)
    runner.run_until_idle()
    with pytest.raises(TypeError, match="does not define reset"):
        runner.rebuild()
    with pytest.raises(KeyError, match="no projection named 'other'"):
        runner.rebuild("other")
    assert checkpoints.load("plain") == 3  # untouched by the refused rebuilds

    counter = ProjectionRunner(store, [Counter()], checkpoints)
    with pytest.raises(EventLoopRequiredError, match=r"Counter\.on_any.* awaited"):
        counter.run_once()  # on_any awaits asyncio.sleep, which only an event loop provides
    assert checkpoints.load("counter") == 0


def test_a_reset_that_keeps_the_stored_position_is_refused() -> None:
    store = memory()
    fill(store, 3)

    class Forgetful(OwnPosition):
        def reset(self) -> None:
            self.db["balances"] = {}

    db: dict[str, Any] = {}
    runner = ProjectionRunner(store, [Forgetful(db)], InMemoryCheckpointStore())
    runner.run_until_idle()
    with pytest.raises(ProjectionError, match=r"after reset\(\), position\(\) still returns 3"):
        runner.rebuild()


# -- the model always equals a fold of the prefix it has reached ---------------------------------


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("run"), st.integers(1, 3)),
        st.tuples(st.just("crash"), st.integers(0, 5)),
    ),
    max_size=12,
)


@given(operations, st.integers(1, 5))
def test_the_models_always_equal_a_fold_of_the_log_prefix_they_reached(
    steps: list[tuple[str, int]], page_size: int
) -> None:
    store, checkpoints = memory(), InMemoryCheckpointStore()
    own_db: dict[str, Any] = {}
    latest: dict[str, Any] = {}

    class Latest(Projection):
        """At-least-once with an idempotent model: the last amount seen per account."""

        name = "latest"

        @projects(Deposited)
        def on_deposited(self, event: Deposited) -> None:
            latest[event.account] = event.amount

    def last_amounts(upto: int) -> dict[str, int]:
        return {
            r.event.account: r.event.amount for r in store.read_all(0, upto) if isinstance(r.event, Deposited)
        }

    runner = ProjectionRunner(store, [OwnPosition(own_db), Latest()], checkpoints, page_size=page_size)
    appended = 0
    for kind, n in steps:
        if kind == "append":
            fill(store, n, start=appended)
            appended += n
        elif kind == "run":
            runner.run_until_idle(max_pages=n)
        else:
            crashing = OwnPosition(own_db, crash_at=own_db["position"] + n + 1)
            runner = ProjectionRunner(store, [crashing, Latest()], checkpoints, page_size=page_size)
            with contextlib.suppress(Crash):
                runner.run_until_idle()
            runner = ProjectionRunner(
                store, [OwnPosition(own_db), Latest()], checkpoints, page_size=page_size
            )
        assert own_db["balances"] == fold(store, own_db["position"])
        assert latest == last_amounts(checkpoints.load("latest"))
    runner.run_until_idle()
    assert own_db == {"position": store.last_position(), "balances": fold(store)}
    assert latest == last_amounts(store.last_position())


# -- driving one runner from one place at a time ---------------------------------------------------


def test_a_rebuild_is_refused_while_run_forever_feeds_the_model() -> None:
    store = memory()
    for n in range(20):
        store.append(f"acc-{n}", [Deposited(f"acc-{n}", 1)])
    projection = Balances()
    runner = ProjectionRunner(store, [projection], InMemoryCheckpointStore(), page_size=5)

    async def main() -> None:
        await runner.run_until_idle_async()
        stop = asyncio.Event()
        live = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.01))
        await asyncio.sleep(0.02)
        with pytest.raises(RuntimeError, match="stop run_forever before rebuilding"):
            await runner.rebuild_async()
        stop.set()
        await live
        assert await runner.rebuild_async() == 20  # stopped: now it may

    asyncio.run(main())
    assert projection.db["seen"] == list(range(1, 21))  # rebuilt once, nothing twice
    assert sum(projection.db["balances"].values()) == 20


def test_two_tasks_cannot_run_pages_of_one_runner_at_once() -> None:
    store = memory()
    store.append("acc-1", [Deposited("acc-1", 1)])
    gate = asyncio.Event()

    class Slow(Balances):
        @projects(Deposited)
        async def on_deposited(self, event: Deposited, recorded: RecordedEvent) -> None:
            await gate.wait()
            self._add(event.account, event.amount, recorded)

    runner = ProjectionRunner(store, [Slow()], InMemoryCheckpointStore())

    async def main() -> None:
        first = asyncio.create_task(runner.run_once_async())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="busy"):
            await runner.run_once_async()
        gate.set()
        assert await first == 1

    asyncio.run(main())


def test_a_redecorated_override_handles_only_its_own_types() -> None:
    class Base(Projection):
        name = "base"

        @projects(Deposited)
        def on_event(self, event: Deposited) -> None: ...

    class Sub(Base):
        @projects(Withdrawn)
        def on_event(self, event: Withdrawn) -> None: ...

    class Plain(Base):
        def on_event(self, event: Deposited) -> None: ...  # not re-marked: keeps the base's types

    assert Sub.handled_types() == {Withdrawn}
    assert Plain.handled_types() == {Deposited}


def test_a_handler_must_take_the_event_and_perhaps_the_envelope_only() -> None:
    with pytest.raises(TypeError, match="takes"):

        class KeywordOnly(Projection):
            name = "k"

            @projects(Deposited)
            def on_deposited(self, event: Deposited, *, recorded: RecordedEvent) -> None: ...

    class Twice(Projection):  # one type named twice on one method is one mark
        name = "t"

        @projects(Deposited, Deposited)
        def on_deposited(self, event: Deposited) -> None: ...

    assert Twice.handled_types() == {Deposited}
