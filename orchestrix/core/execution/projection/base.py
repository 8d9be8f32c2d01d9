"""The projection base class: a read model whose methods, marked with :func:`projects`, handle events.

A handler, and each hook (:meth:`Projection.position`, :meth:`~Projection.commit`,
:meth:`~Projection.rollback`, :meth:`~Projection.reset`), may be a plain method or an
``async def``, whichever way the runner is driven: the runner's sync forms run a coroutine
handler natively as long as it awaits only orchestrix operations (see :mod:`orchestrix.core._io`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import attrs

from orchestrix.core.execution.retry import RetryPolicy, _policy_of, _set_policy

__all__ = ["Projection", "projects"]

F = TypeVar("F", bound=Callable[..., Any])


def projects(*event_types: type, retry: RetryPolicy | None = None) -> Callable[[F], F]:
    """Mark a projection method as the handler of ``event_types``.

    The method takes ``(self, event)`` or ``(self, event, recorded)``, where ``recorded`` is the
    :class:`~orchestrix.core.messaging.messages.RecordedEvent` envelope (stream, version,
    position, time). Dispatch is by exact type, resolved once per class. ``retry`` overrides the
    projection's ``retry_policy`` for this handler.
    """
    if not event_types:
        raise TypeError("projects() needs at least one event type")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"projects(retry=) takes a RetryPolicy, not {type(retry).__name__}")
    for event_type in event_types:
        if not isinstance(event_type, type):
            hint = " (write @projects(EventType), not @projects)" if callable(event_type) else ""
            raise TypeError(f"projects() takes event classes, not {event_type!r}{hint}")

    def mark(func: F) -> F:
        if not _is_function(func):
            raise TypeError(f"@projects decorates a plain method, not {func!r}")
        marks = getattr(func, "__orchestrix_projects__", ())
        func.__orchestrix_projects__ = (*marks, *event_types)  # type: ignore[attr-defined]
        _set_policy(func, retry)
        return func

    return mark


def _is_function(candidate: object) -> bool:
    # Not inspect.isfunction inline: that narrows the decorated method's type to FunctionType.
    return inspect.isfunction(candidate)


@attrs.frozen
class _Handler:
    method: Callable[..., Any]
    name: str
    with_envelope: bool
    policy: RetryPolicy | None = None


def _takes_envelope(cls: type, name: str, func: Callable[..., Any]) -> bool:
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in params if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD]
    keyword_only = [p for p in required if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not positional or len(required) > 2 or keyword_only:
        raise TypeError(
            f"{cls.__name__}.{name}: a projection handler takes (self, event) or (self, event, recorded)"
        )
    return len(positional) >= 2


class Projection:
    """Base class of read models fed from the global order.

    Subclasses mark handlers with :func:`projects` and set ``name`` (the checkpoint name; as a
    class attribute or the constructor argument). Events of types without a handler are
    skipped and counted. Override :meth:`reset` to allow rebuilds, and :meth:`position` with
    :meth:`commit` (and :meth:`rollback`) to store the position with the model for an
    exactly-once effect. Handlers and hooks may be plain methods or ``async def``, under either
    form of the runner.
    """

    name: str | None = None
    """The checkpoint name; keep it stable, or the projection starts again from the beginning."""

    retry_policy: ClassVar[RetryPolicy | None] = None
    """Without one, a failing handler stops the runner (:class:`ProjectionError`). With one, a
    transient failure is tried again after its backoff, and a permanent one (or the last attempt)
    parks the event as a dead letter while the projection goes on, unless the policy is
    ``ordered``. Register ``DEAD_LETTER_EVENTS`` with the store's serializer to use one."""

    _handlers: ClassVar[dict[type, _Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        by_type: dict[type, str] = {}
        for klass in reversed(cls.__mro__):
            own: dict[type, str] = {}
            for attr, member in vars(klass).items():
                marks = getattr(member, "__orchestrix_projects__", ())
                if marks:  # a re-marked override handles its own types, not the base method's
                    by_type = {t: a for t, a in by_type.items() if a != attr}
                for event_type in dict.fromkeys(marks):
                    if event_type in own:
                        raise TypeError(
                            f"{cls.__name__}: {event_type.__name__} is handled by both "
                            f"{own[event_type]}() and {attr}()"
                        )
                    own[event_type] = attr
            by_type.update(own)
        handlers = {}
        for event_type, attr in by_type.items():
            # Looked up by name, so a subclass that overrides a handler's method is the one called.
            method = getattr(cls, attr)
            handlers[event_type] = _Handler(
                method, attr, _takes_envelope(cls, attr, method), _policy_of(method)
            )
        cls._handlers = handlers

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    @classmethod
    def handled_types(cls) -> frozenset[type]:
        """The event types this projection has handlers for."""
        return frozenset(cls._handlers)

    def position(self) -> int | Awaitable[int | None] | None:
        """The position the model has durably reached, if it stores one; None to trust the checkpoint.

        Return 0 for an empty model that stores its position. Read when a runner starts, and again
        after a failure.
        """
        return None

    def commit(self, position: int) -> Awaitable[None] | None:
        """Called after the events of a page up to ``position`` were handled, before the checkpoint.

        A projection that stores its own position writes it here, atomically with its data.
        """

    def rollback(self) -> Awaitable[None] | None:
        """Called when a page failed (or was interrupted) before :meth:`commit`: drop its changes."""

    def reset(self) -> Awaitable[None] | None:
        """Empty the model (and its stored position) for a rebuild; a rebuildable projection overrides it."""
        raise NotImplementedError(f"{type(self).__name__} does not define reset(), so it cannot be rebuilt")
