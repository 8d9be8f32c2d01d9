"""The saga runner: global order, checkpoints, at-least-once delivery with effects once, stuck sagas."""

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrix.core.errors import StoreClosedError
from orchestrix.core.execution import (
    CommandBus,
    InMemoryCheckpointStore,
    SagaRunner,
    SagaStuck,
    handles,
    partition_of,
)
from tests.core.test_saga_support import (
    CrashingStore,
    OrderCancelled,
    OrderNoted,
    OrderPlaced,
    Reserve,
    Ship,
    Shipped,
    ShippingCancelled,
    ShippingSaga,
    ShippingStarted,
    SimulatedCrash,
    StockReserved,
    Uncorrelated,
    Warehouse,
    make_runner,
    make_store,
    place,
)


@pytest.fixture(params=["sync", "async", "threads"])
def mode(request: pytest.FixtureRequest) -> str:
    """How the runner runs: sync, asyncio, or asyncio with each step in a worker thread."""
    return request.param


def drain(runner: SagaRunner, mode: str) -> int:
    if mode == "sync":
        return runner.run_until_idle()
    runner.step_threads = mode == "threads"
    return asyncio.run(runner.run_until_idle_async())


def saga_events(store: Any, order_id: str) -> list[type]:
    return [type(r.event) for r in store.read_stream(f"shipping-{order_id}")]


def load(store: Any, order_id: str) -> ShippingSaga:
    saga = ShippingSaga(order_id)
    for recorded in store.read_stream(f"shipping-{order_id}"):
        saga._replay(recorded)
    return saga


# -- the happy path and lifecycle ---------------------------------------------------------------


def test_a_start_event_creates_the_saga_and_it_runs_to_completion(mode: str) -> None:
    store, warehouse = make_store(), Warehouse()
    place(store, "o-1", 2)
    runner = make_runner(store, warehouse)
    drain(runner, mode)
    assert saga_events(store, "o-1") == [ShippingStarted, StockReserved, Shipped]
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert warehouse.stock == 98
    assert runner.open_sagas() == []


def test_commands_carry_deterministic_idempotency_keys() -> None:
    store, warehouse = make_store(), Warehouse()
    seen: list[Any] = []
    warehouse.hooks[Reserve] = seen.append
    warehouse.hooks[Ship] = seen.append
    place(store, "o-7")
    make_runner(store, warehouse).run_until_idle()
    assert seen == [Reserve("o-7", 1, "o-7:reserve"), Ship("o-7", "o-7:ship")]


def test_each_decision_is_stored_before_the_command_that_follows_it() -> None:
    store, warehouse = make_store(), Warehouse()
    stored_at_command: dict[type, list[type]] = {}
    warehouse.hooks[Reserve] = lambda c: stored_at_command.setdefault(Reserve, saga_events(store, "o-1"))
    warehouse.hooks[Ship] = lambda c: stored_at_command.setdefault(Ship, saga_events(store, "o-1"))
    place(store, "o-1")
    make_runner(store, warehouse).run_until_idle()
    assert stored_at_command == {Reserve: [ShippingStarted], Ship: [ShippingStarted, StockReserved]}


def test_saga_events_carry_the_saga_correlation_and_their_cause() -> None:
    store, warehouse = make_store(), Warehouse()
    place(store, "o-1")
    make_runner(store, warehouse).run_until_idle()
    placed = next(store.read_stream("Order-o-1"))
    recorded = list(store.read_stream("shipping-o-1"))
    assert {r.correlation_id for r in recorded} != {None}
    assert len({r.correlation_id for r in recorded}) == 1
    assert recorded[0].causation_id == placed.event_id


def test_a_refused_command_takes_the_saga_down_its_failure_path(mode: str) -> None:
    store, warehouse = make_store(), Warehouse(stock=1)
    place(store, "o-1", 5)
    drain(make_runner(store, warehouse), mode)
    assert saga_events(store, "o-1") == [ShippingStarted, ShippingCancelled]
    assert warehouse.applied == []


