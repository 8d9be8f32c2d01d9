"""Schema evolution: event types that change over time, read back at their newest version.

Every registered type has a *schema version*, an ``int`` from 1, declared on the class::

    @attrs.frozen
    class MoneyDeposited(Event):
        __schema_version__: ClassVar[int] = 2
        ...

A class without the attribute is at version 1. The version is the class's own: a subclass does
not inherit it (each class declares the shape of its own fields).

**Where the version is stored.** In the stored type name, after an ``@``: ``MoneyDeposited@2``.
Version 1 is stored as the bare name, which is what every record written before versions
existed holds, so old data reads as version 1 and a type that never changes never looks any
different. No store changes its layout, every store gets versions the same way, and a reader
finds the version before it parses the JSON, so an event at its newest version is decoded
exactly as before (no lookup inside the payload, no extra work when nothing was upcast).
A registered name may therefore not contain ``@``.

**Upcasters** are pure functions from the stored JSON object at version N to the object at
N + 1, made with :func:`upcaster` and given to the serializer with the types
(``Serializer(types, upcasters=[...])`` or ``register(cls, upcasters=[...])``). On every read
path of every store -- everything decodes through :meth:`Serializer.decode` -- a record stored
at version N goes through the steps N → N + 1 → … → newest and only then is checked field by
field and built, as any record is. Stored data is never rewritten by a read; writers always
write the newest version.

**Checked when the serializer is built.** Each call that adds types or upcasters (the
constructor, :meth:`Serializer.register`) checks every chain it touches before it registers
anything, and raises :class:`~orchestrix.core.errors.SchemaEvolutionError` naming the type and
the versions for: a chain with a gap (version 3 with no step from 1 to 2), an upcaster for a
type that is not registered, two upcasters for one step, or a step beyond the type's version.
That is why there is no ``serializer.upcaster(...)`` decorator that adds one step at a time:
between two such calls a chain always has a gap, so it could only be checked at the first read.

**Renamed types**: the stored name becomes an alias of the new class (``aliases=``), sharing its
version numbering: ``TransferSettled@1`` (or plain ``TransferSettled``) is version 1 of the
class now registered as ``TransferHoldReleased``. Upcasters are registered under the new name.

**An event that becomes several, or none**, is not an upcaster: every read path keeps one
stored record as one event, because a stream's versions must stay 0, 1, 2, … with no gaps
(an aggregate's version is the number of its events, and the next append's expected version
is checked against it), and a global position names exactly one event (checkpoints resume
after it). Upcast such a record into one event that carries what it became (an event whose
apply handler applies both parts; a no-op event whose handler does nothing), or change the
store itself with a copy-and-transform migration into a new store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from orchestrix.core.errors import SchemaEvolutionError

__all__ = [
    "VERSION_SEPARATOR",
    "UpcastFunction",
    "Upcaster",
    "parse_stored_name",
    "schema_version_of",
    "stored_name",
    "upcaster",
]

VERSION_SEPARATOR = "@"
"""Separates a type name from its schema version in a stored type name: ``MoneyDeposited@2``."""

UpcastFunction = Callable[[dict[str, Any]], dict[str, Any]]
"""What an upcaster is: the stored JSON object at one version to the object at the next."""


@attrs.frozen
class Upcaster:
    """One step of a type's history: the stored JSON object at ``from_version`` to the next.

    ``target`` is the type's registered name, or its class. Callable like its function.
    """

    target: str | type
    from_version: int
    function: UpcastFunction

    @property
    def target_name(self) -> str:
        """The type name this step was declared for (a class's own name for a class)."""
        return self.target if isinstance(self.target, str) else self.target.__name__

    @property
    def step(self) -> str:
        """``"version N to N+1"``, for messages."""
        return f"version {self.from_version} to {self.from_version + 1}"

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return self.function(data)


def upcaster(target: str | type, from_version: int) -> Callable[[UpcastFunction], Upcaster]:
    """Decorate a pure function from ``target``'s stored object at ``from_version`` to the next.

    The function takes the JSON object (a dict of JSON values) and returns a new one; it must
    not modify its argument. Pass the result to the serializer with the types it evolves.
    """
    if type(from_version) is not int or from_version < 1:
        raise SchemaEvolutionError(
            target if isinstance(target, str) else getattr(target, "__name__", repr(target)),
            f"an upcaster starts at a version of 1 or more, not {from_version!r}",
            (),
        )

    def make(function: UpcastFunction) -> Upcaster:
        return Upcaster(target, from_version, function)

    return make


def schema_version_of(cls: type) -> int:
    """The schema version ``cls`` declares with ``__schema_version__`` (its own, not inherited), or 1."""
    version = vars(cls).get("__schema_version__", 1)
    if type(version) is not int or version < 1:
        raise SchemaEvolutionError(
            cls.__qualname__, f"__schema_version__ must be an int of 1 or more, not {version!r}", ()
        )
    return version


def stored_name(type_name: str, version: int) -> str:
    """The type name a record of ``type_name`` at ``version`` is stored under."""
    return type_name if version == 1 else f"{type_name}{VERSION_SEPARATOR}{version}"


def parse_stored_name(name: str) -> tuple[str, int]:
    """Split a stored type name into the type name and the schema version (1 when there is none).

    Only a canonical version counts (``@2``, not ``@02`` or ``@0``): anything else after an ``@``
    is part of a name no serializer registers, and is refused as an unknown type.
    """
    base, separator, suffix = name.rpartition(VERSION_SEPARATOR)
    if separator and suffix.isascii() and suffix.isdigit() and suffix[0] != "0":
        return base, int(suffix)
    return name, 1


def _check_chain(type_name: str, version: int, steps: Mapping[int, Upcaster]) -> None:
    """Refuse a chain of steps that does not lead from every version 1..``version`` to ``version``."""
    beyond = sorted(n for n in steps if n >= version)
    if beyond:
        raise SchemaEvolutionError(
            type_name,
            f"upcaster from {steps[beyond[0]].step}, but the type is at version {version} "
            "(declare __schema_version__ on the class)",
            (beyond[0], beyond[0] + 1),
        )
    for n in range(1, version):
        if n not in steps:
            raise SchemaEvolutionError(
                type_name,
                f"the type is at version {version} but no upcaster goes from version {n} to {n + 1}: "
                f"records stored at version {n} could not be read",
                (n, n + 1),
            )


def _add_steps(into: dict[str, dict[int, Upcaster]], names: Iterable[tuple[str, Upcaster]]) -> None:
    """Add each (type name, step) to ``into``, refusing two different steps from one version."""
    for type_name, step in names:
        steps = into.setdefault(type_name, {})
        known = steps.get(step.from_version)
        if known is not None and known != step:
            raise SchemaEvolutionError(
                type_name,
                f"two upcasters from {step.step}: {_function_name(known)} and {_function_name(step)}",
                (step.from_version, step.from_version + 1),
            )
        steps[step.from_version] = step


def _compose(type_name: str, first: int, version: int, steps: Mapping[int, Upcaster]) -> UpcastFunction:
    """The steps from ``first`` to ``version`` as one function; an upcaster's failure names its step.

    Raises ``ValueError`` subclasses only through :class:`_UpcastFailed`, which the serializer
    turns into a SerializationError for the stored record.
    """
    chain = [steps[n] for n in range(first, version)]

    def upcast(data: dict[str, Any]) -> dict[str, Any]:
        for step in chain:
            try:
                data = step.function(data)
            except Exception as exc:
                raise _UpcastFailed(
                    f"upcaster from {step.step} ({_function_name(step)}) raised {exc!r}"
                ) from exc
            if type(data) is not dict:
                raise _UpcastFailed(
                    f"upcaster from {step.step} ({_function_name(step)}) returned "
                    f"{type(data).__name__}, not a dict"
                )
        return data

    upcast.__qualname__ = f"upcast {type_name} from version {first} to {version}"
    return upcast


class _UpcastFailed(Exception):
    """Internal: an upcaster raised or returned something else than a dict."""


def _function_name(step: Upcaster) -> str:
    function = step.function
    return getattr(function, "__qualname__", None) or repr(function)
