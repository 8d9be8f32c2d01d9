"""Stuck sagas as the store shows them, for tools without the saga classes (``orchestrix sagas``).

A saga stream is stuck when its last ``SagaStuck`` has no ``SagaRetried`` after it: a stuck
saga takes no events until it is retried, so nothing else can end it meanwhile. A retry asked
for here is stored as ``SagaRetryRequested`` in the saga's stream; the runner that owns the
saga carries it out when it reads it (see :meth:`SagaRunner.retry
<orchestrix.core.execution.runner.SagaRunner.retry>`), in whatever process that runner lives.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import SagaNotStuckError
from orchestrix.core.eventsourcing.store import ANY
from orchestrix.core.execution.saga import SagaRetried, SagaRetryRequested, SagaStuck

__all__ = [
    "StoredStuckSaga",
    "request_saga_retry",
    "request_saga_retry_async",
    "stuck_sagas",
    "stuck_sagas_async",
]


@attrs.frozen
class StoredStuckSaga:
    """A stuck saga read from the store: its stream, id, type, why and since when."""

    stream: str
    saga_type: str
    saga_id: str
    reason: str
    event_type: str
    position: int
    since: datetime
    retry_requested: bool


def _fold(found: dict[str, StoredStuckSaga], stream: str, event: Any) -> None:
    if isinstance(event, SagaStuck):
        saga_type = stream[: len(stream) - len(event.saga_id) - 1]
        found[stream] = StoredStuckSaga(
            stream,
            saga_type,
            event.saga_id,
            event.reason,
            event.event_type,
            event.position,
            event.occurred_at,
            False,
        )
    elif isinstance(event, SagaRetried):
        found.pop(stream, None)
    elif isinstance(event, SagaRetryRequested) and stream in found:
        found[stream] = attrs.evolve(found[stream], retry_requested=True)


def stuck_sagas(store: Any) -> list[StoredStuckSaga]:
    """Every saga stream of ``store`` that is stuck, longest stuck first (reads the global order)."""
    return run_sync(stuck_sagas_async(store))


async def stuck_sagas_async(store: Any, page_size: int = 1000) -> list[StoredStuckSaga]:
    """Asyncio form of :func:`stuck_sagas`."""
    found: dict[str, StoredStuckSaga] = {}
    after = 0
    while True:
        page = await _io.read_all(store, after, page_size)
        for recorded in page:
            _fold(found, recorded.stream, recorded.event)
        if len(page) < page_size:
            break
        after = page[-1].position
    return sorted(found.values(), key=lambda s: (s.since, s.stream))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def request_saga_retry(
    store: Any, stream: str, *, clock: Callable[[], datetime] = _utcnow
) -> StoredStuckSaga:
    """Store a retry request for the stuck saga of ``stream``; SagaNotStuckError if it is not stuck."""
    return run_sync(request_saga_retry_async(store, stream, clock=clock))


async def request_saga_retry_async(
    store: Any, stream: str, *, clock: Callable[[], datetime] = _utcnow
) -> StoredStuckSaga:
    """Asyncio form of :func:`request_saga_retry`."""
    found: dict[str, StoredStuckSaga] = {}
    for recorded in await _io.read_stream(store, stream):
        _fold(found, stream, recorded.event)
    stuck = found.get(stream)
    if stuck is None:
        raise SagaNotStuckError(stream, "no stuck saga there (no SagaStuck without a SagaRetried after it)")
    await _io.append(store, stream, [SagaRetryRequested(stuck.saga_id, clock())], ANY)
    return attrs.evolve(stuck, retry_requested=True)