def test_a_completed_saga_ignores_later_events(mode: str) -> None:
    store, warehouse = make_store(), Warehouse()
    place(store, "o-1")
    runner = make_runner(store, warehouse)
    drain(runner, mode)
    store.append("Order-o-1", [OrderCancelled("o-1")])
    drain(runner, mode)
    assert saga_events(store, "o-1") == [ShippingStarted, StockReserved, Shipped]
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert runner.stats.ignored >= 1

    # A fresh runner (no memory of completion) loads the saga and ignores the event too.
    fresh = make_runner(store, warehouse)
    drain(fresh, mode)
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    assert fresh.stats.ignored >= 1


def test_an_event_for_a_missing_saga_is_reported_as_unmatched(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, warehouse = make_store(), Warehouse()
    store.append("Order-o-404", [OrderCancelled("o-404")])
    runner = make_runner(store, warehouse)
    with caplog.at_level(logging.WARNING, logger="orchestrix"):
        drain(runner, mode)
    assert runner.stats.unmatched == 1
    [unmatched] = runner.unmatched
    assert (unmatched.saga_type, unmatched.saga_id, unmatched.event_type) == (
        "shipping",
        "o-404",
        "OrderCancelled",
    )
    assert unmatched.position == 1 and unmatched.stream == "Order-o-404"
    assert "unmatched" in caplog.text and "o-404" in caplog.text
    assert store.stream_version("shipping-o-404") == -1


def test_events_addressed_to_no_saga_are_neither_handled_nor_unmatched() -> None:
    store, warehouse = make_store(), Warehouse()
    store.append("Order-x", [OrderNoted("x"), Uncorrelated(None)])
    runner = make_runner(store, warehouse)
    # OrderNoted has no handler: the runner does not even read it (only the handled Uncorrelated
    # comes out of the store), yet its position moves past both.
    assert runner.run_until_idle() == 1
    assert (runner.stats.deliveries, runner.stats.unmatched) == (0, 0)
    assert runner.position == 2


def test_a_stuck_saga_holds_its_events_until_it_is_retried() -> None:
    store, warehouse = make_store(), Warehouse()
    warehouse.hooks[Ship] = lambda c: (_ for _ in ()).throw(RuntimeError("truck broke down"))
    place(store, "o-1")
    runner = make_runner(store, warehouse)
    runner.run_until_idle()
    assert load(store, "o-1").stuck_reason is not None
    runner.retry(ShippingSaga, "o-1")  # still failing: stuck again
    warehouse.hooks.clear()
    store.append("Order-o-1", [OrderCancelled("o-1")])
    runner.run_until_idle()
    # A stuck saga holds events until it is retried.
    assert runner.stats.held == 1
    saga = runner.retry(ShippingSaga, "o-1")
    assert saga.status == "shipped"


def test_several_sagas_are_in_flight_at_once(mode: str) -> None:
    store, warehouse = make_store(), Warehouse(stock=1000)
    for i in range(40):
        place(store, f"o-{i}", 1)
    in_flight: set[str] = set()
    peak = [0]

    async def slow(command: Any) -> Any:
        in_flight.add(command.order_id)
        peak[0] = max(peak[0], len(in_flight))
        await asyncio.sleep(0.001)
        in_flight.discard(command.order_id)
        return warehouse.handle(command)

    # One handler per command type: the slow coroutine needs an event loop, so the runs
    # without one (sync, steps in worker threads) get the warehouse's plain handler.
    handler = slow if mode == "async" else warehouse.handle
    bus = CommandBus()
    bus.register(Reserve, handler)
    bus.register(Ship, handler)
    runner = SagaRunner(store, [ShippingSaga], bus, InMemoryCheckpointStore(), max_concurrency=8)
    drain(runner, mode)
    assert all(load(store, f"o-{i}").status == "shipped" for i in range(40))
    assert len(warehouse.applied) == 80
    if mode == "async":
        assert 1 < peak[0] <= 8


# -- checkpoints, redelivery, restarts ----------------------------------------------------------


def test_the_checkpoint_is_stored_per_page_and_a_new_runner_resumes_after_it() -> None:
    store, warehouse = make_store(), Warehouse()
    checkpoints = InMemoryCheckpointStore()
    for i in range(5):
        place(store, f"o-{i}")
    runner = make_runner(store, warehouse, checkpoints, page_size=2, name="shipping")
    assert runner.run_once() == 2
    assert checkpoints.load("shipping") == 2
    runner.run_until_idle()
    assert checkpoints.load("shipping") == store.last_position()

    again = make_runner(store, warehouse, checkpoints, name="shipping")
    assert again.run_until_idle() == 0
    assert again.stats.deliveries == 0


def test_redelivering_every_event_changes_nothing(mode: str) -> None:
    store, warehouse = make_store(), Warehouse()
    for i in range(3):
        place(store, f"o-{i}")
    store.append("Order-o-0", [OrderCancelled("o-0")])
    drain(make_runner(store, warehouse), mode)
    applied, last = list(warehouse.applied), store.last_position()

    # Every event delivered again: by a runner that forgot its checkpoint, and one by one.
    drain(make_runner(store, warehouse), mode)
    runner = make_runner(store, warehouse)
    for recorded in list(store.read_all()):
        if mode == "sync":
            runner.handle(recorded)
        else:
            asyncio.run(runner.handle_async(recorded))
    assert warehouse.applied == applied
    assert store.last_position() == last


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_append_then_a_restart_finishes_every_saga_once(when: str, mode: str) -> None:
    crash_points = 0
    while True:
        store, warehouse, checkpoints = make_store(), Warehouse(stock=10), InMemoryCheckpointStore()
        place(store, "o-1", 2)
        place(store, "o-2", 50)
        crashing = CrashingStore(store, crash_at=crash_points, when=when)
        try:
            drain(make_runner(crashing, warehouse, checkpoints, page_size=1), mode)
        except SimulatedCrash:
            pass
        else:
            break
        crash_points += 1
        restarted = make_runner(store, warehouse, checkpoints, page_size=1)
        drain(restarted, mode)
        assert load(store, "o-1").status == "shipped"
        assert load(store, "o-2").status == "cancelled"
        assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
        assert warehouse.stock == 8
    assert crash_points == 5  # o-1 saves three times, o-2 twice: each save was a crash point


@pytest.mark.parametrize("command", [Reserve, Ship])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_around_a_command_then_a_restart_applies_it_once(command: type, when: str, mode: str) -> None:
    store, warehouse, checkpoints = make_store(), Warehouse(), InMemoryCheckpointStore()
    place(store, "o-1")

    def crash(c: Any) -> None:
        raise SimulatedCrash(f"crash {when} {c}")

    (warehouse.hooks if when == "before" else warehouse.after_hooks)[command] = crash
    with pytest.raises(SimulatedCrash):
        drain(make_runner(store, warehouse, checkpoints), mode)
    warehouse.hooks.clear()
    warehouse.after_hooks.clear()
    drain(make_runner(store, warehouse, checkpoints), mode)
    assert load(store, "o-1").status == "shipped"
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]


