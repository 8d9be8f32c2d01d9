"""The command bus: one handler per command type, written as a plain function or a coroutine
function, run under the sync entry point and the asyncio one alike."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from orchestrix.core.errors import EventLoopRequiredError, UnknownCommandError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.execution import CommandBus, CommandDispatcher
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from tests.core.test_aggregate import Counter, Created, Incremented
from tests.core.test_saga_support import Reserve, Ship


def handle(bus: CommandBus, command: Any, entry: str) -> Any:
    if entry == "sync":
        return bus.handle(command)
    return asyncio.run(bus.handle_async(command))


@pytest.fixture(params=["sync", "async"])
def entry(request: pytest.FixtureRequest) -> str:
    """Which entry point sends the command: ``handle`` or ``handle_async``."""
    return request.param


def test_a_plain_handler_runs_under_both_entry_points(entry: str) -> None:
    threads: list[threading.Thread] = []

    def reserve(command: Reserve) -> str:
        threads.append(threading.current_thread())
        return f"reserved {command.key}"

    bus = CommandBus()
    bus.register(Reserve, reserve)
    assert handle(bus, Reserve("o", 1, "k"), entry) == "reserved k"
    # Under asyncio a plain (maybe blocking) handler runs in a worker thread, never on the loop.
    assert (threads[0] is threading.main_thread()) == (entry == "sync")


def test_a_coroutine_handler_runs_under_both_entry_points_without_a_thread(entry: str) -> None:
    threads: list[threading.Thread] = []
    loops: list[bool] = []

    async def reserve(command: Reserve) -> str:
        threads.append(threading.current_thread())
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)
        return f"reserved {command.key}"

    bus = CommandBus()
    bus.register(Reserve, reserve)
    assert handle(bus, Reserve("o", 1, "k"), entry) == "reserved k"
    assert threads == [threading.main_thread()]
    # The sync entry point runs the coroutine itself: no event loop is started for it.
    assert loops == [entry == "async"]


def test_a_coroutine_handler_using_the_repository_runs_under_sync_handle(entry: str) -> None:
    repository = AggregateRepository(InMemoryEventStore())

    def increment_once(counter: Counter) -> int:
        counter.increment(1)
        return counter.value

    async def increment(command: Reserve) -> int:
        counter = Counter()
        counter.create(command.order_id)
        counter.increment(command.items)
        await repository.save_async(counter)
        return await repository.update_async(Counter, command.order_id, increment_once)

    bus = CommandBus()
    bus.register(Reserve, increment)
    assert handle(bus, Reserve("c-1", 4, "k"), entry) == 5
    stored = [r.event for r in repository.event_store.read_stream(Counter.stream_name("c-1"))]
    assert stored == [Created("c-1"), Incremented(4), Incremented(1)]


def test_bound_methods_partials_and_callable_objects_are_recognised(entry: str) -> None:
    class Handlers:
        async def reserve(self, command: Reserve) -> str:
            return "method"

        async def __call__(self, command: Any) -> str:
            return "object"

    async def ship(command: Ship, suffix: str) -> str:
        return "partial" + suffix

    bus = CommandBus()
    bus.register(Reserve, Handlers().reserve)
    bus.register(Ship, functools.partial(ship, suffix="!"))
    assert handle(bus, Reserve("o", 1, "k"), entry) == "method"
    assert handle(bus, Ship("o", "k"), entry) == "partial!"
    bus.register(Reserve, Handlers())
    assert handle(bus, Reserve("o", 1, "k"), entry) == "object"


def test_a_plain_callable_returning_a_coroutine_is_awaited(entry: str) -> None:
    async def reserve(command: Reserve) -> str:
        return f"reserved {command.key}"

    bus = CommandBus()
    bus.register(Reserve, lambda command: reserve(command))
    assert handle(bus, Reserve("o", 1, "k"), entry) == "reserved k"


def test_registering_again_replaces_the_handler(entry: str) -> None:
    async def second(command: Reserve) -> str:
        return "second"

    bus = CommandBus()
    bus.register(Reserve, lambda command: "first")
    bus.register(Reserve, second)
    assert handle(bus, Reserve("o", 1, "k"), entry) == "second"


def test_a_handler_error_reaches_the_caller_unchanged(entry: str) -> None:
    async def refuse(command: Reserve) -> None:
        raise LookupError("no such order")

    def refuse_plainly(command: Ship) -> None:
        raise ValueError("not shippable")

    bus = CommandBus()
    bus.register(Reserve, refuse)
    bus.register(Ship, refuse_plainly)
    with pytest.raises(LookupError, match="no such order"):
        handle(bus, Reserve("o", 1, "k"), entry)
    with pytest.raises(ValueError, match="not shippable"):
        handle(bus, Ship("o", "k"), entry)


@pytest.mark.parametrize("command", [Ship("o", "k"), object(), "withdraw everything", None])
def test_an_unknown_command_type_is_named_with_what_is_registered(entry: str, command: Any) -> None:
    bus = CommandBus()
    bus.register(Reserve, lambda command: None)
    shown = rf"command {type(command).__name__} \(registered: Reserve\)"
    with pytest.raises(UnknownCommandError, match=shown) as info:
        handle(bus, command, entry)
    assert info.value.command_type is type(command)


def test_a_subclass_of_a_registered_type_is_not_routed() -> None:
    class UrgentReserve(Reserve):
        pass

    bus = CommandBus()
    bus.register(Reserve, lambda command: "reserved")
    with pytest.raises(UnknownCommandError, match="UrgentReserve"):
        bus.handle(UrgentReserve("o", 1, "k"))


@pytest.mark.parametrize("delay", [0.01, 0])
def test_a_coroutine_handler_that_needs_an_event_loop_is_refused_by_sync_handle(delay: float) -> None:
    async def reserve_slowly(command: Reserve) -> str:
        await asyncio.sleep(delay)  # asks for the running loop (> 0) or yields to it (0)
        return "reserved"

    bus = CommandBus()
    bus.register(Reserve, reserve_slowly)
    with pytest.raises(EventLoopRequiredError, match=r"reserve_slowly.*needs an event loop") as info:
        bus.handle(Reserve("o", 1, "k"))
    assert "reserve_slowly" in info.value.code
    # The same handler is fine where there is a loop.
    assert asyncio.run(bus.handle_async(Reserve("o", 1, "k"))) == "reserved"


def test_registering_something_that_is_not_a_handler_is_refused() -> None:
    bus = CommandBus()
    with pytest.raises(TypeError, match="Reserve: handler must be callable"):
        bus.register(Reserve, "reserve")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command_type must be a class"):
        bus.register(Reserve("o", 1, "k"), lambda command: None)  # type: ignore[arg-type]


def test_the_bus_is_a_command_dispatcher() -> None:
    assert isinstance(CommandBus(), CommandDispatcher)
