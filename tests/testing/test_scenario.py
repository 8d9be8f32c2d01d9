"""The given/when/then scenarios: they pass on what is true and fail, saying why, on what is not."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import attrs
import pytest

from orchestrix.core.errors import DomainError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository, AggregateRoot, applies
from orchestrix.core.execution import Saga, handles
from orchestrix.core.execution.dispatch import CommandBus
from orchestrix.core.messaging import Command, Event
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import AggregateScenario, SagaScenario, like

# -- a counter with a limit, and its handlers --------------------------------------------------


@attrs.frozen
class Created(Event):
    counter_id: str
    limit: int


@attrs.frozen
class Added(Event):
    counter_id: str
    by: int
    total: int


@attrs.frozen
class Add(Command):
    counter_id: str
    by: int


class OverLimit(DomainError):
    pass


class Counter(AggregateRoot):
    def __init__(self) -> None:
        super().__init__()
        self.limit = 0
        self.total = 0

    def create(self, counter_id: str, limit: int) -> None:
        self.raise_event(Created(counter_id, limit))

    def add(self, by: int) -> int:
        if self.total + by > self.limit:
            raise OverLimit(f"{self.total} + {by} is over {self.limit}")
        self.raise_event(Added(self.id or "", by, self.total + by))
        return self.total

    @applies(Created)
    def _created(self, event: Created) -> None:
        self.id, self.limit = event.counter_id, event.limit

    @applies(Added)
    def _added(self, event: Added) -> None:
        self.total = event.total


class CounterHandlers:
    """Written once, as a coroutine; sent through a bus."""

    def __init__(self, repository: AggregateRepository) -> None:
        self.repository = repository
        self.bus = CommandBus()
        self.bus.register(Add, self.add)

    async def add(self, command: Add) -> int:
        return await self.repository.update_async(Counter, command.counter_id, lambda c: c.add(command.by))

    def handle(self, command: Any) -> Any:
        return self.bus.handle(command)

    async def handle_async(self, command: Any) -> Any:
        return await self.bus.handle_async(command)


def counter(limit: int = 10) -> AggregateScenario[Counter]:
    return AggregateScenario(Counter, "c-1", handlers=CounterHandlers).given(Created("c-1", limit))


# -- aggregates ----------------------------------------------------------------------------------


def test_then_accepts_instances_classes_and_likes() -> None:
    scenario = counter().when(Add("c-1", 3))
    scenario.then(Added("c-1", 3, 3))
    scenario.then(Added)
    scenario.then(like(Added, total=3))
    scenario.then(Added(ANY, 3, ANY))
    assert (scenario.result, scenario.events, scenario.aggregate.total) == (3, [Added("c-1", 3, 3)], 3)


def test_when_runs_a_function_on_the_aggregate_as_a_handler_would() -> None:
    counter().when(lambda c: c.add(4)).then(like(Added, total=4))
    fresh = AggregateScenario(Counter, "c-2").when(lambda c: c.create("c-2", 5))
    fresh.then(Created("c-2", 5))
    assert fresh.aggregate.limit == 5


def test_then_fails_naming_the_event_that_differs() -> None:
    scenario = counter().when(Add("c-1", 3))
    with pytest.raises(AssertionError, match=r"(?s)1\. DIFFERS.*like\(Added, total=4\).*\(got total=3\)"):
        scenario.then(like(Added, total=4))
    with pytest.raises(AssertionError, match="expected 2, got 1"):
        scenario.then(Added, Added)
    with pytest.raises(AssertionError, match="expected 0, got 1"):
        scenario.then()
    with pytest.raises(AssertionError, match="DIFFERS"):
        scenario.then(Created)


def test_then_fails_when_the_command_raised() -> None:
    with pytest.raises(AssertionError, match="raised OverLimit") as info:
        counter(limit=2).when(Add("c-1", 3)).then(Added)
    assert isinstance(info.value.__cause__, OverLimit)


def test_then_error_checks_type_message_and_that_nothing_was_stored() -> None:
    scenario = counter(limit=2).when(Add("c-1", 3)).then_error(OverLimit, r"0 \+ 3 is over 2")
    assert isinstance(scenario.error, OverLimit)
    assert scenario.store.last_position() == 1
    with pytest.raises(AssertionError, match="expected ValueError"):
        scenario.then_error(ValueError)
    with pytest.raises(AssertionError, match="does not match"):
        scenario.then_error(OverLimit, "under")
    with pytest.raises(AssertionError, match="raised nothing"):
        counter().when(Add("c-1", 3)).then_error(OverLimit)


def test_then_error_fails_if_the_refused_command_stored_something() -> None:
    def add_then_refuse(c: Counter) -> None:
        c.add(1)
        raise OverLimit("refused after deciding")

    # Not through the repository: a sloppy handler that saves before it refuses.
    scenario = counter()
    store = scenario.store

    def sloppy(c: Counter) -> None:
        store.append("Counter-c-1", [Added("c-1", 1, 1)])
        raise OverLimit("saved, then refused")

    scenario.when(add_then_refuse).then_error(OverLimit)  # the repository saved nothing
    with pytest.raises(AssertionError, match="events stored by the refused when"):
        scenario.when(sloppy).then_error(OverLimit)
    scenario.when(sloppy).then_error(OverLimit, stored=[Added])


def test_commands_need_handlers_and_then_needs_when() -> None:
    with pytest.raises(TypeError, match="pass handlers="):
        AggregateScenario(Counter, "c-1").when(Add("c-1", 1))
    with pytest.raises(TypeError, match="pass handlers="):
        AggregateScenario(Counter, "c-1").given_commands(Add("c-1", 1))
    with pytest.raises(TypeError, match="call when"):
        counter().then()


def test_a_scenario_takes_the_store_it_is_given() -> None:
    store = InMemoryEventStore()
    AggregateScenario(Counter, "c-1", store=store).given(Created("c-1", 3))
    assert store.stream_version("Counter-c-1") == 0


# -- sagas ---------------------------------------------------------------------------------------


@attrs.frozen
class JobPosted(Event):
    job_id: str


@attrs.frozen
class JobStarted(Event):
    job_id: str


@attrs.frozen
class JobDone(Event):
    job_id: str
    result: str


@attrs.frozen
class Run(Command):
    job_id: str


class JobSaga(Saga):
    """Decides from its state: a redelivered event sends nothing again."""

    category = "job"
    correlation_field = "job_id"
    terminal_events = (JobDone,)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.result = ""

    @property
    def state(self) -> str:
        return "done" if self.completed else "running"

    @handles(JobPosted, start=True)
    def posted(self, event: JobPosted) -> Any:
        if self.version < 0:
            self.raise_event(JobStarted(event.job_id))
        if not self.completed:
            result = yield Run(event.job_id)
            self.raise_event(JobDone(event.job_id, str(result)))

    @applies(JobStarted)
    def _started(self, event: JobStarted) -> None:
        self.id = event.job_id

    @applies(JobDone)
    def _done(self, event: JobDone) -> None:
        self.result = event.result


class ForgetfulSaga(JobSaga):
    """Never completes, and sends its command again on every delivery: not idempotent."""

    category = "forgetful"
    terminal_events = ()


@pytest.mark.parametrize("driver", ["sync", "asyncio"])
def test_a_saga_scenario_checks_commands_state_events_and_a_redelivery(driver: str) -> None:
    scenario = SagaScenario(
        JobSaga, "j-1", replies={Run: lambda command: f"ran {command.job_id}"}, driver=driver
    )
    scenario.given(JobPosted("j-1")).then(Run("j-1"), state="done", events=[JobStarted, JobDone])
    assert scenario.saga.result == "ran j-1"
    assert scenario.commands == [Run("j-1")]  # the redelivery sent nothing more


def test_a_saga_that_repeats_a_command_on_redelivery_fails_the_scenario() -> None:
    scenario = SagaScenario(ForgetfulSaga, "j-1", replies={Run: "ok"}).given(JobPosted("j-1"))
    with pytest.raises(AssertionError, match=r"redelivering the events sent commands again: \[Run"):
        scenario.then(Run)
    SagaScenario(ForgetfulSaga, "j-2", replies={Run: "ok"}).given(JobPosted("j-2")).then(Run, redeliver=False)


def test_a_saga_scenario_fails_on_other_commands_or_state() -> None:
    with pytest.raises(AssertionError, match="commands sent by JobSaga 'j-1': expected 0, got 1"):
        SagaScenario(JobSaga, "j-1").given(JobPosted("j-1")).then()
    with pytest.raises(AssertionError, match="JobSaga 'j-1' is 'done', expected 'running'"):
        SagaScenario(JobSaga, "j-1").given(JobPosted("j-1")).then(Run, state="running")
    with pytest.raises(AssertionError, match="events JobSaga 'j-1' stored"):
        SagaScenario(JobSaga, "j-1").given(JobPosted("j-1")).then(Run, events=[JobDone])


def test_when_separates_what_the_saga_did_before_from_what_is_checked() -> None:
    scenario = SagaScenario(JobSaga, "j-1", replies={Run: "ok"}).given(JobPosted("j-1"))
    scenario.when(JobPosted("j-1")).then()  # a finished job: the new event sends nothing
    assert scenario.commands == [Run("j-1")]


def test_a_reply_may_be_an_exception_and_a_missing_reply_is_none() -> None:
    scenario = SagaScenario(JobSaga, "j-1", replies={Run: OverLimit("no capacity")})
    scenario.given(JobPosted("j-1")).then(Run, state="running")
    assert scenario.saga.stuck_reason is not None and "no capacity" in scenario.saga.stuck_reason
    unanswered = SagaScenario(JobSaga, "j-2").given(JobPosted("j-2")).then(Run, state="done")
    assert unanswered.saga.result == "None"


def test_a_saga_scenario_refuses_contradictory_options() -> None:
    with pytest.raises(TypeError, match="not both"):
        SagaScenario(JobSaga, "j-1", handlers=CounterHandlers, replies={})
    with pytest.raises(ValueError, match="driver"):
        SagaScenario(JobSaga, "j-1", driver="threads")