# -- failures and stuck sagas -------------------------------------------------------------------


def test_an_unexpected_error_gets_the_saga_stuck_and_the_runner_goes_on(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, warehouse = make_store(), Warehouse()

    def broken(command: Any) -> None:
        if command.order_id == "o-bad":
            raise RuntimeError("conveyor jammed")

    warehouse.hooks[Ship] = broken
    place(store, "o-bad")
    place(store, "o-good")
    runner = make_runner(store, warehouse)
    with caplog.at_level(logging.ERROR, logger="orchestrix"):
        drain(runner, mode)
    assert load(store, "o-good").status == "shipped"
    bad = load(store, "o-bad")
    assert bad.status == "reserved" and bad.stuck_reason == "RuntimeError: conveyor jammed"
    assert saga_events(store, "o-bad")[-1] is SagaStuck
    assert runner.stats.failed == 1
    assert "conveyor jammed" in caplog.text

    [stuck] = runner.stuck()
    assert (stuck.saga_type, stuck.saga_id, stuck.state, stuck.reason) == (
        "shipping",
        "o-bad",
        "reserved",
        "RuntimeError: conveyor jammed",
    )
    assert stuck.stream == "shipping-o-bad"

    warehouse.hooks.clear()
    retried = runner.retry(ShippingSaga, "o-bad") if mode == "sync" else asyncio.run(_retry(runner, "o-bad"))
    assert retried.status == "shipped" and retried.stuck_reason is None
    assert runner.stuck() == []
    assert warehouse.applied.count("o-bad:ship") == 1


async def _retry(runner: SagaRunner, saga_id: str) -> ShippingSaga:
    saga = await runner.retry_async(ShippingSaga, saga_id)
    assert isinstance(saga, ShippingSaga)
    return saga


def test_a_retry_that_fails_again_leaves_the_saga_stuck_with_the_new_reason() -> None:
    store, warehouse = make_store(), Warehouse()
    warehouse.hooks[Ship] = lambda c: (_ for _ in ()).throw(RuntimeError("first"))
    place(store, "o-1")
    runner = make_runner(store, warehouse)
    runner.run_until_idle()
    warehouse.hooks[Ship] = lambda c: (_ for _ in ()).throw(RuntimeError("second"))
    saga = runner.retry(ShippingSaga, "o-1")
    assert saga.stuck_reason == "RuntimeError: second"
    assert [s.reason for s in runner.stuck()] == ["RuntimeError: second"]


def test_a_start_handler_failure_is_recorded_and_retried_from_its_trigger_event() -> None:
    store, warehouse = make_store(), Warehouse()

    class FlakySaga(ShippingSaga):
        category = "flaky"
        fail = True

        def advance(self) -> Any:
            if FlakySaga.fail:
                raise RuntimeError("not today")
            return (yield from super().advance())

        def resume(self) -> Any:
            return None  # re-deliver the trigger instead

    place(store, "o-1")
    runner = SagaRunner(store, [FlakySaga], warehouse, InMemoryCheckpointStore())
    runner.run_until_idle()
    [stuck] = runner.stuck()
    assert stuck.reason == "RuntimeError: not today"
    FlakySaga.fail = False
    saga = runner.retry(FlakySaga, "o-1")
    assert saga.status == "shipped"


def test_sagas_without_progress_for_too_long_are_listed() -> None:
    store, warehouse = make_store(), Warehouse()
    warehouse.hooks[Reserve] = lambda c: (_ for _ in ()).throw(SimulatedCrash())
    place(store, "o-1")
    clock = [datetime.now(UTC)]
    runner = make_runner(store, warehouse, stuck_after=timedelta(minutes=5), clock=lambda: clock[0])
    with pytest.raises(SimulatedCrash):
        runner.run_until_idle()
    assert runner.stuck() == []
    clock[0] += timedelta(minutes=6)
    [stuck] = runner.stuck()
    assert stuck.state == "started" and stuck.reason.startswith("no progress since")

    # A restarted runner knows about the open saga from the history before its checkpoint.
    warehouse.hooks.clear()
    checkpoints = InMemoryCheckpointStore()
    checkpoints.save("sagas", store.last_position())
    fresh = make_runner(
        store, warehouse, checkpoints, stuck_after=timedelta(minutes=5), clock=lambda: clock[0]
    )
    assert [s.saga_id for s in fresh.stuck()] == ["o-1"]
    assert fresh.retry(ShippingSaga, "o-1").status == "shipped"
    assert fresh.stuck() == []


def test_a_store_failure_stops_the_runner_without_moving_its_checkpoint(mode: str) -> None:
    store, warehouse = make_store(), Warehouse()
    checkpoints = InMemoryCheckpointStore()
    place(store, "o-1")

    def close_store(command: Any) -> None:
        store.close()

    warehouse.hooks[Ship] = close_store
    with pytest.raises(StoreClosedError):
        drain(make_runner(store, warehouse, checkpoints), mode)
    assert checkpoints.load("sagas") == 0


def test_a_handler_that_returns_something_else_is_a_stuck_saga() -> None:
    store, warehouse = make_store(), Warehouse()

    class OddSaga(ShippingSaga):
        category = "odd"

        @handles(OrderPlaced, start=True)
        def on_placed(self, event: OrderPlaced) -> Any:
            self.raise_event(ShippingStarted(event.order_id, event.items))
            return 42

    place(store, "o-1")
    runner = SagaRunner(store, [OddSaga], warehouse, InMemoryCheckpointStore())
    runner.run_until_idle()
    [stuck] = runner.stuck()
    assert "must return None or be a generator" in stuck.reason


# -- partitions ----------------------------------------------------------------------------------


def test_partition_of_is_stable_and_spreads_ids() -> None:
    assert partition_of("o-1", 1) == 0
    assert partition_of("transfer-42", 4) == partition_of("transfer-42", 4)
    counts = [0, 0, 0, 0]
    for i in range(400):
        counts[partition_of(f"id-{i}", 4)] += 1
    assert min(counts) > 60
    with pytest.raises(ValueError):
        partition_of("x", 0)


def test_partitioned_runners_share_the_sagas_and_each_saga_runs_in_exactly_one(mode: str) -> None:
    store, warehouse = make_store(), Warehouse(stock=1000)
    for i in range(30):
        place(store, f"o-{i}")
    checkpoints = InMemoryCheckpointStore()
    runners = [make_runner(store, warehouse, checkpoints, partition=(i, 3)) for i in range(3)]
    for runner in runners:
        drain(runner, mode)
    assert all(load(store, f"o-{i}").status == "shipped" for i in range(30))
    assert sorted(warehouse.applied) == sorted(f"o-{i}:{s}" for i in range(30) for s in ("reserve", "ship"))
    assert sum(r.stats.deliveries for r in runners) == 30
    assert {r.checkpoint_name for r in runners} == {"sagas[0/3]", "sagas[1/3]", "sagas[2/3]"}
    for runner in runners:
        assert runner.stats.other_partition > 0


def test_a_runner_refuses_a_bad_configuration() -> None:
    store, warehouse = make_store(), Warehouse()
    with pytest.raises(ValueError):
        make_runner(store, warehouse, partition=(3, 3))
    with pytest.raises(ValueError):
        SagaRunner(store, [], warehouse, InMemoryCheckpointStore())
    with pytest.raises(TypeError):
        SagaRunner(store, [object], warehouse, InMemoryCheckpointStore())  # type: ignore[list-item]


# -- forever loops ---------------------------------------------------------------------------------


def test_run_forever_follows_new_events_until_stopped() -> None:
    store, warehouse = make_store(), Warehouse()
    runner = make_runner(store, warehouse)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        place(store, "o-1")
        for _ in range(200):
            if load(store, "o-1").completed:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert load(store, "o-1").status == "shipped"


def test_run_forever_async_follows_new_events_until_stopped() -> None:
    async def scenario() -> None:
        store, warehouse = make_store(), Warehouse()
        runner = make_runner(store, warehouse)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.05))
        await asyncio.to_thread(place, store, "o-1")
        for _ in range(200):
            if load(store, "o-1").completed:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert load(store, "o-1").status == "shipped"

    asyncio.run(scenario())
