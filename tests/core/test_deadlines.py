"""Durable deadlines: scheduled and cancelled by saga steps, fired once in effect, also after downtime."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrix.core.errors import InvalidDeadlineError, LeaseLostError
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner, handles
from orchestrix.core.execution.deadlines import (
    DeadlineCancelled,
    DeadlineFired,
    DeadlineScheduled,
    deadline_event_id,
    on_deadline,
    pending_deadlines,
)
from orchestrix.core.messaging import Serializer
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.memory import InMemoryLease
from tests.core.deadline_support import (
    EVENTS,
    START,
    Clock,
    Desk,
    HoldExtended,
    HoldPaid,
    HoldSaga,
    HoldSettled,
    make_runner,
    make_store,
    request,
)
from tests.core.test_saga_support import CrashingStore, SimulatedCrash


def types(store: Any, stream: str) -> list[str]:
    return [r.event_type for r in store.read_stream(stream)]


def test_a_deadline_fires_once_when_due_and_its_handler_runs() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1", seconds=30)
    runner = make_runner(store, desk, clock)
    runner.run_until_idle()
    [deadline] = runner.deadlines()
    assert (deadline.saga_id, deadline.name, deadline.due_at) == (
        "h-1",
        "expire",
        START + timedelta(seconds=30),
    )

    clock.advance(29)
    runner.run_until_idle()
    assert desk.calls == [] and runner.stats.deadlines_fired == 0

    clock.advance(1)
    runner.run_until_idle()
    runner.run_until_idle()
    assert desk.released == ["h-1:release"]
    assert types(store, "hold-h-1") == ["DeadlineScheduled", "DeadlineFired", "HoldReleased"]
    fired = list(store.read_stream("hold-h-1"))[1]
    assert fired.event_id == deadline_event_id("hold-h-1", "expire", 0)
    assert fired.event.fired_at == START + timedelta(seconds=30)
    assert runner.stats.deadlines_fired == 1 and runner.deadlines() == []


def test_a_cancelled_deadline_does_nothing() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    runner = make_runner(store, desk, clock)
    runner.run_until_idle()
    store.append("Desk-h-1", [HoldPaid("h-1")])
    runner.run_until_idle()
    clock.advance(3600)
    runner.run_until_idle()
    assert desk.calls == []
    assert types(store, "hold-h-1") == ["DeadlineScheduled", "DeadlineCancelled", "HoldSettled"]
    assert runner.deadlines() == [] and pending_deadlines(store) == []


def test_a_completing_step_settles_a_deadline_the_handler_left_pending() -> None:
    class Forgetful(HoldSaga):
        category = "hold"

        @handles(HoldPaid)
        def on_paid(self, event: HoldPaid) -> None:
            self.raise_event(HoldSettled(event.hold_id))  # leaves "expire" pending

    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    runner = runner_for(Forgetful, store, desk, clock)
    runner.run_until_idle()
    store.append("Desk-h-1", [HoldPaid("h-1")])
    runner.run_until_idle()
    recorded = list(store.read_stream("hold-h-1"))
    assert [r.event_type for r in recorded] == ["DeadlineScheduled", "HoldSettled", "DeadlineCancelled"]
    assert recorded[-1].event.reason == "saga completed"
    clock.advance(3600)
    runner.run_until_idle()
    assert desk.calls == [] and pending_deadlines(store) == []


def runner_for(cls: type, store: Any, desk: Desk, clock: Clock) -> SagaRunner:
    return SagaRunner(store, [cls], desk, InMemoryCheckpointStore(), clock=clock)


def test_rescheduling_replaces_the_pending_deadline() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1", seconds=30)
    runner = make_runner(store, desk, clock)
    runner.run_until_idle()
    clock.advance(20)
    store.append("Desk-h-1", [HoldExtended("h-1", 60)])
    runner.run_until_idle()
    clock.advance(15)  # the first schedule is due now, the second is not
    runner.run_until_idle()
    assert desk.calls == []
    [deadline] = runner.deadlines()
    assert deadline.due_at == START + timedelta(seconds=80)
    clock.advance(45)
    runner.run_until_idle()
    runner.run_until_idle()
    assert desk.released == ["h-1:release"] and runner.stats.deadlines_fired == 1


def test_a_deadline_that_came_due_while_no_runner_was_up_fires_when_one_starts(tmp_path: Path) -> None:
    clock, desk = Clock(), Desk()
    checkpoints = InMemoryCheckpointStore()
    with FileEventStore(tmp_path / "store", Serializer(types=EVENTS)) as store:
        request(store, "h-1", seconds=30)
        make_runner(store, desk, clock, checkpoints).run_until_idle()
    clock.advance(86_400)  # a day of downtime
    with FileEventStore(tmp_path / "store", Serializer(types=EVENTS)) as store:
        runner = make_runner(store, desk, clock, checkpoints)
        assert [d.saga_id for d in runner.deadlines()] == ["h-1"]
        runner.run_until_idle()
        assert desk.released == ["h-1:release"]
        assert types(store, "hold-h-1")[-2:] == ["DeadlineFired", "HoldReleased"]


def test_a_crash_right_after_firing_neither_loses_nor_repeats_the_deadline() -> None:
    inner, desk, clock = make_store(), Desk(), Clock()
    request(inner, "h-1")
    checkpoints = InMemoryCheckpointStore()
    make_runner(inner, desk, clock, checkpoints).run_until_idle()
    clock.advance(30)
    crashing = CrashingStore(inner, crash_at=0, when="after")  # the DeadlineFired append
    with pytest.raises(SimulatedCrash):
        make_runner(crashing, desk, clock, checkpoints).run_until_idle()
    assert types(inner, "hold-h-1") == ["DeadlineScheduled", "DeadlineFired"]
    restarted = make_runner(inner, desk, clock, checkpoints)
    restarted.run_until_idle()
    restarted.run_until_idle()
    assert types(inner, "hold-h-1") == ["DeadlineScheduled", "DeadlineFired", "HoldReleased"]
    assert desk.calls == ["h-1:release"] and restarted.stats.deadlines_fired == 0


def test_two_runners_firing_the_same_deadline_append_it_once() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    first, second = make_runner(store, desk, clock), make_runner(store, desk, clock)
    first.run_until_idle()
    second.run_until_idle()
    clock.advance(30)
    first.run_once()  # fires (and delivers DeadlineFired in the page it reads after)
    second.run_until_idle()  # its book says due; the stream says fired: nothing happens
    first.run_until_idle()
    assert types(store, "hold-h-1").count("DeadlineFired") == 1
    assert (first.stats.deadlines_fired, second.stats.deadlines_fired) == (1, 0)
    assert desk.released == ["h-1:release"]


def test_a_redelivered_firing_is_decided_from_the_saga_state() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    runner = make_runner(store, desk, clock)
    runner.run_until_idle()
    clock.advance(30)
    runner.run_until_idle()
    fired = next(r for r in store.read_stream("hold-h-1") if r.event_type == "DeadlineFired")
    runner.handle(fired)  # a redelivery
    assert desk.calls == ["h-1:release"]
    assert types(store, "hold-h-1").count("HoldReleased") == 1


def test_a_runner_that_lost_its_lease_fires_nothing() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    lease = InMemoryLease(store, "sagas")
    lease.claim()
    request(store, "h-1")
    runner = make_runner(store, desk, clock, lease=lease)
    runner.run_until_idle()
    clock.advance(30)
    InMemoryLease(store, "sagas").claim()  # another process takes the partition over
    with pytest.raises(LeaseLostError):
        runner.run_until_idle()
    assert types(store, "hold-h-1") == ["DeadlineScheduled"]


def test_deadlines_of_another_partition_are_not_fired() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    for n in range(8):
        request(store, f"h-{n}")
    runners = [make_runner(store, desk, clock, partition=(i, 2)) for i in range(2)]
    for runner in runners:
        runner.run_until_idle()
    clock.advance(30)
    for runner in runners:
        runner.run_until_idle()
        runner.run_until_idle()
    assert sum(r.stats.deadlines_fired for r in runners) == 8
    assert all(r.stats.deadlines_fired > 0 for r in runners)
    assert sorted(desk.released) == sorted(f"h-{n}:release" for n in range(8))


def test_the_asyncio_form_fires_alike() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    runner = make_runner(store, desk, clock)

    async def main() -> None:
        await runner.run_until_idle_async()
        clock.advance(30)
        await runner.run_until_idle_async()
        assert [d.name for d in await runner.deadlines_async()] == []

    asyncio.run(main())
    assert desk.released == ["h-1:release"]


def test_a_stuck_saga_holds_its_due_deadline_until_it_is_retried() -> None:
    store, desk, clock = make_store(), Desk(), Clock()
    request(store, "h-1")
    runner = make_runner(store, desk, clock)
    runner.run_until_idle()
    saga = runner.repository.load(HoldSaga, "h-1")
    saga.mark_stuck("operator hold", clock())
    runner.repository.save(saga)
    clock.advance(30)
    runner.run_until_idle()
    assert desk.calls == [] and "DeadlineFired" not in types(store, "hold-h-1")
    runner.retry(HoldSaga, "h-1")
    runner.run_until_idle()
    runner.run_until_idle()
    assert desk.released == ["h-1:release"]


# -- bad input --------------------------------------------------------------------------------


def test_scheduling_a_deadline_no_handler_takes_is_refused_and_schedules_nothing() -> None:
    saga = HoldSaga("h-1")
    with pytest.raises(InvalidDeadlineError, match="no @on_deadline handler takes it") as caught:
        saga.schedule_deadline("expiry", after=timedelta(seconds=1))
    assert caught.value.name == "expiry" and isinstance(caught.value, ValueError)
    assert saga.pending_events == () and saga.deadlines == {}


@pytest.mark.parametrize(
    "when",
    [
        {"at": datetime(2026, 1, 1, 12, 0)},  # naive
        {"at": "2026-01-01T12:00:00Z"},
        {"after": 30},
        {},
        {"at": START, "after": timedelta(seconds=1)},
    ],
    ids=["naive", "text", "seconds", "neither", "both"],
)
def test_a_due_time_that_is_not_an_aware_datetime_is_refused(when: dict[str, Any]) -> None:
    saga = HoldSaga("h-1")
    with pytest.raises(InvalidDeadlineError):
        saga.schedule_deadline("expire", **when)
    assert saga.pending_events == ()


def test_deadline_names_of_the_runner_itself_are_reserved() -> None:
    with pytest.raises(TypeError, match="runner's own"):
        on_deadline("orchestrix.retry")
    with pytest.raises(TypeError):
        on_deadline("")


def test_deadline_events_are_saga_events() -> None:
    from orchestrix.core.execution import SAGA_EVENTS

    assert {DeadlineScheduled, DeadlineCancelled, DeadlineFired} <= set(SAGA_EVENTS)
