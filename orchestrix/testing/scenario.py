"""Given/when/then fixtures: an aggregate's rules and a saga's steps, each in a few lines.

An aggregate (or a command handler)::

    (
        AggregateScenario(Account, "acc-1", handlers=BankingCommandHandlers, serializer=serializer)
        .given_commands(OpenAccount("acc-1", "Alice", Decimal("100")))
        .when(WithdrawMoney("acc-1", Decimal("150")))
        .then_error(InsufficientFunds, "balance 100 is less than 150")  # and nothing was stored
    )

A saga, run by a real :class:`~orchestrix.core.execution.runner.SagaRunner`::

    (
        SagaScenario(TransferSaga, "t-1", handlers=BankingCommandHandlers, serializer=serializer)
        .given_commands(OpenAccount("alice", "Alice", Decimal("100")), OpenAccount("bob", "Bob"))
        .when_commands(TransferMoney("t-1", "alice", "bob", Decimal("30")))
        .then(WithdrawMoney, DepositMoney, SettleTransfer, state="COMPLETED")
    )

``then`` of a saga also delivers every stored event again (to a runner that lost its
checkpoint, and to the same runner) and checks that the redelivery sent no command, stored
nothing and left the saga as it was: at-least-once delivery must not repeat an effect.

Each scenario works on its own store (an :class:`InMemoryEventStore`, with ``serializer`` if
given, so every event round-trips as on a durable store) unless ``store=`` is passed. It is a
plain object: use it in a plain pytest function, no fixture needed.

What ``then`` compares (events, commands) may be given as an instance (compared with ``==``,
so ``unittest.mock.ANY`` works in a field), as a class (any message of exactly that class),
or as :func:`like` (a class and the fields that matter, for messages that carry ids and times).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Self, TypeVar

from orchestrix.core.eventsourcing.aggregate import AggregateRepository, AggregateRoot
from orchestrix.core.eventsourcing.store import ANY, EventStore
from orchestrix.core.execution.checkpoint import InMemoryCheckpointStore
from orchestrix.core.execution.dispatch import CommandDispatcher
from orchestrix.core.execution.runner import SagaRunner
from orchestrix.core.execution.saga import Saga
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.memory.store import InMemoryEventStore

__all__ = ["AggregateScenario", "Handlers", "Like", "SagaScenario", "like"]

A = TypeVar("A", bound=AggregateRoot)
S = TypeVar("S", bound=Saga)

Handlers = Callable[[AggregateRepository], CommandDispatcher]
"""What ``handlers=`` takes: built from the scenario's repository (a handlers class fits)."""


class Like:
    """Matches a message of exactly ``message_type`` whose named fields equal the given values."""

    def __init__(self, message_type: type, /, **fields: Any) -> None:
        self.message_type = message_type
        self.fields = fields

    def matches(self, message: Any) -> bool:
        """True if ``message`` is of the type and has every named field's value."""
        if type(message) is not self.message_type:
            return False
        missing = object()
        return all(getattr(message, name, missing) == value for name, value in self.fields.items())

    def differences(self, message: Any) -> list[str]:
        """What keeps ``message`` from matching, for a failure message."""
        if type(message) is not self.message_type:
            return [f"type {type(message).__name__}"]
        missing = object()
        return [
            f"{name}={getattr(message, name, missing)!r}"
            for name, value in self.fields.items()
            if getattr(message, name, missing) != value
        ]

    def __repr__(self) -> str:
        shown = "".join(f", {name}={value!r}" for name, value in self.fields.items())
        return f"like({self.message_type.__name__}{shown})"


def like(message_type: type, /, **fields: Any) -> Like:
    """An expected message: its class and the fields that matter (the others are not compared)."""
    return Like(message_type, **fields)


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Like):
        return expected.matches(actual)
    if isinstance(expected, type):
        return type(actual) is expected
    return bool(expected == actual)


def _shown(message: Any) -> str:
    return message.__name__ if isinstance(message, type) else repr(message)


def _check_sequence(what: str, expected: Sequence[Any], actual: Sequence[Any]) -> None:
    if len(expected) == len(actual) and all(map(_matches, expected, actual)):
        return
    lines = [f"{what}: expected {len(expected)}, got {len(actual)}"]
    for n in range(max(len(expected), len(actual))):
        want = _shown(expected[n]) if n < len(expected) else "(nothing)"
        got = _shown(actual[n]) if n < len(actual) else "(nothing)"
        differs = n >= len(expected) or n >= len(actual) or not _matches(expected[n], actual[n])
        mark = "DIFFERS" if differs else "ok"
        lines.append(f"  {n + 1}. {mark}\n     expected {want}\n     got      {got}")
        if differs and n < len(expected) and n < len(actual) and isinstance(expected[n], Like):
            lines.append(f"     (got {', '.join(expected[n].differences(actual[n]))})")
    raise AssertionError("\n".join(lines))


