"""Process steps: each handled event's output is stored with its checkpoint, exactly once."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from orchestrix.core.errors import ConcurrencyError, InvalidArgumentError, MultiStreamConflictError
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, StreamAppend
from orchestrix.core.execution import PROCESS_EVENTS, ProcessCheckpoint, ProcessStep
from orchestrix.core.messaging.messages import Event, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore


@attrs.frozen
class Paid(Event):
    account: str
    cents: int


@attrs.frozen
class Line(Event):
    cents: int
    source: int


def _line(recorded: RecordedEvent) -> list[StreamAppend] | None:
    if not isinstance(recorded.event, Paid):
        return None
    return [
        StreamAppend(f"statement-{recorded.event.account}", [Line(recorded.event.cents, recorded.position)])
    ]


def _store() -> InMemoryEventStore:
    return InMemoryEventStore(Serializer([Paid, Line, *PROCESS_EVENTS]))


def _lines(store: InMemoryEventStore) -> list[tuple[str, int, int]]:
    return [(r.stream, r.event.cents, r.event.source) for r in store.read_all() if isinstance(r.event, Line)]


def test_each_event_output_is_stored_with_its_checkpoint_in_one_append() -> None:
    store = _store()
    store.append("pay-1", [Paid("a", 5)])
    store.append("pay-2", [Paid("b", 7)])
    step = ProcessStep("statements", store, _line)
    assert step.run_until_caught_up() == 2
    assert _lines(store) == [("statement-a", 5, 1), ("statement-b", 7, 2)]
    events = list(store.read_all())
    # each line is followed at once by the checkpoint of the event it came from
    assert [(r.stream, type(r.event).__name__) for r in events[2:]] == [
        ("statement-a", "Line"),
        ("process-statements", "ProcessCheckpoint"),
        ("statement-b", "Line"),
        ("process-statements", "ProcessCheckpoint"),
    ]
    assert [r.event.position for r in store.read_stream("process-statements")] == [1, 2]
    assert ProcessStep("statements", store, _line).position() == 2
    assert ProcessStep("statements", store, _line).run_until_caught_up() == 0


def test_a_failure_before_the_append_stores_nothing_and_the_event_is_handled_once_later() -> None:
    store = _store()
    for n in range(4):
        store.append(f"pay-{n}", [Paid("a", n)])
    calls = []

    def flaky(recorded: RecordedEvent) -> list[StreamAppend] | None:
        calls.append(recorded.position)
        if recorded.position == 3 and calls.count(3) == 1:
            raise RuntimeError("crashed while handling")
        return _line(recorded)

    step = ProcessStep("statements", store, flaky)
    with pytest.raises(RuntimeError):
        step.run_once()
    assert [source for _, _, source in _lines(store)] == [1, 2]
    assert step.position() == 2
    step.run_until_caught_up()
    assert [source for _, _, source in _lines(store)] == [1, 2, 3, 4]


def test_two_instances_of_a_step_never_both_write_an_output() -> None:
    store = _store()
    for n in range(6):
        store.append(f"pay-{n}", [Paid("a", n)])
    first = ProcessStep("statements", store, _line, page_size=2)
    second = ProcessStep("statements", store, _line, page_size=2)
    first.run_once()
    assert second.position() == 2  # loaded now: it starts from where the first one is
    first.run_once()  # the first moves on; the second's next checkpoint expects an old version
    stats = second.run_once()
    assert stats.raced and stats.handled == 0
    for _ in range(4):
        first.run_once()
        second.run_once()
    assert sorted(source for _, _, source in _lines(store)) == [1, 2, 3, 4, 5, 6]


def test_events_the_handler_ignores_are_checkpointed_now_and_then() -> None:
    store = _store()
    store.append("other", [Line(0, 0) for _ in range(25)])
    step = ProcessStep("statements", store, _line, page_size=10, checkpoint_every=10)
    step.run_until_caught_up()
    assert [r.event.position for r in store.read_stream("process-statements")] == [10, 20]
    assert step.position() == 20  # the last 5 are read again after a restart, and give nothing again


def test_a_conflict_on_an_output_stream_is_raised_and_stores_nothing() -> None:
    store = _store()
    store.append("pay-1", [Paid("a", 5)])

    def expects_new_stream(recorded: RecordedEvent) -> list[StreamAppend] | None:
        return [StreamAppend("statement-a", [Line(1, recorded.position)], NO_STREAM)]

    store.append("statement-a", [Line(0, 0)])
    step = ProcessStep("statements", store, expects_new_stream)
    with pytest.raises(MultiStreamConflictError) as caught:
        step.run_once()
    assert isinstance(caught.value, ConcurrencyError) and caught.value.streams == ("statement-a",)
    assert store.stream_version("process-statements") == NO_STREAM


@pytest.mark.parametrize("output", [StreamAppend("x", [Line(1, 1)]), [("x", [Line(1, 1)], ANY)], "x"])
def test_a_handler_output_that_is_no_list_of_stream_appends_is_refused(output: object) -> None:
    store = _store()
    store.append("pay-1", [Paid("a", 5)])
    step = ProcessStep("statements", store, lambda recorded: output)
    with pytest.raises(InvalidArgumentError):
        step.run_once()
    assert store.last_position() == 1


@pytest.mark.parametrize(("name", "value"), [("page_size", 0), ("checkpoint_every", True)])
def test_bad_sizes_are_refused(name: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError):
        ProcessStep("p", _store(), _line, **{name: value})  # type: ignore[arg-type]


def test_the_async_form_runs_the_same_logic_and_handlers_may_be_coroutines() -> None:
    store = _store()
    store.append("pay-1", [Paid("a", 5)])

    async def handler(recorded: RecordedEvent) -> list[StreamAppend] | None:
        await asyncio.sleep(0)
        return _line(recorded)

    step = ProcessStep("statements", store, handler)
    assert asyncio.run(step.run_until_caught_up_async()) == 1
    assert _lines(store) == [("statement-a", 5, 1)]
    assert isinstance(next(iter(store.read_stream("process-statements"))).event, ProcessCheckpoint)
