"""The arguments part of the EventStore contract: every store refuses the same bad input, the
same way (an :class:`~orchestrix.core.errors.InvalidArgumentError` naming the parameter and the
value, at once), and stores nothing.

:class:`~orchestrix.testing.contract.EventStoreContract` inherits these tests, so every store
that runs the contract runs them too; they use its ``store`` fixture.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrix.core.errors import InvalidArgumentError
from orchestrix.core.eventsourcing.store import NO_STREAM, EventStore
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

__all__ = ["ArgumentContract"]


def _events(*numbers: int) -> list[NewEvent]:
    # Imported here: the contract module imports this one to inherit from it.
    from orchestrix.testing.contract import ContractEvent

    return [NewEvent(ContractEvent(n)) for n in numbers]


def _numbers(recorded: Iterator[RecordedEvent]) -> list[int]:
    return [r.event.n for r in recorded]


def _refused_promptly(call: Callable[[], object], parameter: str, value: object) -> None:
    """``call`` raises InvalidArgumentError naming ``parameter`` and ``value`` within seconds.

    Run in a thread with a deadline: a wrong argument once made a waiter spin for ever, which a
    plain call would turn into a hung test run instead of a failure.
    """
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            call()
        except BaseException as exc:  # examined below, in the test's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10.0)
    assert outcome, f"still running after 10 s with {parameter}={value!r}"
    raised = outcome[0]
    assert isinstance(raised, InvalidArgumentError), f"{parameter}={value!r} gave {raised!r}"
    assert raised.parameter == parameter
    assert raised.value is value or raised.value == value


def _drain_async(iterable: object) -> None:
    async def drain() -> None:
        async for _ in iterable:  # type: ignore[attr-defined]
            pass

    asyncio.run(drain())


_NOT_A_COUNT = [-1, 1.5, "1", True, None, 2**63, 2**70, float("nan")]
"""Values no version or position may take: negative, not an int (bool included), past 2**63-1."""


class ArgumentContract:
    """Versions, positions, limits and timeouts that are no such thing are refused, on every store."""

    store: Any  # the contract's fixture

    @pytest.mark.parametrize("bad", _NOT_A_COUNT)
    def test_a_from_version_that_is_no_version_is_refused(self, store: EventStore, bad: object) -> None:
        store.append("s-1", _events(0, 1, 2), NO_STREAM)
        _refused_promptly(lambda: list(store.read_stream("s-1", bad)), "from_version", bad)  # type: ignore[arg-type]
        _refused_promptly(lambda: _drain_async(store.read_stream_async("s-1", bad)), "from_version", bad)  # type: ignore[arg-type]
        assert _numbers(store.read_stream("s-1", 1)) == [1, 2]

    @pytest.mark.parametrize("bad", _NOT_A_COUNT)
    def test_an_after_that_is_no_position_is_refused(self, store: EventStore, bad: object) -> None:
        store.append("s-1", _events(0, 1, 2), NO_STREAM)
        _refused_promptly(lambda: list(store.read_all(bad)), "after", bad)  # type: ignore[arg-type]
        _refused_promptly(lambda: _drain_async(store.read_all_async(bad)), "after", bad)  # type: ignore[arg-type]
        _refused_promptly(lambda: store.wait_for_events(bad, 0.01), "after", bad)  # type: ignore[arg-type]
        _refused_promptly(
            lambda: asyncio.run(store.wait_for_events_async(bad, 0.01)),  # type: ignore[arg-type]
            "after",
            bad,
        )

    @pytest.mark.parametrize("bad", [-1, -5, "x", 1.5, True, 2**63])
    def test_a_limit_that_is_no_count_is_refused(self, store: EventStore, bad: object) -> None:
        store.append("s-1", _events(0, 1, 2), NO_STREAM)
        _refused_promptly(lambda: list(store.read_all(0, bad)), "limit", bad)  # type: ignore[arg-type]
        _refused_promptly(lambda: _drain_async(store.read_all_async(0, bad)), "limit", bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad", ["ContractEvent", int, [1], {"ContractEvent"}, 1, {int: 1}])
    def test_types_that_are_no_collection_of_classes_are_refused(
        self, store: EventStore, bad: object
    ) -> None:
        store.append("s-1", _events(0, 1, 2), NO_STREAM)
        _refused_promptly(lambda: list(store.read_all(0, types=bad)), "types", bad)  # type: ignore[arg-type]
        _refused_promptly(lambda: _drain_async(store.read_all_async(0, types=bad)), "types", bad)  # type: ignore[arg-type]

    def test_limit_none_reads_everything_and_zero_reads_nothing(self, store: EventStore) -> None:
        store.append("s-1", _events(0, 1, 2), NO_STREAM)
        assert _numbers(store.read_all(0, None)) == [0, 1, 2]
        assert list(store.read_all(0, 0)) == []

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -0.5, -1, "1", None, True])
    def test_a_timeout_that_is_no_finite_duration_is_refused(self, store: EventStore, bad: object) -> None:
        after = store.last_position()
        _refused_promptly(lambda: store.wait_for_events(after, bad), "timeout", bad)  # type: ignore[arg-type]
        _refused_promptly(
            lambda: asyncio.run(store.wait_for_events_async(after, bad)),  # type: ignore[arg-type]
            "timeout",
            bad,
        )
        assert store.wait_for_events(after, 0) is False