class _World:
    """The store, repository and handlers a scenario works on."""

    def __init__(
        self, serializer: Serializer | None, store: EventStore | None, handlers: Handlers | None
    ) -> None:
        if store is None:
            store = InMemoryEventStore(serializer) if serializer is not None else InMemoryEventStore()
        self.store: EventStore = store
        self.repository = AggregateRepository(store)
        self.handlers: CommandDispatcher | None = handlers(self.repository) if handlers is not None else None

    def append(self, stream: str, events: Iterable[Any]) -> None:
        batch = list(events)
        if batch:
            self.store.append(stream, batch, ANY)

    def send(self, commands: Iterable[Any], caller: str) -> None:
        if self.handlers is None:
            raise TypeError(f"{caller}() sends commands through handlers: pass handlers= to the scenario")
        for command in commands:
            self.handlers.handle(command)


class _Scenario:
    """What both scenarios offer: the store, its repository and the handlers they work with."""

    _world: _World

    @property
    def store(self) -> EventStore:
        """The store the scenario works on."""
        return self._world.store

    @property
    def repository(self) -> AggregateRepository:
        """The repository on that store (the handlers' repository)."""
        return self._world.repository

    @property
    def handlers(self) -> Any:
        """The handlers built from ``handlers=`` (for their queries); TypeError if there are none."""
        if self._world.handlers is None:
            raise TypeError("the scenario has no handlers: pass handlers=")
        return self._world.handlers


class AggregateScenario(_Scenario, Generic[A]):
    """Given past events of one aggregate, when a command, then the new events or the error.

    ``when`` takes a callable on the aggregate (``lambda account: account.withdraw(...)``: run
    as a handler would, load, decide and save) or a command, sent through ``handlers``.
    """

    def __init__(
        self,
        aggregate_type: type[A],
        aggregate_id: str,
        *,
        handlers: Handlers | None = None,
        serializer: Serializer | None = None,
        store: EventStore | None = None,
    ) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self._world = _World(serializer, store, handlers)
        self._when: str | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._new: list[Any] = []

    @property
    def stream(self) -> str:
        """The aggregate's stream."""
        return self.aggregate_type.stream_name(self.aggregate_id)

    def given(self, *events: Any) -> Self:
        """Store these events in the aggregate's stream, as its past."""
        self._world.append(self.stream, events)
        return self

    def given_commands(self, *commands: Any) -> Self:
        """Send these commands through the handlers first, as the past (they must succeed)."""
        self._world.send(commands, "given_commands")
        return self

    def when(self, action: Callable[[A], Any] | Any) -> Self:
        """Run ``action`` (a callable on the aggregate, or a command for the handlers) and record
        its result or error and the events it stored."""
        before = self.store.last_position()
        self._result, self._error = None, None
        if callable(action) and not isinstance(action, type):
            self._when = getattr(action, "__name__", repr(action))
            run: Callable[[], Any] = lambda: self._decide(action)  # noqa: E731
        else:
            self._when = repr(action)
            if self._world.handlers is None:
                raise TypeError(
                    f"when({self._when}): a command is sent through handlers; pass handlers= to "
                    "the scenario, or give when() a callable on the aggregate"
                )
            handlers = self._world.handlers
            run = lambda: handlers.handle(action)  # noqa: E731
        try:
            self._result = run()
        except Exception as exc:
            self._error = exc
        self._new = [recorded.event for recorded in self.store.read_all(before)]
        return self

    def _decide(self, decide: Callable[[A], Any]) -> Any:
        if self.store.stream_version(self.stream) >= 0:
            return self.repository.update(self.aggregate_type, self.aggregate_id, decide)
        aggregate = self.aggregate_type()
        result = decide(aggregate)
        self.repository.save(aggregate)
        return result

    def then(self, *expected: Any) -> Self:
        """Assert that ``when`` succeeded and stored exactly these events (none: it stored nothing)."""
        self._check_when()
        if self._error is not None:
            raise AssertionError(
                f"when({self._when}) raised {self._error!r}; expected events {list(map(_shown, expected))}"
            ) from self._error
        _check_sequence(f"events stored by when({self._when})", expected, self._new)
        return self

    def then_error(
        self, error_type: type[BaseException], match: str | None = None, *, stored: Sequence[Any] = ()
    ) -> Self:
        """Assert that ``when`` raised ``error_type`` (its message matching ``match``, a regular
        expression searched for) and stored nothing, or exactly ``stored`` (such as the record of
        a refused idempotency key, :class:`~orchestrix.core.eventsourcing.KeyRefused`)."""
        self._check_when()
        if self._error is None:
            raise AssertionError(
                f"when({self._when}) raised nothing; expected {error_type.__name__} "
                f"(it returned {self._result!r} and stored {self._new!r})"
            )
        if not isinstance(self._error, error_type):
            raise AssertionError(
                f"when({self._when}) raised {self._error!r}; expected {error_type.__name__}"
            ) from self._error
        if match is not None and not re.search(match, str(self._error)):
            raise AssertionError(f"{self._error!r} does not match {match!r}") from self._error
        _check_sequence(f"events stored by the refused when({self._when})", stored, self._new)
        return self

    def _check_when(self) -> None:
        if self._when is None:
            raise TypeError("call when() before then()")

    @property
    def result(self) -> Any:
        """What ``when`` returned."""
        return self._result

    @property
    def error(self) -> Any:
        """What ``when`` raised (None if it succeeded); typed Any so a test reads its fields."""
        return self._error

    @property
    def events(self) -> list[Any]:
        """The events ``when`` stored."""
        return list(self._new)

    @property
    def aggregate(self) -> A:
        """The aggregate as stored now (loaded again from its stream)."""
        return self.repository.load(self.aggregate_type, self.aggregate_id)


