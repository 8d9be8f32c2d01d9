"""Projections written either way, run either way: plain or ``async def`` handlers and hooks,
under the sync and the asyncio forms of the runner, with one outcome.

The runner's behaviour is written once and run by two drivers, so a sync run and an asyncio run
of the same projection over the same store must agree on everything observable: checkpoints,
stats, progress reports, log lines and the read model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from orchestrix.core.errors import EventLoopRequiredError
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution import (
    CheckpointStore,
    InMemoryCheckpointStore,
    Projection,
    ProjectionError,
    ProjectionProgress,
    ProjectionRunner,
    ProjectionStats,
    projects,
)
from orchestrix.core.messaging import Event, RecordedEvent, Serializer
from orchestrix.infrastructure.file.checkpoint import FileCheckpointStore
from orchestrix.infrastructure.file.store import FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore


@attrs.frozen
class Deposited(Event):
    account: str
    amount: int


@attrs.frozen
class Withdrawn(Event):
    account: str
    amount: int


def serializer() -> Serializer:
    return Serializer(types=[Deposited, Withdrawn])


def fill(store: EventStore, count: int) -> None:
    for n in range(count):
        event = Withdrawn(f"acc-{n % 3}", 1) if n % 4 == 3 else Deposited(f"acc-{n % 3}", n + 1)
        store.append(f"acc-{n % 3}", [event])


def fold(store: EventStore) -> dict[str, int]:
    balances: dict[str, int] = {}
    for recorded in store.read_all(0):
        event = recorded.event
        sign = 1 if isinstance(event, Deposited) else -1
        balances[event.account] = balances.get(event.account, 0) + sign * event.amount
    return balances


def drive(runner: ProjectionRunner, driver: str) -> Callable[..., Any]:
    """``call("run_until_idle")`` runs that method of ``runner`` in the chosen form."""

    def call(method: str, *args: Any) -> Any:
        if driver == "sync":
            return getattr(runner, method)(*args)
        return asyncio.run(getattr(runner, method + "_async")(*args))

    return call


# -- every handler and hook form under every driver -------------------------------------------


async def settled(value: Any) -> Any:
    """A coroutine that needs no event loop (as orchestrix operations, under the sync form)."""
    return value


def ledger_class(handlers: str, hooks: str) -> type[Any]:
    """An exactly-once ledger whose handlers and hooks are plain methods or ``async def``.

    It fails once, at the event of amount 7, so each run also goes through a rollback; every
    call is written to ``calls`` so runs can be compared step by step.
    """

    def record(self: Any, what: str, *args: Any) -> None:
        self.calls.append((what, *args))

    def deposit(self: Any, event: Deposited, recorded: RecordedEvent) -> None:
        record(self, "deposit", recorded.position)
        if event.amount == 7 and self.fail_once:
            self.fail_once = False
            raise ConnectionError("database went away")
        self.work[event.account] = self.work.get(event.account, 0) + event.amount

    def withdraw(self: Any, event: Withdrawn) -> None:
        record(self, "withdraw")
        self.work[event.account] = self.work.get(event.account, 0) - event.amount

    def position(self: Any) -> int:
        record(self, "position")
        return int(self.db["position"])

    def commit(self: Any, at: int) -> None:
        record(self, "commit", at)
        self.db.update(position=at, balances=dict(self.work))

    def rollback(self: Any) -> None:
        record(self, "rollback")
        self.work = dict(self.db["balances"])

    def reset(self: Any) -> None:
        record(self, "reset")
        self.db.update(position=0, balances={})
        self.work = {}

    def as_coroutine(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)  # the same signature: the runner reads it (event, envelope?)
        async def method(self: Any, *args: Any) -> Any:
            return await settled(function(self, *args))

        return method

    def form(kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        return as_coroutine(function) if kind == "coroutine" else function

    def __init__(self: Any, db: dict[str, Any]) -> None:
        Projection.__init__(self, "ledger")
        self.db = db
        db.setdefault("position", 0)
        db.setdefault("balances", {})
        self.work = dict(db["balances"])
        self.calls = []
        self.fail_once = True

    members = {
        "__init__": __init__,
        "on_deposited": projects(Deposited)(form(handlers, deposit)),
        "on_withdrawn": projects(Withdrawn)(form(handlers, withdraw)),
        "position": form(hooks, position),
        "commit": form(hooks, commit),
        "rollback": form(hooks, rollback),
        "reset": form(hooks, reset),
    }
    return type(f"Ledger_{handlers}_{hooks}", (Projection,), members)


FORMS = [(handlers, hooks) for handlers in ("plain", "coroutine") for hooks in ("plain", "coroutine")]


def run_ledger(handlers: str, hooks: str, driver: str) -> tuple[Projection, dict[str, Any], Any]:
    store = InMemoryEventStore(serializer=serializer())
    fill(store, 12)  # amount 7 is the deposit at position 7
    db: dict[str, Any] = {}
    projection = ledger_class(handlers, hooks)(db)
    checkpoints = InMemoryCheckpointStore()
    runner = ProjectionRunner(store, [projection], checkpoints, page_size=4)
    call = drive(runner, driver)
    with pytest.raises(ProjectionError) as raised:
        call("run_until_idle")
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert (raised.value.position, db["position"], checkpoints.load("ledger")) == (7, 4, 4)
    assert call("run_until_idle") == 8  # events 5..12 read again, then an empty page
    assert db == {"position": 12, "balances": fold(store)}
    assert call("rebuild") == 12
    assert db == {"position": 12, "balances": fold(store)}
    return projection, db, (checkpoints.load("ledger"), runner.stats["ledger"], runner.positions)


@pytest.mark.parametrize("driver", ["sync", "asyncio"])
@pytest.mark.parametrize(("handlers", "hooks"), FORMS)
def test_plain_and_coroutine_handlers_and_hooks_run_under_both_forms(
    handlers: str, hooks: str, driver: str
) -> None:
    projection, _db, (checkpoint, stats, positions) = run_ledger(handlers, hooks, driver)
    reference, _, expected = run_ledger("plain", "plain", "sync")
    assert projection.calls == reference.calls  # type: ignore[attr-defined]
    assert (checkpoint, stats, positions) == expected
    assert stats == ProjectionStats(events=4 + 3 + 8 + 12, handled=4 + 2 + 8 + 12, skipped=0)  # 7 failed once
    assert ("rollback",) in reference.calls  # type: ignore[attr-defined]


# -- a coroutine that needs an event loop -------------------------------------------------------


class Sleepy(Projection):
    """Awaits asyncio itself in a handler (or, with ``in_commit``, in its commit hook)."""

    name = "sleepy"

    def __init__(self, *, in_commit: bool = False) -> None:
        super().__init__()
        self.in_commit = in_commit
        self.seen: list[int] = []
        self.committed: list[int] = []
        self.rolled_back = 0

    @projects(Deposited, Withdrawn)
    async def on_event(self, event: Event, recorded: RecordedEvent) -> None:
        if not self.in_commit:
            await asyncio.sleep(0.001)  # needs an event loop
        self.seen.append(recorded.position)

    async def commit(self, position: int) -> None:
        if self.in_commit:
            await asyncio.sleep(0.001)
        self.committed.append(position)

    def rollback(self) -> None:
        self.rolled_back += 1


@pytest.mark.parametrize(("in_commit", "named"), [(False, "Sleepy.on_event"), (True, "Sleepy.commit")])
def test_a_coroutine_awaiting_asyncio_under_the_sync_form_raises_event_loop_required(
    in_commit: bool, named: str
) -> None:
    store = InMemoryEventStore(serializer=serializer())
    fill(store, 5)
    checkpoints = InMemoryCheckpointStore()
    projection = Sleepy(in_commit=in_commit)
    runner = ProjectionRunner(store, [projection], checkpoints)
    with pytest.raises(
        EventLoopRequiredError, match=rf"{re.escape(named)}.* awaited .* needs an event loop"
    ) as raised:
        runner.run_once()
    assert not isinstance(raised.value, ProjectionError)  # the form was wrong, not the handler
    assert (checkpoints.load("sleepy"), runner.positions, projection.rolled_back) == (0, None, 1)
    assert projection.committed == []
    with pytest.raises(EventLoopRequiredError):
        runner.run_until_idle()  # and again: nothing was left half done

    assert asyncio.run(runner.run_until_idle_async()) == 5  # the asyncio form runs it
    assert (checkpoints.load("sleepy"), projection.committed) == (5, [5])
    assert projection.seen[-5:] == [1, 2, 3, 4, 5]


# -- one projection, two drivers, one outcome ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Totals(Projection):
    """Totals per account, at-least-once; each event takes a second of the injected clock."""

    name = "totals"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.totals: dict[str, int] = {}

    @projects(Deposited)
    async def on_deposited(self, event: Deposited) -> None:
        self.clock.now += 1
        self.totals[event.account] = await settled(self.totals.get(event.account, 0) + event.amount)

    @projects(Withdrawn)
    def on_withdrawn(self, event: Withdrawn) -> None:
        self.clock.now += 1
        self.totals[event.account] = self.totals.get(event.account, 0) - event.amount

    def reset(self) -> None:
        self.totals.clear()


@attrs.frozen
class Outcome:
    read: list[int]
    checkpoint: int
    stats: ProjectionStats
    positions: dict[str, int] | None
    reports: list[ProjectionProgress]
    log_lines: list[str]
    model: dict[str, int]


def run_totals(
    store: EventStore, checkpoints: CheckpointStore, driver: str, caplog: pytest.LogCaptureFixture
) -> Outcome:
    clock = Clock()
    projection = Totals(clock)
    reports: list[ProjectionProgress] = []
    runner = ProjectionRunner(
        store,
        [projection],
        checkpoints,
        page_size=50,
        progress=reports.append,
        progress_every=100,
        catch_up_threshold=100,
        clock=clock,
    )
    call = drive(runner, driver)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="orchestrix"):
        read = [call("run_until_idle", 3), call("run_until_idle"), call("rebuild")]
    return Outcome(
        read=read,
        checkpoint=checkpoints.load("totals"),
        stats=runner.stats["totals"],
        positions=runner.positions,
        reports=reports,
        log_lines=[r.getMessage() for r in caplog.records if r.name == RUNNER_LOGGER],
        model=dict(projection.totals),
    )


RUNNER_LOGGER = "orchestrix.core.execution.projection.runner"


@pytest.fixture(params=["memory", "file"])
def filled(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[EventStore, Callable[[str], CheckpointStore]]]:
    """A store of 400 events, and a fresh checkpoint store of its kind for each name."""
    if request.param == "memory":
        memory = InMemoryEventStore(serializer=serializer())
        fill(memory, 400)
        yield memory, lambda name: InMemoryCheckpointStore()
        return
    with FileEventStore(tmp_path / "store", serializer(), sync=False) as store:
        fill(store, 400)
        yield store, lambda name: FileCheckpointStore(tmp_path / f"{name}.json")


def test_sync_and_asyncio_runs_give_identical_checkpoints_stats_progress_and_models(
    filled: tuple[EventStore, Callable[[str], CheckpointStore]], caplog: pytest.LogCaptureFixture
) -> None:
    store, checkpoints = filled
    sync = run_totals(store, checkpoints("sync"), "sync", caplog)
    loop = run_totals(store, checkpoints("asyncio"), "asyncio", caplog)
    assert sync == loop
    assert sync.model == fold(store)
    assert sync.read == [150, 250, 400]
    assert sync.checkpoint == 400 and sync.positions == {"totals": 400}
    # The catch-up and the rebuild each report every 100 s of the clock (100 events), then once
    # when caught up.
    catch_up = [(100, False), (200, False), (300, False), (400, False), (400, True)]
    assert [(r.position, r.done) for r in sync.reports] == catch_up * 2
    assert len(sync.log_lines) == len(sync.reports)
    assert (
        sync.log_lines[-1]
        == "projections totals: caught up at position 400, 400 events in 6m40s (1 events/s)"
    )


# -- one runner, driven from one place at a time, in either form -----------------------------------


class Gated(Projection):
    """Its handler waits for ``gate``, so a page can be held open from another thread."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.seen: list[int] = []

    @projects(Deposited, Withdrawn)
    def on_event(self, event: Event, recorded: RecordedEvent) -> None:
        self.entered.set()
        assert self.gate.wait(5)
        self.seen.append(recorded.position)

    def reset(self) -> None:
        self.seen.clear()


