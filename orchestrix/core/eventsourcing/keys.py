"""Idempotency keys whose outcome is decided once: applied once, or refused once and for good.

An idempotency key alone makes a command apply *at most once*. That is not enough when two
senders may send the same keyed command at different times (a redelivery, or a saga runner that
lost its lease while paused): if the first try is refused and leaves no trace, a later try of
the same key can succeed when the state has changed, and the sender's two copies take two
different branches (a transfer that failed *and* credited its destination).

So a receiver remembers refusals too, the way a payment API stores the response of an
idempotency key, errors included. Decorate an aggregate's command method with
:func:`decided_once`; when the method refuses a keyed command (raises a
:class:`~orchestrix.core.errors.DomainError`), the aggregate records :class:`KeyRefused` in its
own stream, and every later command with that key is refused with
:class:`~orchestrix.core.errors.KeyAlreadyRefusedError` carrying the same reason, whatever the
state then. :meth:`AggregateRepository.update
<orchestrix.core.eventsourcing.aggregate.AggregateRepository.update>` stores the record before it
re-raises the refusal::

    class Account(AggregateRoot):
        @decided_once()                      # the key is command.idempotency_key
        def withdraw(self, command): ...

    @decided_once(lambda command: f"{command.order_id}:reserve")
    def reserve(self, command): ...

Register :data:`KEY_EVENTS` with the store's serializer. A command method must check its rules
before it raises events (as every command method should): a method that raised events and then
a refusal is not recorded. An aggregate that does not exist yet has no stream to remember a
refusal in; runners are fenced for that (see :mod:`orchestrix.core.eventsourcing.fencing`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from orchestrix._speedups import uuid5_in
from orchestrix.core.errors import DomainError, KeyAlreadyRefusedError
from orchestrix.core.messaging.messages import Event

__all__ = ["KEY_EVENTS", "KeyRefused", "decided_once", "refusal_event_id"]

F = TypeVar("F", bound=Callable[..., Any])

_REFUSALS = uuid.UUID("0c6b6f0e-51c4-4b8e-9a77-3f2d8c1e5a90")
_refusal_id = uuid5_in(_REFUSALS)  # uuid.uuid5(_REFUSALS, name)


@attrs.frozen
class KeyRefused(Event):
    """A keyed command was refused; the key stays refused, with this reason."""

    key: str
    error_type: str
    reason: str


KEY_EVENTS: tuple[type, ...] = (KeyRefused,)
"""The events every aggregate stream may hold; register them with the store's serializer."""


def refusal_event_id(stream: str, key: str) -> uuid.UUID:
    """The id of a key's refusal record: one key, one record, however often it is saved."""
    return _refusal_id(f"{stream}\x00{key}")


def decided_once(key: str | Callable[[Any], str | None] = "idempotency_key") -> Callable[[F], F]:
    """Decorate an aggregate command method ``method(self, command, ...)`` so its key is decided once.

    ``key`` names the command's field holding the key (default ``idempotency_key``) or is a
    function from the command to the key; a None key means the command is not keyed.
    """
    key_of: Callable[[Any], Any] = (lambda command: getattr(command, key)) if isinstance(key, str) else key

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def decide(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            command_key = key_of(command)
            if command_key is None:
                return method(self, command, *args, **kwargs)
            refused = self._refusals.get(command_key)
            if refused is not None:
                raise KeyAlreadyRefusedError(command_key, refused.error_type, refused.reason)
            pending = len(self._pending)
            try:
                return method(self, command, *args, **kwargs)
            except DomainError as exc:
                if len(self._pending) == pending and self.id and self.version >= 0:
                    self.raise_event(
                        KeyRefused(command_key, type(exc).__name__, str(exc)),
                        event_id=refusal_event_id(type(self).stream_name(self.id), command_key),
                    )
                raise

        return decide  # type: ignore[return-value]

    return wrap
