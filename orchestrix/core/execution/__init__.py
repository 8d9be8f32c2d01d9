"""Running things from the store's global order: subscriptions, sagas, projections."""

from orchestrix.core.execution.checkpoint import CheckpointStore, InMemoryCheckpointStore
from orchestrix.core.execution.dead_letters import DeadLetter, DeadLetters
from orchestrix.core.execution.deadlines import (
    Deadline,
    DeadlineCancelled,
    DeadlineFired,
    DeadlineScheduled,
    on_deadline,
    pending_deadlines,
    pending_deadlines_async,
)
from orchestrix.core.execution.dispatch import CommandBus, CommandDispatcher
from orchestrix.core.execution.process import PROCESS_EVENTS, ProcessCheckpoint, ProcessStats, ProcessStep
from orchestrix.core.execution.projection import (
    Projection,
    ProjectionError,
    ProjectionProgress,
    ProjectionRunner,
    ProjectionStats,
    projects,
)
from orchestrix.core.execution.retry import RetryPolicy, StepFailed
from orchestrix.core.execution.runner import (
    RunnerStats,
    SagaRunner,
    StuckSaga,
    UnmatchedEvent,
    partition_of,
)
from orchestrix.core.execution.saga import (
    SAGA_EVENTS,
    Saga,
    SagaRetried,
    SagaRetryRequested,
    SagaStep,
    SagaStuck,
    handles,
    saga_event_id,
)
from orchestrix.core.execution.subscription import subscribe, subscribe_async

__all__ = [
    "PROCESS_EVENTS",
    "SAGA_EVENTS",
    "CheckpointStore",
    "CommandBus",
    "CommandDispatcher",
    "DeadLetter",
    "DeadLetters",
    "Deadline",
    "DeadlineCancelled",
    "DeadlineFired",
    "DeadlineScheduled",
    "InMemoryCheckpointStore",
    "ProcessCheckpoint",
    "ProcessStats",
    "ProcessStep",
    "Projection",
    "ProjectionError",
    "ProjectionProgress",
    "ProjectionRunner",
    "ProjectionStats",
    "RetryPolicy",
    "RunnerStats",
    "Saga",
    "SagaRetried",
    "SagaRetryRequested",
    "SagaRunner",
    "SagaStep",
    "SagaStuck",
    "StepFailed",
    "StuckSaga",
    "UnmatchedEvent",
    "handles",
    "on_deadline",
    "partition_of",
    "pending_deadlines",
    "pending_deadlines_async",
    "projects",
    "saga_event_id",
    "subscribe",
    "subscribe_async",
]