def test_a_page_in_one_thread_makes_either_form_elsewhere_refuse_as_busy() -> None:
    store = InMemoryEventStore(serializer=serializer())
    fill(store, 3)
    projection = Gated()
    runner = ProjectionRunner(store, [projection], InMemoryCheckpointStore())
    worker = threading.Thread(target=runner.run_once)
    worker.start()
    try:
        assert projection.entered.wait(5)
        with pytest.raises(RuntimeError, match="busy: run_once cannot start"):
            runner.run_once()
        with pytest.raises(RuntimeError, match="busy: run_once_async cannot start"):
            asyncio.run(runner.run_once_async())
        with pytest.raises(RuntimeError, match="busy: rebuild cannot start"):
            runner.rebuild()
    finally:
        projection.gate.set()
        worker.join(5)
    assert projection.seen == [1, 2, 3]


def test_a_rebuild_is_refused_while_the_sync_run_forever_feeds_the_model() -> None:
    store = InMemoryEventStore(serializer=serializer())
    fill(store, 3)
    projection = Gated()
    projection.gate.set()
    runner = ProjectionRunner(store, [projection], InMemoryCheckpointStore())
    stop = threading.Event()
    live = threading.Thread(target=runner.run_forever, args=(stop, 1.0))
    live.start()
    try:
        deadline = time.monotonic() + 5
        while runner.positions != {"gated": 3}:  # caught up: the loop now waits for new events
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.05)
        with pytest.raises(RuntimeError, match="stop run_forever before rebuilding"):
            runner.rebuild()
        with pytest.raises(RuntimeError, match="stop run_forever before rebuilding"):
            asyncio.run(runner.rebuild_async())
    finally:
        stop.set()
        live.join(5)
    assert not live.is_alive()
    assert runner.rebuild() == 3  # stopped: now it may
    assert projection.seen == [1, 2, 3]
