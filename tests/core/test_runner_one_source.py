"""The saga runner's sync and asyncio forms behave as one: the drifts the two hand-written
copies had are each pinned here (every test of this file failed on the copies but the
trace test, which guards the page end they still shared)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from orchestrix.core.errors import LeaseLostError, StoreClosedError
from orchestrix.core.execution import InMemoryCheckpointStore, RunnerStats, SagaRunner
from orchestrix.infrastructure.memory import InMemoryLease
from tests.core.test_saga_support import (
    OrderCancelled,
    Reserve,
    Ship,
    ShippingSaga,
    ShippingStarted,
    Warehouse,
    make_runner,
    make_store,
    place,
)


@pytest.fixture(params=["sync", "async", "threads"])
def mode(request: pytest.FixtureRequest) -> str:
    """How the runner runs: sync, asyncio, or asyncio with each step in a worker thread."""
    return request.param


def run(runner: SagaRunner, mode: str, sync: Callable[[], Any], async_: Callable[[], Any]) -> Any:
    """Call the sync form, or run the asyncio form (with ``step_threads`` in "threads" mode)."""
    if mode == "sync":
        return sync()
    runner.step_threads = mode == "threads"
    return asyncio.run(async_())


# -- drift (a): a count taken under the books' lock in one copy only -----------------------------


class _SlowCountStats(RunnerStats):
    """Reading ``ignored`` takes a while (and lets other threads run), as under load: a count
    kept by read-modify-write outside the runner's lock then loses increments."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name == "ignored":
            time.sleep(0.0002)
        return value


def test_events_for_a_completed_saga_are_all_counted_when_both_forms_deliver_at_once() -> None:
    # An asyncio program runs the runner while a thread (an operator's tool, a sync handler)
    # hands it events too: every ignored delivery is counted once. The asyncio copy counted
    # outside the lock the sync copy took, and lost counts.
    store, warehouse = make_store(), Warehouse()
    place(store, "o-1")
    runner = make_runner(store, warehouse)
    runner.run_until_idle()
    store.append("Order-o-1", [OrderCancelled("o-1")])
    late = list(store.read_stream("Order-o-1"))[-1]
    runner.stats.__class__ = _SlowCountStats
    rounds = 60

    def from_a_thread() -> None:
        for _ in range(rounds):
            runner.handle(late)

    async def on_the_loop() -> None:
        thread = threading.Thread(target=from_a_thread)
        thread.start()
        for _ in range(rounds):
            await runner.handle_async(late)
            await asyncio.sleep(0)
        await asyncio.to_thread(thread.join)

    asyncio.run(on_the_loop())
    assert runner.stats.ignored == 2 * rounds
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]


# -- drift (b): a start that always set the position -------------------------------------------


