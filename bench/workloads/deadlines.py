"""Issue 16: durable deadlines on the file store: many open sagas with pending deadlines.

``open_sagas``: 10,000 open sagas, each with one pending deadline, on a durable file store. A
runner starts (it reads the history to learn the pending deadlines): its peak RSS growth; then
the clock passes every due time and the runner fires and handles them all: the seconds that
takes (``fire_seconds``; ``value`` is the RSS figure).

``firing_latency``: deadlines due at ``rate`` a second on the wall clock, a runner running
forever in asyncio; the latency of each firing is the stored ``DeadlineFired``'s time minus its
due time. ``value`` is the p99 in seconds (target: under 50 ms at 1,000 a second).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from workloads.common import clock, peak_rss, temp_dir


def _world() -> tuple[Any, ...]:
    try:
        import attrs

        from orchestrix.core.eventsourcing.aggregate import applies
        from orchestrix.core.execution import SAGA_EVENTS, Saga, SagaRunner, handles, on_deadline
        from orchestrix.core.messaging import Event, Serializer
        from orchestrix.infrastructure.file import FileEventStore
    except ImportError as exc:
        from workloads.common import NotLanded

        raise NotLanded(str(exc)) from None

    @attrs.frozen
    class LoanOpened(Event):
        loan_id: str
        due_at: datetime

    @attrs.frozen
    class LoanExpired(Event):
        loan_id: str

    class LoanSaga(Saga):
        category = "loan"
        correlation_field = "loan_id"
        terminal_events = (LoanExpired,)

        @handles(LoanOpened, start=True)
        def opened(self, event: LoanOpened) -> None:
            if not self.deadlines:
                self.schedule_deadline("due", at=event.due_at)

        @on_deadline("due")
        def due(self, deadline: Any) -> None:
            if not self.completed:
                self.raise_event(LoanExpired(self.id or ""))

        @applies(LoanExpired)
        def _expired(self, event: LoanExpired) -> None:
            pass

    serializer = Serializer(types=[LoanOpened, LoanExpired, *SAGA_EVENTS])
    return FileEventStore, serializer, SagaRunner, LoanSaga, LoanOpened


class _Nobody:
    def handle(self, command: Any) -> Any:
        raise AssertionError("this workload sends no commands")

    async def handle_async(self, command: Any) -> Any:
        raise AssertionError("this workload sends no commands")


def open_sagas(n: int = 10_000) -> dict[str, Any]:
    """Peak RSS of a runner holding ``n`` pending deadlines, and the time to fire them all."""
    FileEventStore, serializer, SagaRunner, LoanSaga, LoanOpened = _world()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = [start]
    with temp_dir() as path:
        setup = FileEventStore(os.path.join(path, "store"), serializer, sync=False)
        for i in range(n):
            setup.append(f"Loans-{i}", [LoanOpened(f"l-{i}", start + timedelta(days=14))])
        setup.close()
        store = FileEventStore(os.path.join(path, "store"), serializer, sync=True)
        checkpoints = store.checkpoints()
        SagaRunner(store, [LoanSaga], _Nobody(), checkpoints, clock=lambda: now[0]).run_until_idle()

        def started() -> Any:
            return SagaRunner(store, [LoanSaga], _Nobody(), checkpoints, clock=lambda: now[0])

        measured = peak_rss(started, lambda runner: runner.deadlines())
        runner = measured.pop("handle")
        pending = len(runner.deadlines())
        now[0] = start + timedelta(days=15)
        t0 = clock()
        runner.run_until_idle()
        fire_seconds = clock() - t0
        fired = runner.stats.deadlines_fired
        store.close()
    return {**measured, "pending": pending, "fired": fired, "fire_seconds": fire_seconds}


def firing_latency(n: int = 2_000, rate: float = 1_000.0) -> dict[str, Any]:
    """p99 of (DeadlineFired stored - due time) for deadlines due at ``rate`` a second."""
    FileEventStore, serializer, SagaRunner, LoanSaga, LoanOpened = _world()
    with temp_dir() as path:
        # The loans are written without fsync (setup must end well before the first due time),
        # then the store is opened durably for the runner, whose fires are what is measured.
        setup = FileEventStore(os.path.join(path, "store"), serializer, sync=False)
        first_due = datetime.now(UTC) + timedelta(seconds=2)
        for i in range(n):
            setup.append(f"Loans-{i}", [LoanOpened(f"l-{i}", first_due + timedelta(seconds=i / rate))])
        setup.close()
        store = FileEventStore(os.path.join(path, "store"), serializer, sync=True)
        checkpoints = store.checkpoints()
        runner = SagaRunner(store, [LoanSaga], _Nobody(), checkpoints, index_history=False)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run_forever_async(stop, idle_timeout=0.5))
            while runner.stats.deadlines_fired < n:
                await asyncio.sleep(0.05)
            stop.set()
            await task

        asyncio.run(run())
        latencies = [
            (r.recorded_at - r.event.due_at).total_seconds()
            for r in store.read_all(0)
            if r.event_type == "DeadlineFired"
        ]
        store.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {"value": p99, "p50": statistics.median(latencies), "max": latencies[-1], "fired": len(latencies)}