class _Replies:
    """A dispatcher that answers from a table: command type -> value, exception, or function."""

    def __init__(self, replies: dict[type, Any]) -> None:
        self.replies = replies

    def handle(self, command: Any) -> Any:
        reply = self.replies.get(type(command))
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply) and not isinstance(reply, type):
            return reply(command)
        return reply

    async def handle_async(self, command: Any) -> Any:
        return self.handle(command)


class _Recording:
    """Passes commands on and remembers each one sent (also those refused)."""

    def __init__(self, dispatcher: CommandDispatcher) -> None:
        self.dispatcher = dispatcher
        self.sent: list[Any] = []

    def handle(self, command: Any) -> Any:
        self.sent.append(command)
        return self.dispatcher.handle(command)

    async def handle_async(self, command: Any) -> Any:
        self.sent.append(command)
        return await self.dispatcher.handle_async(command)


class SagaScenario(_Scenario, Generic[S]):
    """Given events, then the commands a saga sent and the state it reached, also after a redelivery.

    The saga's commands go to ``handlers`` (built on the scenario's repository, so their effects
    are stored beside the saga's) or, without handlers, are answered from ``replies``: command
    type -> the result, an exception to raise, or a function of the command. A command type
    missing from ``replies`` gets None. ``driver="asyncio"`` runs the runner's asyncio form;
    ``runner_options`` are passed to the :class:`SagaRunner` (``max_concurrency=``, ...).
    """

    def __init__(
        self,
        saga_type: type[S],
        saga_id: str,
        *,
        handlers: Handlers | None = None,
        replies: dict[type, Any] | None = None,
        serializer: Serializer | None = None,
        store: EventStore | None = None,
        driver: str = "sync",
        runner_options: dict[str, Any] | None = None,
    ) -> None:
        if driver not in ("sync", "asyncio"):
            raise ValueError(f"driver must be 'sync' or 'asyncio', not {driver!r}")
        if handlers is not None and replies is not None:
            raise TypeError("pass handlers= or replies=, not both")
        self.saga_type = saga_type
        self.saga_id = saga_id
        self.driver = driver
        self.runner_options: dict[str, Any] = dict(runner_options or {})
        self._world = _World(serializer, store, handlers)
        target = self._world.handlers if self._world.handlers is not None else _Replies(replies or {})
        self._dispatcher = _Recording(target)
        self.checkpoints: InMemoryCheckpointStore = InMemoryCheckpointStore()
        self.runner: SagaRunner = self._new_runner(self.checkpoints)
        self._since_commands = 0

    def given(self, *events: Any, stream: str | None = None) -> Self:
        """Store these events (in ``stream``; by default an event the saga applies itself goes to
        the saga's stream, any other to a stream named after its type)."""
        self._store_events(events, stream)
        return self

    def given_commands(self, *commands: Any) -> Self:
        """Send these commands through the handlers (not recorded as the saga's commands)."""
        self._world.send(commands, "given_commands")
        return self

    def when(self, *events: Any, stream: str | None = None) -> Self:
        """Let the saga handle everything so far, then store these events: ``then`` checks only
        what the saga did after them."""
        self._settle_given()
        self._store_events(events, stream)
        return self

    def when_commands(self, *commands: Any) -> Self:
        """Like :meth:`when`, for the events these commands store through the handlers."""
        self._settle_given()
        self._world.send(commands, "when_commands")
        return self

    def then(
        self,
        *commands: Any,
        state: str | None = None,
        events: Sequence[Any] | None = None,
        redeliver: bool = True,
    ) -> Self:
        """Run the saga until the runner is idle; assert the commands it sent (none: it sent
        none), and if given its ``state`` and the ``events`` it added to its stream.

        With ``redeliver`` (the default), every stored event is then delivered again, and the
        saga must send nothing, store nothing and stay as it was.
        """
        version_before = self._saga_version()
        self._drain(self.runner)
        _check_sequence(
            f"commands sent by {self.saga_type.__name__} {self.saga_id!r}",
            commands,
            self._dispatcher.sent[self._since_commands :],
        )
        saga = self.saga
        if state is not None and saga.state != state:
            name = f"{self.saga_type.__name__} {self.saga_id!r}"
            raise AssertionError(f"{name} is {saga.state!r}, expected {state!r}")
        if events is not None:
            added = [r.event for r in self.store.read_stream(saga.stream, version_before + 1)]
            _check_sequence(f"events {self.saga_type.__name__} {self.saga_id!r} stored", events, added)
        if redeliver:
            self._check_redelivery(saga)
        return self

    @property
    def commands(self) -> list[Any]:
        """Every command the saga sent, in order (redeliveries included)."""
        return list(self._dispatcher.sent)

    @property
    def saga(self) -> S:
        """The saga as stored now (loaded again from its stream)."""
        return self.repository.load(self.saga_type, self.saga_id)

    # -- plumbing -------------------------------------------------------------------------

    def _new_runner(self, checkpoints: InMemoryCheckpointStore) -> SagaRunner:
        return SagaRunner(self.store, [self.saga_type], self._dispatcher, checkpoints, **self.runner_options)

    def _drain(self, runner: SagaRunner) -> None:
        if self.driver == "sync":
            runner.run_until_idle()
        else:
            asyncio.run(runner.run_until_idle_async())

    def _redeliver_one(self, recorded: Any) -> None:
        if self.driver == "sync":
            self.runner.handle(recorded)
        else:
            asyncio.run(self.runner.handle_async(recorded))

    def _settle_given(self) -> None:
        self._drain(self.runner)
        self._since_commands = len(self._dispatcher.sent)

    def _store_events(self, events: Iterable[Any], stream: str | None) -> None:
        for event in events:
            self._world.append(stream or self._default_stream(event), [event])

    def _default_stream(self, event: Any) -> str:
        if type(event) in self.saga_type._appliers:
            spec = self.saga_type.handlers.get(type(event))
            saga_id = spec.correlation_id(event) if spec is not None else None
            return self.saga_type.stream_name(saga_id or self.saga_id)
        return f"given-{type(event).__name__}"

    def _saga_version(self) -> int:
        return self.store.stream_version(self.saga_type.stream_name(self.saga_id))

    def _check_redelivery(self, saga: S) -> None:
        sent, position = len(self._dispatcher.sent), self.store.last_position()
        state, version = saga.state, saga.version
        self._drain(self._new_runner(InMemoryCheckpointStore()))  # lost its checkpoint: everything again
        for recorded in list(self.store.read_all()):  # and each event once more to the same runner
            self._redeliver_one(recorded)
        again = self._dispatcher.sent[sent:]
        if again:
            raise AssertionError(f"redelivering the events sent commands again: {again!r}")
        if self.store.last_position() != position:
            stored = [r.event for r in self.store.read_all(position)]
            raise AssertionError(f"redelivering the events stored more: {stored!r}")
        after = self.saga
        if (after.state, after.version) != (state, version):
            raise AssertionError(
                f"redelivering the events changed {self.saga_type.__name__} {self.saga_id!r} "
                f"from {state!r} (version {version}) to {after.state!r} (version {after.version})"
            )