class _FirstLoadWaits(InMemoryCheckpointStore):
    """The first load reads its position, then waits until a checkpoint was saved: a runner's
    start that is slow (a long history to index) while another call of the runner runs a page."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = threading.Event()
        self.saved = threading.Event()
        self._loads = 0

    def load(self, name: str) -> int:
        position = super().load(name)
        self._loads += 1
        if self._loads == 1:
            self.loaded.set()
            assert self.saved.wait(10), "no checkpoint was saved"
        return position

    def save(self, name: str, position: int) -> None:
        super().save(name, position)
        self.saved.set()

    async def load_async(self, name: str) -> int:
        position = super().load(name)
        self._loads += 1
        if self._loads == 1:
            self.loaded.set()
            assert await asyncio.to_thread(self.saved.wait, 10), "no checkpoint was saved"
        return position


def test_a_slow_start_never_moves_the_position_back(mode: str) -> None:
    # open_sagas() starts the runner while run_once() starts it too and handles a page: the
    # start that finishes last must not set the position back to the checkpoint it loaded
    # (the sync copy did, and the runner then read and counted the page twice).
    store, warehouse, checkpoints = make_store(), Warehouse(), _FirstLoadWaits()
    place(store, "o-1")
    place(store, "o-2")
    placed = store.last_position()
    runner = make_runner(store, warehouse, checkpoints)

    if mode == "sync":
        opened = threading.Thread(target=runner.open_sagas)
        opened.start()
        assert checkpoints.loaded.wait(10)
        read = runner.run_once()
        opened.join(10)
        assert not opened.is_alive()
    else:

        async def both() -> int:
            opened = asyncio.ensure_future(runner.open_sagas_async())
            await asyncio.to_thread(checkpoints.loaded.wait, 10)
            read = await runner.run_once_async()
            await opened
            return read

        runner.step_threads = mode == "threads"
        read = asyncio.run(both())

    assert read == placed
    assert runner.position == placed
    # The next page is what the sagas wrote meanwhile, not the orders again.
    written = store.last_position() - placed
    assert run(runner, mode, runner.run_once, runner.run_once_async) == written
    assert runner.stats.events == placed + written


# -- drift (c): a page finished by _finish_page in one copy, inlined in the other -----------------


def test_after_a_failed_page_both_forms_know_the_same_open_sagas(mode: str) -> None:
    # A page whose first step fails with a store error stops the runner; the saga stream events
    # later on the same page were read all the same. The sync copy had observed only the events
    # before the failure, the asyncio copy the whole page: open_sagas() differed.
    store, warehouse = make_store(), Warehouse()
    place(store, "o-1")
    store.append("shipping-o-2", [ShippingStarted("o-2", 1)])  # left by an earlier runner

    def broken(command: Any) -> None:
        raise StoreClosedError("the warehouse's store is closed")

    warehouse.hooks[Reserve] = broken
    runner = make_runner(store, warehouse)
    with pytest.raises(StoreClosedError):
        run(runner, mode, runner.run_once, runner.run_once_async)
    assert set(runner.open_sagas()) == {(ShippingSaga, "o-1"), (ShippingSaga, "o-2")}
    assert runner.position == 0
    assert runner.stats.events == 0


class _TracedLease:
    """An in-memory lease that notes every check, and is lost once ``lose`` is set."""

    def __init__(self, lease: InMemoryLease, trace: list[str]) -> None:
        self.lease = lease
        self.trace = trace
        self.lose = False

    def holds(self) -> bool:
        held = not self.lose and self.lease.holds()
        self.trace.append("holds" if held else "lost")
        return held

    @property
    def fence(self) -> Any:
        return self.lease.fence


class _TracedCheckpoints(InMemoryCheckpointStore):
    def __init__(self, trace: list[str]) -> None:
        super().__init__()
        self.trace = trace

    def save(self, name: str, position: int) -> None:
        self.trace.append(f"checkpoint {position}")
        super().save(name, position)


@pytest.mark.parametrize("lost_before_checkpoint", [False, True], ids=["held", "lost"])
def test_both_forms_end_a_page_alike(mode: str, lost_before_checkpoint: bool) -> None:
    # The same page gives the same lease checks, dispatches, checkpoint and stats in every form,
    # also when the lease is lost right before the checkpoint: then nothing of the page's end
    # happens (no checkpoint, position and counts unmoved) and the runner stops.
    store, warehouse, trace = make_store(), Warehouse(), list[str]()
    lease = _TracedLease(InMemoryLease(store, "sagas"), trace)
    lease.lease.claim()
    checkpoints = _TracedCheckpoints(trace)
    warehouse.hooks[Reserve] = lambda command: trace.append("dispatch Reserve")
    warehouse.hooks[Ship] = lambda command: trace.append("dispatch Ship")
    if lost_before_checkpoint:
        warehouse.after_hooks[Ship] = lambda command: setattr(lease, "lose", True)
    place(store, "o-1")
    runner = make_runner(store, warehouse, checkpoints, lease=lease)

    if lost_before_checkpoint:
        with pytest.raises(LeaseLostError, match="did not store its checkpoint"):
            run(runner, mode, runner.run_once, runner.run_once_async)
    else:
        assert run(runner, mode, runner.run_once, runner.run_once_async) == 1

    end = ["lost"] if lost_before_checkpoint else ["holds", "checkpoint 1"]
    assert trace == ["holds", "holds", "dispatch Reserve", "holds", "dispatch Ship", *end]
    assert runner.position == (0 if lost_before_checkpoint else 1)
    assert checkpoints.load(runner.checkpoint_name) == runner.position
    stats = runner.stats
    assert (stats.events, stats.deliveries, stats.failed) == (runner.position, 1, 0)


# -- a drift found on the way: retry_async recorded a failure outside the lease's fence ----------


def test_a_retry_that_fails_after_a_takeover_records_nothing(mode: str) -> None:
    # A leased runner retries a stuck saga; during the dispatch another process takes the lease
    # over and the command fails. Recording the saga stuck again is an append like any other:
    # the fence refuses it. The asyncio copy recorded it outside the fence, after the takeover.
    store, warehouse = make_store(), Warehouse()
    lease = InMemoryLease(store, "sagas")
    lease.claim()
    place(store, "o-1")

    def fails(command: Any) -> None:
        raise RuntimeError("warehouse down")

    warehouse.hooks[Reserve] = fails
    runner = make_runner(store, warehouse, lease=lease)
    runner.run_until_idle()
    assert runner.stuck()[0].reason == "RuntimeError: warehouse down"

    def taken_over_then_fails(command: Any) -> None:
        InMemoryLease(store, "sagas").claim()
        raise RuntimeError("warehouse down again")

    warehouse.hooks[Reserve] = taken_over_then_fails
    before = len(list(store.read_stream("shipping-o-1")))
    with pytest.raises(LeaseLostError):
        run(
            runner,
            mode,
            lambda: runner.retry(ShippingSaga, "o-1"),
            lambda: runner.retry_async(ShippingSaga, "o-1"),
        )
    written = [type(r.event).__name__ for r in list(store.read_stream("shipping-o-1"))[before:]]
    assert written == ["SagaRetried"]  # stored before the dispatch, under the lease still held
