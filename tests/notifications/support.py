"""A notifications world for tests: store, channels, virtual clock, runners, a driver (no tests here)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from bases.orchestrix.notifications_demo.handlers import NotificationHandlers, SimulatedChannel
from bases.orchestrix.notifications_demo.main import START, VirtualClock, notifications
from bases.orchestrix.notifications_demo.models import (
    Channel,
    NotificationFailed,
    NotificationSent,
    RetryConfig,
    notifications_serializer,
)
from bases.orchestrix.notifications_demo.saga import NotificationSaga, notifiers
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory.store import InMemoryEventStore


class World:
    """Everything that outlives a process: the store, the checkpoints, the channels, the clock."""

    def __init__(
        self,
        rates: dict[Channel, float] | None = None,
        *,
        permanent: float = 0.0,
        seed: int = 0,
        retry: RetryConfig | None = None,
    ) -> None:
        self.store = InMemoryEventStore(serializer=notifications_serializer())
        self.checkpoints = InMemoryCheckpointStore()
        self.clock = VirtualClock()
        self.retry = retry or RetryConfig()
        self.sagas = notifiers(self.retry)
        rates = rates or {}
        self.channels = {
            str(c): SimulatedChannel(
                c,
                failure_rate=rates.get(c, 0.0),
                permanent_rate=permanent,
                unreachable=frozenset({"nobody"}),
                rng=random.Random(f"{seed}:{c}"),
                clock=self.clock,
            )
            for c in Channel
        }
        self.handlers = NotificationHandlers(self.channels)

    def runner(self, store: Any = None) -> SagaRunner:
        """A runner as a freshly started process has it (nothing in memory but the stored state)."""
        return SagaRunner(
            store or self.store, self.sagas, self.handlers, self.checkpoints, clock=self.clock, name="n"
        )

    def drive(self, runner: SagaRunner, rounds: int = 200) -> None:
        """Run, and jump the clock to each next due deadline, until nothing is pending."""
        for _ in range(rounds):
            runner.run_until_idle()
            pending = runner.deadlines()
            if not pending:
                return
            self.clock.now = max(self.clock.now, pending[0].due_at)

    def notifications(self) -> list[NotificationSaga]:
        return notifications(self.store, self.sagas, AggregateRepository(self.store))

    def attempt_times(self, saga: NotificationSaga) -> dict[int, Any]:
        """When each attempt's outcome was recorded, by attempt number."""
        times = {}
        for recorded in self.store.read_stream(saga.stream):
            event = recorded.event
            if isinstance(event, NotificationFailed):
                times.setdefault(event.attempt, event.failed_at)
            elif isinstance(event, NotificationSent):
                times.setdefault(event.attempt, event.sent_at)
        return times

    def waited_at_least_the_backoff(self, saga: NotificationSaga) -> bool:
        times = self.attempt_times(saga)
        return all(
            times[n + 1] - times[n] >= timedelta(seconds=self.retry.backoff(n))
            for n in times
            if n + 1 in times
        )


__all__ = ["START", "World"]
