"""Running things from the store's global order: subscriptions, sagas, projections."""

from orchestrix.core.execution.checkpoint import CheckpointStore, InMemoryCheckpointStore
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
    "InMemoryCheckpointStore",
    "ProcessCheckpoint",
    "ProcessStats",
    "ProcessStep",
    "Projection",
    "ProjectionError",
    "ProjectionProgress",
    "ProjectionRunner",
    "ProjectionStats",
    "RunnerStats",
    "Saga",
    "SagaRetried",
    "SagaRunner",
    "SagaStep",
    "SagaStuck",
    "StuckSaga",
    "UnmatchedEvent",
    "handles",
    "partition_of",
    "projects",
    "saga_event_id",
    "subscribe",
    "subscribe_async",
]
