"""The fencing contract: what a store that checks fences (``checks_fences = True``) promises.

Subclass it beside :class:`~orchestrix.testing.EventStoreContract` for such a store; the
``store`` fixture must provide ``grant_fence(name)`` and ``fence_generation(name)``::

    class TestMyStore(EventStoreContract, FencingContract):
        ...
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrix.core.errors import FencedError
from orchestrix.core.eventsourcing.fencing import Fence, current_fence, fenced
from orchestrix.core.eventsourcing.store import NO_STREAM, ImportedEvent
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.testing.contract import ContractEvent

__all__ = ["FencingContract"]


def _event(n: int) -> NewEvent:
    return NewEvent(ContractEvent(n), uuid.uuid4())


class FencingContract:
    """Appends under a fence are stored only while the fence is the lease's newest grant."""

    def _lease(self) -> str:
        return f"lease-{uuid.uuid4().hex[:12]}"  # a store may outlive one test (PostgreSQL)

    def test_the_store_says_it_checks_fences(self, store: Any) -> None:
        assert store.checks_fences is True

    def test_grants_raise_the_generation(self, store: Any) -> None:
        name = self._lease()
        assert store.fence_generation(name) is None
        assert store.grant_fence(name) == Fence(name, 1)
        assert store.grant_fence(name) == Fence(name, 2)
        assert store.fence_generation(name) == 2

    def test_an_append_under_the_newest_grant_is_stored(self, store: Any) -> None:
        fence = store.grant_fence(self._lease())
        with fenced(fence):
            assert current_fence() == fence
            result = store.append("fenced-ok", [_event(0), _event(1)], NO_STREAM)
            store.append("fenced-ok", [_event(2)], 1)
        assert current_fence() is None
        assert result.versions == (0, 1)
        assert store.stream_version("fenced-ok") == 2

    def test_after_a_new_grant_the_old_fence_is_refused_and_nothing_is_stored(self, store: Any) -> None:
        name = self._lease()
        old = store.grant_fence(name)
        new = store.grant_fence(name)
        before = store.last_position()
        for batch in ([_event(0)], [_event(1), _event(2)]):  # one event and several take other paths
            with fenced(old), pytest.raises(FencedError) as refused:
                store.append("fenced-stale", batch)
            assert (refused.value.lease, refused.value.generation, refused.value.current) == (name, 1, 2)
        assert store.last_position() == before
        assert store.stream_version("fenced-stale") == NO_STREAM
        with fenced(new):
            store.append("fenced-stale", [_event(3)], NO_STREAM)

    def test_an_import_under_an_old_fence_is_refused_and_nothing_is_stored(self, store: Any) -> None:
        if not hasattr(store, "import_events"):
            pytest.skip("the store has no import_events")
        name = self._lease()
        old = store.grant_fence(name)
        new = store.grant_fence(name)
        before = store.last_position()
        at = datetime(2020, 1, 1, tzinfo=UTC)
        events = [ImportedEvent("fenced-import", 0, ContractEvent(0), uuid.uuid4(), at)]
        with fenced(old), pytest.raises(FencedError) as refused:
            store.import_events(events)
        assert (refused.value.generation, refused.value.current) == (1, 2)
        assert store.last_position() == before
        with fenced(new):
            assert store.import_events(events)[0].versions == (0,)

    def test_a_fence_never_granted_is_refused(self, store: Any) -> None:
        with fenced(Fence(self._lease(), 1)), pytest.raises(FencedError) as refused:
            store.append("fenced-never", [_event(0)])
        assert refused.value.current is None
        assert store.stream_version("fenced-never") == NO_STREAM

    def test_a_stale_fence_still_gets_a_stored_batch_back_unchanged(self, store: Any) -> None:
        # Re-appending what is already stored writes nothing, so the fence has nothing to refuse.
        name = self._lease()
        old = store.grant_fence(name)
        batch = [_event(0)]
        with fenced(old):
            first = store.append("fenced-replay", batch, NO_STREAM)
        store.grant_fence(name)
        with fenced(old):
            assert store.append("fenced-replay", batch, NO_STREAM) == first

    def test_appends_without_a_fence_are_not_checked(self, store: Any) -> None:
        store.grant_fence(self._lease())
        store.append("unfenced", [_event(0)], NO_STREAM)
        assert store.stream_version("unfenced") == 0

    def test_the_fence_follows_the_caller_into_threads_and_tasks(self, store: Any) -> None:
        name = self._lease()
        old = store.grant_fence(name)
        store.grant_fence(name)
        errors: list[BaseException] = []

        async def in_task() -> None:
            with pytest.raises(FencedError):
                await store.append_async("fenced-async", [_event(0)])
            with pytest.raises(FencedError):
                await asyncio.to_thread(store.append, "fenced-async", [_event(1)])

        def in_thread() -> None:  # a plain new thread starts without the caller's context
            try:
                store.append("fenced-thread", [_event(0)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        with fenced(old):
            asyncio.run(in_task())
            thread = threading.Thread(target=in_thread)
            thread.start()
            thread.join()
        assert errors == []
        assert store.stream_version("fenced-async") == NO_STREAM
        assert store.stream_version("fenced-thread") == 0
