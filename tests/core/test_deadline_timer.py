"""The deadline timer of run_forever: a deadline fires when the runner's clock says it is due,
also while the runner waits for new events that do not come (virtual clock, no timed asserts)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from orchestrix.core._io import run_sync
from tests.core.deadline_support import Clock, Desk, HoldPaid, make_runner, make_store, request

GUARD = 30.0  # seconds a test waits for something that happens at once when the timer works


class WatchedStore:
    """A store that tells the test when the runner waits for events after a position."""

    def __init__(self, store: Any, answer: bool | None = None) -> None:
        self._store = store
        self._answer = answer  # None: really wait; else return this at once
        self.waits: list[tuple[int, float]] = []
        self.changed = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _note(self, after: int, timeout: float) -> None:
        with self.changed:
            self.waits.append((after, timeout))
            self.changed.notify_all()

    def wait_for_events(self, after: int, timeout: float) -> bool:
        self._note(after, timeout)
        if self._answer is not None:
            return self._answer
        return bool(self._store.wait_for_events(after, timeout))

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        self._note(after, timeout)
        if self._answer is not None:
            return self._answer
        return bool(await self._store.wait_for_events_async(after, timeout))

    def until(self, condition: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, GUARD), "the runner never got there"


def _scheduled_at(store: Any) -> int | None:
    for recorded in store.read_all():
        if recorded.event_type == "DeadlineScheduled":
            return int(recorded.position)
    return None


@pytest.mark.parametrize("form", ["sync", "asyncio"])
def test_a_deadline_fires_while_the_runner_waits_for_events_that_do_not_come(form: str) -> None:
    inner, desk, clock = make_store(), Desk(), Clock()
    store = WatchedStore(inner)
    # An idle timeout far longer than the guard: on main the runner slept the real seconds until
    # the due time (300 s), computed once, and missed the virtual clock moving meanwhile.
    runner = make_runner(store, desk, clock, timer_tick=0.01)
    stop = threading.Event()
    if form == "sync":
        thread = threading.Thread(target=lambda: runner.run_forever(stop, idle_timeout=3600.0))
    else:
        thread = threading.Thread(target=lambda: asyncio.run(runner.run_forever_async(stop, 3600.0)))
    request(inner, "h-1", seconds=300)
    thread.start()
    try:
        # The runner has read the DeadlineScheduled and waits for what comes after it.
        store.until(
            lambda: (at := _scheduled_at(inner)) is not None and any(after >= at for after, _ in store.waits)
        )
        assert desk.released == []
        clock.advance(300)  # due now by the runner's clock; no event arrives
        store.until(lambda: any(r.event_type == "HoldReleased" for r in inner.read_all()))
        assert desk.released == ["h-1:release"]
        assert runner.stats.deadlines_fired == 1
    finally:
        stop.set()
        inner.append("Desk-other", [HoldPaid("other")])  # wakes the runner, so it sees stop
        thread.join(GUARD)
    assert not thread.is_alive()


def test_without_a_pending_deadline_the_runner_waits_its_whole_idle_timeout_at_once() -> None:
    inner, desk, clock = make_store(), Desk(), Clock()
    store = WatchedStore(inner, answer=True)
    runner = make_runner(store, desk, clock, timer_tick=0.5)
    runner.run_until_idle()
    run_sync(runner._wait_idle(10.0))
    [(_, timeout)] = store.waits
    assert 9.0 < timeout <= 10.0


def test_with_a_pending_deadline_the_runner_waits_a_tick_at_most_and_not_past_the_due_time() -> None:
    inner, desk, clock = make_store(), Desk(), Clock()
    request(inner, "h-1", seconds=3)
    store = WatchedStore(inner, answer=True)
    runner = make_runner(store, desk, clock, timer_tick=1.0)
    runner.run_until_idle()
    run_sync(runner._wait_idle(10.0))
    assert store.waits[-1][1] == 1.0  # a tick: the clock is read again after it

    slow_ticks = make_runner(store, desk, clock, timer_tick=60.0)
    slow_ticks.run_until_idle()
    run_sync(slow_ticks._wait_idle(10.0))
    assert store.waits[-1][1] == 3.0  # the due time comes before the tick

    clock.advance(5)  # overdue: no wait at all, the page loop fires it next
    before = len(store.waits)
    run_sync(runner._wait_idle(10.0))
    assert len(store.waits) == before


@pytest.mark.parametrize("tick", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_a_timer_tick_that_is_not_a_positive_number_of_seconds_is_refused(tick: Any) -> None:
    with pytest.raises(ValueError, match="timer_tick"):
        make_runner(make_store(), Desk(), Clock(), timer_tick=tick)
