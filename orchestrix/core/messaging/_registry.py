"""The serializer's registry: which class is stored under which name, alias and version.

Registering is all or nothing: :func:`_registered` checks every new entry and every upcaster
chain against copies of what is registered and returns the new tables, which the serializer
then installs in one go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from orchestrix.core.errors import SchemaEvolutionError, SerializationError
from orchestrix.core.messaging.evolution import (
    VERSION_SEPARATOR,
    Upcaster,
    _add_steps,
    _check_chain,
    parse_stored_name,
    schema_version_of,
)

_Entries = list[tuple[type, str | None, Iterable[str]]]


@attrs.frozen
class _Tables:
    """What a serializer has registered, by each of the ways it is looked up."""

    by_name: dict[str, type]
    by_type: dict[type, str]
    aliases: dict[str, type]  # old name -> class
    versions: dict[type, int]
    steps: dict[str, dict[int, Upcaster]]  # type name -> from version -> upcaster


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise SerializationError(repr(name), "a type name is a non-empty str")
    if parse_stored_name(name) != (name, 1):
        # "Price@2" would be read back as version 2 of "Price"; other "@"s are plain text.
        raise SerializationError(
            name,
            f"a type name cannot end in {VERSION_SEPARATOR!r} and a number: stored names use that "
            "for the schema version",
        )


def _step_owner(
    step: Upcaster, by_name: Mapping[str, type], by_type: Mapping[type, str], aliases: Mapping[str, type]
) -> str:
    """The registered type name an upcaster belongs to; refused for a type that is not registered."""
    target = step.target
    if isinstance(target, str):
        if target in by_name:
            return target
        if target in aliases:
            raise SchemaEvolutionError(
                target,
                f"upcaster from {step.step} names an old name of {by_type[aliases[target]]!r}: "
                "register upcasters under the type's current name",
                (step.from_version, step.from_version + 1),
            )
    elif target in by_type:
        return by_type[target]
    known = ", ".join(sorted(by_name)) or "none"
    raise SchemaEvolutionError(
        step.target_name,
        f"upcaster from {step.step} for a type that is not registered (registered: {known})",
        (step.from_version, step.from_version + 1),
    )


def _registered(known: _Tables, entries: _Entries, upcasters: Iterable[Upcaster]) -> _Tables:
    """``known`` with ``entries`` and ``upcasters`` added, every chain checked; raises, changing
    nothing, when one is refused."""
    by_name = dict(known.by_name)
    by_type = dict(known.by_type)
    aliases = dict(known.aliases)
    versions = dict(known.versions)
    for cls, name, old_names in entries:
        if not attrs.has(cls):
            raise SerializationError(
                getattr(cls, "__qualname__", repr(cls)), "only attrs classes can be registered"
            )
        type_name = name or cls.__name__
        for new in (type_name, *old_names):
            _check_name(new)
        taken = by_name.get(type_name) or aliases.get(type_name)
        if taken is not None and taken is not cls:
            raise SerializationError(
                type_name, f"name already registered for {taken.__module__}.{taken.__qualname__}"
            )
        known_name = by_type.get(cls)
        if known_name is not None and known_name != type_name:
            raise SerializationError(type_name, f"class already registered as {known_name!r}")
        by_name[type_name] = cls
        by_type[cls] = type_name
        versions[cls] = schema_version_of(cls)
        for old in old_names:
            taken = by_name.get(old) or aliases.get(old)
            if taken is not None and taken is not cls:
                raise SerializationError(
                    old, f"name already registered for {taken.__module__}.{taken.__qualname__}"
                )
            aliases[old] = cls
    steps = {type_name: dict(known_steps) for type_name, known_steps in known.steps.items()}
    named = []
    for step in upcasters:
        if not isinstance(step, Upcaster):
            raise SchemaEvolutionError(
                getattr(step, "__qualname__", repr(step)),
                "not an upcaster: decorate the function with @upcaster(type_name, from_version)",
                (),
            )
        named.append((_step_owner(step, by_name, by_type, aliases), step))
    _add_steps(steps, named)
    touched = {by_type[cls] for cls, _, _ in entries} | {type_name for type_name, _ in named}
    for type_name in sorted(touched):
        _check_chain(type_name, versions[by_name[type_name]], steps.get(type_name, {}))
    return _Tables(by_name, by_type, aliases, versions, steps)
