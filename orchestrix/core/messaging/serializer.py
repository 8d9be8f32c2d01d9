"""JSON serialization of events and value objects through an explicit type registry.

Each registered class is stored under a stable type name. Decoding only ever builds
registered classes, guided by their field annotations; nothing in stored data can make
orchestrix import a module or run code (no pickle, no dotted paths).

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Decimal``
(stored as a string, so it round-trips exactly), ``UUID``, ``datetime``, ``date``,
``Enum`` subclasses (whose values are JSON strings, numbers, booleans or null), registered
attrs classes, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``set[X]``, ``frozenset[X]`` and
``dict[str, X]``.

The same rules hold in both directions, field by field, so stored bytes are input like any
other: whatever wrote them (an older program, another tool, a hand edit), :meth:`Serializer.decode`
builds an object only when every field holds what its annotation says, and raises
:class:`~orchestrix.core.errors.SerializationError` naming the type, the field and the value
otherwise. The rules:

- ``str`` is a JSON string, ``int`` a JSON integer, ``bool`` ``true``/``false`` (never a
  number), ``None`` ``null``; ``float`` a finite JSON number (an ``int`` is accepted, as
  encoding accepts one); NaN and infinities are refused;
- ``Decimal`` is a JSON string holding a finite decimal (a JSON number is refused: ``0.1``
  would not be the exact amount that was meant); ``UUID``, ``datetime`` and ``date`` are
  strings in the form ``str()``/``isoformat()`` write; an enum is one of its members' values,
  of the same JSON type;
- a registered class is a JSON object, a list, tuple or set a JSON array, a dict a JSON object;
  dict keys must be ``str`` (another key would come back as a string, so it is refused when
  written);
- text must be valid Unicode (a lone surrogate cannot be stored as UTF-8);
- values nest at most :data:`MAX_DEPTH` levels deep (the event itself is level 1; each nested
  object, list, tuple, set or dict adds one). Deeper values are refused when written and when
  read, long before Python's recursion limit;
- a stored object may lack fields that have a default (the default is used) and may hold keys
  the class no longer has (they are ignored), so old data stays readable; a missing field
  without a default is refused, as is any error the class itself raises on the stored values
  (an attrs validator, say).

Event types evolve: each registered class has a schema version (its ``__schema_version__``,
default 1), written into the stored type name (``MoneyDeposited@2``; version 1 is the bare name),
and records stored at an older version go through the type's upcasters before they are checked
and built. See :mod:`orchestrix.core.messaging.evolution`.

:class:`RawSerializer` is the read-only exception: it builds no class at all and hands out each
stored event as a :class:`RawEvent` (type name plus parsed JSON), for tools that inspect a
store without knowing its event classes. :class:`StructuralSerializer` is the opposite: it
encodes any attrs class with these checks, without registration, and decodes nothing; the
in-memory store uses it to check events it keeps as objects.
"""

from __future__ import annotations

import enum
import keyword
import math
import reprlib
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs

from orchestrix._speedups import dumps, loads, quote
from orchestrix.core.errors import SchemaEvolutionError, SerializationError, UnknownEventTypeError
from orchestrix.core.messaging.evolution import (
    VERSION_SEPARATOR,
    Upcaster,
    _add_steps,
    _check_chain,
    _compose,
    _UpcastFailed,
    parse_stored_name,
    schema_version_of,
    stored_name,
)

__all__ = ["MAX_DEPTH", "RawEvent", "RawSerializer", "Serializer", "StructuralSerializer"]

MAX_DEPTH = 100
"""How many levels values may nest: the event is level 1, each object or array inside adds one."""

_C = TypeVar("_C", bound=type)
"""A registered class: ``register`` returns the class it was given, so as a decorator it keeps the
class's own type (its constructor's signature stays checked) instead of widening it to ``type``."""

_Encoder = Callable[..., Any]
_Decoder = Callable[..., Any]
_SCALARS = (str, int, float, bool, type(None))
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


# -- refusals: raised by the compiled codecs, turned into SerializationError at the top -------


class _Refused(Exception):
    """A value that does not fit its annotation, with the path from the event down to it.

    Internal: the codecs raise it, each level adds its part of the path on the way up, and the
    public methods turn it into a SerializationError naming the event type.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []  # innermost first

    def at(self, part: str) -> _Refused:
        self.parts.append(part)
        return self

    def describe(self) -> str:
        where = "".join(reversed(self.parts)).lstrip(".")
        if not where:
            return self.reason
        if len(where) > 120:  # a refusal 100 levels down names the path's ends
            where = f"{where[:60]}…{where[-50:]}"
        return f"field {where!r}: {self.reason}"


def _show(value: Any) -> str:
    """A short description of a value for an error message: its type and a bounded repr."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a user's __repr__ that fails must not hide the real error
        text = "<unprintable>"
    kind = type(value).__name__
    if value is None or type(value) is bool or text.startswith(kind):
        return text
    return f"{kind} {text}"


def _wrong(expected: str, value: Any) -> _Refused:
    return _Refused(f"expected {expected}, got {_show(value)}")


def _too_deep() -> _Refused:
    return _Refused(f"values nest deeper than {MAX_DEPTH} levels (the limit)")


def _missing(name: str) -> _Refused:
    return _Refused("missing (the field has no default)").at("." + name)


def _refused_by_class(cls: type, exc: Exception) -> _Refused:
    refused = _Refused(f"{cls.__qualname__} refused the stored values: {exc!r}")
    refused.__cause__ = exc
    return refused


def _text_ok(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (no lone surrogates); ASCII text is checked in O(1)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- leaf codecs: one value, no nesting. Encoders take a field's value and return what JSON
# holds; decoders take what JSON holds and return the value. Both raise _Refused.


def _encode_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong("str", value)
    if not _text_ok(value):
        raise _Refused(f"text with a lone surrogate cannot be stored as UTF-8: {_show(value)}")
    return value


def _decode_str(value: Any) -> str:
    if type(value) is not str:
        raise _wrong("str", value)
    if not _text_ok(value):
        raise _Refused(f"text with a lone surrogate is not valid Unicode: {_show(value)}")
    return value


def _encode_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong("int", value)
    return value


def _decode_int(value: Any) -> int:
    if type(value) is not int:
        raise _wrong("int", value)
    return value


def _encode_float(value: Any) -> float | int:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise _Refused(f"non-finite float {value!r} cannot be stored")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _wrong("float", value)


def _decode_float(value: Any) -> float | int:
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return value  # type: ignore[no-any-return]
    raise _wrong("a finite float", value)


def _check_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _wrong("bool", value)
    return value


def _check_none(value: Any) -> None:
    if value is not None:
        raise _wrong("None", value)


def _encode_decimal(value: Any) -> str:
    if type(value) is not Decimal:
        raise _wrong("Decimal", value)
    if not value.is_finite():
        raise _Refused(f"non-finite value {value} cannot be stored")
    return str(value)


def _decode_decimal(value: Any) -> Decimal:
    if type(value) is not str:
        # Even a JSON number that looks right is refused: 0.1 has no exact binary value, and
        # encode() never writes one.
        raise _wrong("a Decimal as a JSON string", value)
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise _wrong("a Decimal as a JSON string", value) from None
    if not amount.is_finite():
        raise _Refused(f"non-finite Decimal {value!r} refused")
    return amount


def _encode_uuid(value: Any) -> str:
    if not isinstance(value, uuid.UUID):
        raise _wrong("UUID", value)
    return str(value)


def _decode_uuid(value: Any) -> uuid.UUID:
    if type(value) is str:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise _wrong("a UUID string", value)


def _encode_datetime(value: Any) -> str:
    if not isinstance(value, datetime):
        raise _wrong("datetime", value)
    return value.isoformat()


def _decode_datetime(value: Any) -> datetime:
    if type(value) is str:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _wrong("an ISO 8601 datetime string", value)


def _encode_date(value: Any) -> str:
    # A datetime is a date too, but its isoformat() is no date's: it would not read back.
    if not isinstance(value, date) or isinstance(value, datetime):
        raise _wrong("date", value)
    return value.isoformat()


def _decode_date(value: Any) -> date:
    if type(value) is str:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _wrong("an ISO 8601 date string", value)


def _enum_codec(tp: type[enum.Enum]) -> tuple[_Encoder, _Decoder]:
    for member in tp:
        value = member.value
        if type(value) not in _SCALARS or (type(value) is float and not math.isfinite(value)):
            raise SerializationError(
                tp.__qualname__,
                f"member {member.name} has value {_show(value)}: enum values must be str, int, "
                "finite float, bool or None to be stored",
            )
    name = tp.__qualname__

    def encode(value: Any) -> Any:
        if not isinstance(value, tp):
            raise _wrong(name, value)
        return value.value

    if issubclass(tp, enum.Flag):
        # A flag's value may combine members; the class decides which integers it accepts.
        def decode(value: Any) -> Any:
            if type(value) is int:
                try:
                    return tp(value)
                except ValueError:
                    pass
            raise _wrong(f"a value of {name}", value)

        return encode, decode

    # Keyed by JSON type too: true is not 1, and 1.0 is not 1, though Python compares them equal.
    members = {(type(m.value), m.value): m for m in tp.__members__.values()}

    def decode_member(value: Any) -> Any:
        if type(value) in _SCALARS:
            member = members.get((type(value), value))
            if member is not None:
                return member
        raise _wrong(f"a value of {name}, one of {_REPR.repr([v for _, v in members])}", value)

    return encode, decode_member


# -- codecs that nest: they take (value, depth), depth being the level the value itself is at.


def _optional(inner: Callable[..., Any], nested: bool) -> Callable[..., Any]:
    if nested:
        return lambda value, depth: None if value is None else inner(value, depth)
    return lambda value: None if value is None else inner(value)


def _locate(items: Iterable[Any], check: Callable[[Any], Any]) -> str:
    """The index of the first item a leaf ``check`` refuses, found again once one was refused.

    Only for leaves: checking them twice costs little. Items that nest are counted as they go,
    as checking a nested item again would check its own items again, level after level.
    """
    for index, item in enumerate(items):
        try:
            check(item)
        except _Refused:
            return f"[{index}]"
    return "[?]"  # pragma: no cover - the codecs are deterministic


def _nested_items(items: Iterable[Any], inner: Callable[[Any, int], Any], depth: int) -> list[Any]:
    """``[inner(item, depth) for item in items]``, naming the index of an item that is refused."""
    out: list[Any] = []
    try:
        for item in items:
            out.append(inner(item, depth))
    except _Refused as refused:
        raise refused.at(f"[{len(out)}]") from None
    return out


def _sequence_encoder(inner: _Encoder, nested: bool, origin: type) -> _Encoder:
    # A list stays a list and a tuple a tuple: a tuple in a list field would read back as a list,
    # which is not equal to it. Sets and frozensets compare equal, so either is taken for either.
    accepted: Any = (set, frozenset) if origin in (set, frozenset) else origin
    expected = origin.__name__

    def encode(value: Any, depth: int) -> list[Any]:
        if not isinstance(value, accepted):
            raise _wrong(expected, value)
        if depth > MAX_DEPTH:
            raise _too_deep()
        if nested:
            return _nested_items(value, inner, depth + 1)
        try:
            return [inner(item) for item in value]
        except _Refused as refused:
            raise refused.at(_locate(value, inner)) from None

    return encode


def _sequence_decoder(inner: _Decoder, nested: bool, origin: type) -> _Decoder:
    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list:
            raise _wrong(f"a JSON array for a {origin.__name__}", value)
        if depth > MAX_DEPTH:
            raise _too_deep()
        if nested:
            items = _nested_items(value, inner, depth + 1)
        else:
            try:
                items = [inner(item) for item in value]
            except _Refused as refused:
                raise refused.at(_locate(value, inner)) from None
        if origin is list:
            return items
        try:
            return origin(items)
        except TypeError as exc:  # items that cannot be hashed, for a set
            raise _Refused(f"the items cannot make a {origin.__name__}: {exc}") from None

    return decode


def _mapping_encoder(inner: _Encoder, nested: bool) -> _Encoder:
    def encode(value: Any, depth: int) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _wrong("dict", value)
        if depth > MAX_DEPTH:
            raise _too_deep()
        out = {}
        for key, item in value.items():
            # JSON keys are strings: {1: "a"} would read back as {"1": "a"}, so it is refused.
            if not isinstance(key, str):
                raise _Refused(f"dict keys must be str, got key {_show(key)}")
            if not _text_ok(key):
                raise _Refused(f"key with a lone surrogate cannot be stored as UTF-8: {_show(key)}")
            try:
                out[key] = inner(item, depth + 1) if nested else inner(item)
            except _Refused as refused:
                raise refused.at(f"[{key!r}]") from None
        return out

    return encode


def _mapping_decoder(inner: _Decoder, nested: bool) -> _Decoder:
    def decode(value: Any, depth: int) -> dict[str, Any]:
        if type(value) is not dict:
            raise _wrong("a JSON object for a dict", value)
        if depth > MAX_DEPTH:
            raise _too_deep()
        out = {}
        for key, item in value.items():
            if not _text_ok(key):
                raise _Refused(f"key with a lone surrogate is not valid Unicode: {_show(key)}")
            try:
                out[key] = inner(item, depth + 1) if nested else inner(item)
            except _Refused as refused:
                raise refused.at(f"[{key!r}]") from None
        return out

    return decode


_LEAVES: dict[type, tuple[_Encoder, _Decoder]] = {
    str: (_encode_str, _decode_str),
    int: (_encode_int, _decode_int),
    float: (_encode_float, _decode_float),
    bool: (_check_bool, _check_bool),
    type(None): (_check_none, _check_none),
    Decimal: (_encode_decimal, _decode_decimal),
    uuid.UUID: (_encode_uuid, _decode_uuid),
    datetime: (_encode_datetime, _decode_datetime),
    date: (_encode_date, _decode_date),
}


def _upcasting(upcast: Callable[[dict[str, Any]], dict[str, Any]], decoder: _Decoder) -> _Decoder:
    """``decoder`` preceded by the chain of upcasters from a record's stored version."""

    def decode(data: Any, depth: int) -> Any:
        if type(data) is not dict:  # upcasters are written for JSON objects
            raise _wrong("a JSON object", data)
        try:
            data = upcast(data)
        except _UpcastFailed as failed:
            refused = _Refused(str(failed))
            refused.__cause__ = failed.__cause__
            raise refused from failed.__cause__
        return decoder(data, depth)

    return decode


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


@attrs.frozen
class _Field:
    """One init field of a class, as its compiled codecs see it."""

    key: str  # the JSON key: the attribute's name
    alias: str  # the __init__ parameter (attrs strips a private field's underscore)
    annotation: Any
    encode: _Encoder
    decode: _Decoder
    nested: bool  # the codecs take (value, depth)
    has_default: bool


class Serializer:
    """Encode registered attrs classes to JSON bytes and back, by stable type name.

    Both directions check every field against its annotation (see the module's rules) and raise
    :class:`~orchestrix.core.errors.SerializationError` naming the type, the field and the value.
    """

    def __init__(
        self,
        types: Iterable[type] = (),
        *,
        upcasters: Iterable[Upcaster] = (),
        aliases: Mapping[str, type] | None = None,
    ) -> None:
        """Register ``types``, the stored names in ``aliases`` (old name -> class) and ``upcasters``.

        Every type's chain of upcasters is checked here, before anything is read: see
        :mod:`orchestrix.core.messaging.evolution` for the errors.
        """
        self._by_name: dict[str, type] = {}
        self._by_type: dict[type, str] = {}
        self._aliases: dict[str, type] = {}
        self._versions: dict[type, int] = {}
        self._steps: dict[str, dict[int, Upcaster]] = {}
        self._encoders: dict[type, _Encoder] = {}
        self._decoders: dict[type, _Decoder] = {}
        self._json_encoders: dict[type, _Encoder] = {}
        self._encoding: dict[type, tuple[str, _Encoder]] = {}
        self._decoding: dict[str, _Decoder] = {}
        self._lock = threading.Lock()
        by_class: dict[type, list[str]] = {}
        for old, cls in (aliases or {}).items():
            by_class.setdefault(cls, []).append(old)
        types = list(types)
        for cls in by_class:
            if cls not in types:
                types.append(cls)
        self._register_all([(cls, None, by_class.get(cls, ())) for cls in types], upcasters)

    def register(
        self,
        cls: _C,
        name: str | None = None,
        *,
        aliases: Iterable[str] = (),
        upcasters: Iterable[Upcaster] = (),
    ) -> _C:
        """Register an attrs class under ``name`` (default: its class name); returns the class.

        Usable as a decorator. Registering the same class twice under one name is harmless;
        one name for two classes is refused. ``aliases`` are names the class was stored under
        before a rename; ``upcasters`` lead its stored versions to its ``__schema_version__``.
        The class's whole chain is checked now, and nothing is registered if it is refused.
        """
        self._register_all([(cls, name, tuple(aliases))], upcasters)
        return cls

    def _register_all(
        self, entries: list[tuple[type, str | None, Iterable[str]]], upcasters: Iterable[Upcaster]
    ) -> None:
        """Check every entry and every chain against what is registered, then register all or none."""
        with self._lock:
            by_name = dict(self._by_name)
            by_type = dict(self._by_type)
            aliases = dict(self._aliases)
            versions = dict(self._versions)
            for cls, name, old_names in entries:
                if not attrs.has(cls):
                    raise SerializationError(
                        getattr(cls, "__qualname__", repr(cls)), "only attrs classes can be registered"
                    )
                type_name = name or cls.__name__
                for new in (type_name, *old_names):
                    _check_name(new)
                known = by_name.get(type_name) or aliases.get(type_name)
                if known is not None and known is not cls:
                    raise SerializationError(
                        type_name, f"name already registered for {known.__module__}.{known.__qualname__}"
                    )
                known_name = by_type.get(cls)
                if known_name is not None and known_name != type_name:
                    raise SerializationError(type_name, f"class already registered as {known_name!r}")
                by_name[type_name] = cls
                by_type[cls] = type_name
                versions[cls] = schema_version_of(cls)
                for old in old_names:
                    known = by_name.get(old) or aliases.get(old)
                    if known is not None and known is not cls:
                        raise SerializationError(
                            old, f"name already registered for {known.__module__}.{known.__qualname__}"
                        )
                    aliases[old] = cls
            steps = {type_name: dict(known_steps) for type_name, known_steps in self._steps.items()}
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
            self._by_name, self._by_type, self._aliases = by_name, by_type, aliases
            self._versions, self._steps = versions, steps
            self._encoding.clear()
            self._decoding.clear()

    @property
    def type_names(self) -> tuple[str, ...]:
        """The registered type names, sorted."""
        return tuple(sorted(self._by_name))

    def name_of(self, cls: type) -> str:
        """The stable type name of a registered class."""
        try:
            return self._by_type[cls]
        except KeyError:
            raise UnknownEventTypeError(cls.__qualname__, self._by_name) from None

    def version_of(self, cls: type) -> int:
        """The schema version a registered class is written at (its ``__schema_version__``)."""
        self.name_of(cls)
        return self._versions[cls]

    def stored_name_of(self, cls: type) -> str:
        """The type name records of a registered class are written under: ``Name`` or ``Name@N``."""
        return stored_name(self.name_of(cls), self.version_of(cls))

    def class_of(self, type_name: str) -> type:
        """The registered class for a type name as stored: a registered name or an alias, with or
        without a ``@version``."""
        cls = self._by_name.get(type_name)
        if cls is None:
            base, _ = parse_stored_name(type_name)
            cls = self._by_name.get(base) or self._aliases.get(base)
            if cls is None:
                raise UnknownEventTypeError(type_name, self._by_name)
        return cls

    def to_dict(self, obj: object) -> tuple[str, dict[str, Any]]:
        """Encode ``obj`` to its stored type name (with its version) and a JSON-compatible dict."""
        cls = type(obj)
        type_name = self.stored_name_of(cls)
        try:
            return type_name, self._encoder(cls)(obj, 1)
        except _Refused as refused:
            raise SerializationError(type_name, refused.describe()) from None

    def from_dict(self, type_name: str, data: dict[str, Any]) -> Any:
        """Build the registered class named ``type_name`` from a dict made by :meth:`to_dict`.

        A dict stored at an older version goes through the type's upcasters first.
        """
        decoder = self._decoding.get(type_name) or self._decoding_of(type_name)
        try:
            return decoder(data, 1)
        except _Refused as refused:
            raise SerializationError(type_name, refused.describe()) from refused.__cause__

    def encode(self, obj: object) -> tuple[str, bytes]:
        """Encode ``obj`` to its stored type name (with its version) and compact UTF-8 JSON."""
        cls = type(obj)
        known = self._encoding.get(cls)  # every append encodes: one lookup instead of to_dict's three
        if known is None:
            type_name = self.stored_name_of(cls)
            self._encoder(cls)  # compiles both
            known = self._encoding[cls] = (type_name, self._json_encoders[cls])
        type_name, to_json = known
        try:
            # Every text was checked for lone surrogates, which UTF-8 cannot hold.
            return type_name, to_json(obj).encode()
        except _Refused as refused:
            raise SerializationError(type_name, refused.describe()) from None
        except (TypeError, ValueError) as exc:
            raise SerializationError(type_name, f"cannot encode: {exc}") from exc

    def decode(self, type_name: str, data: bytes | str) -> Any:
        """Decode JSON made by :meth:`encode` into the registered class ``type_name``.

        Data stored at an older schema version goes through the type's upcasters, then the
        result is checked field by field against the class's annotations.
        """
        decoder = self._decoding.get(type_name) or self._decoding_of(type_name)
        try:
            return decoder(loads(data), 1)
        except _Refused as refused:
            raise SerializationError(type_name, refused.describe()) from refused.__cause__
        except RecursionError:  # the JSON parser's own limit, far beyond MAX_DEPTH
            raise SerializationError(
                type_name, f"stored data nests too deeply to parse (values nest at most {MAX_DEPTH} levels)"
            ) from None
        except (TypeError, ValueError) as exc:  # not JSON, or bytes that are not UTF-8
            raise SerializationError(type_name, f"cannot decode stored data: {exc!r}") from exc

    # -- codec compilation: done once per class, then cached ------------------------------

    def _decoding_of(self, type_name: str) -> _Decoder:
        """The decoder of one stored type name, made once: the class's own decoder for its newest
        version, so reading what today's classes wrote costs what it did before versions existed."""
        cls = self.class_of(type_name)
        version = self._versions[cls]
        current = self._by_type[cls]
        stored = parse_stored_name(type_name)[1]  # a registered name holds no "@": version 1
        decoder = self._decoder(cls)
        if stored > version:
            raise SchemaEvolutionError(
                type_name,
                f"stored at version {stored}, newer than version {version} of {current} that this "
                "program knows (written by a newer program?)",
                (stored,),
            )
        if stored < version:
            decoder = _upcasting(_compose(current, stored, version, self._steps[current]), decoder)
        self._decoding[type_name] = decoder
        return decoder

    def _encoder(self, cls: type) -> _Encoder:
        encoder = self._encoders.get(cls)
        if encoder is None:
            self._compile(cls)
            encoder = self._encoders[cls]
        return encoder

    def _decoder(self, cls: type) -> _Decoder:
        decoder = self._decoders.get(cls)
        if decoder is None:
            self._compile(cls)
            decoder = self._decoders[cls]
        return decoder

    def _nested_name(self, cls: type) -> str:
        """The type name of a class found in a field's annotation; it must be registered."""
        if cls not in self._by_type:
            raise UnknownEventTypeError(cls.__qualname__, self._by_name)
        return self._by_type[cls]

    def _compile(self, cls: type) -> None:
        type_name = self._by_type[cls]
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # a forward reference that cannot be resolved
            raise SerializationError(type_name, f"cannot resolve field annotations: {exc}") from exc
        fields = []
        for field in attrs.fields(cls):
            if not field.init:
                continue
            annotation = hints.get(field.name, field.type)
            try:
                enc, dec, nested = self._codec(annotation)
            except SerializationError as exc:
                raise SerializationError(type_name, f"field {field.name!r}: {exc}") from None
            has_default = field.default is not attrs.NOTHING
            alias = field.alias or field.name
            fields.append(_Field(field.name, alias, annotation, enc, dec, nested, has_default))
        encode, to_json = _compile_encoders(cls, fields)
        self._encoders[cls] = encode
        self._json_encoders[cls] = to_json
        self._decoders[cls] = _compile_decoder(cls, fields)

    def _codec(self, tp: Any) -> tuple[_Encoder, _Decoder, bool]:
        """Encoder, decoder, and whether they nest (take a depth), for one annotation."""
        if isinstance(tp, type):
            leaf = _LEAVES.get(tp)
            if leaf is not None:
                return leaf[0], leaf[1], False
            if issubclass(tp, enum.Enum):
                return (*_enum_codec(tp), False)
            if attrs.has(tp):
                return (*self._class_codec(tp), True)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            others = [a for a in args if a is not type(None)]
            if len(others) != 1 or len(args) != 2:
                raise SerializationError(repr(tp), "only X | None unions are supported")
            enc, dec, nested = self._codec(others[0])
            return _optional(enc, nested), _optional(dec, nested), nested
        if origin in (list, tuple, frozenset, set) and args:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise SerializationError(repr(tp), "use tuple[X, ...] for tuples")
            enc, dec, nested = self._codec(args[0])
            return _sequence_encoder(enc, nested, origin), _sequence_decoder(dec, nested, origin), True
        if origin is dict and args and args[0] is str:
            enc, dec, nested = self._codec(args[1])
            return _mapping_encoder(enc, nested), _mapping_decoder(dec, nested), True
        raise SerializationError(repr(tp), "unsupported field type")

    def _class_codec(self, tp: type) -> tuple[_Encoder, _Decoder]:
        self._nested_name(tp)
        encoders, decoders = self._encoders, self._decoders
        expected = tp.__qualname__

        # Looked up on each call, not bound now: a class may nest itself, and is compiled lazily.
        def encode(value: Any, depth: int) -> dict[str, Any]:
            if type(value) is not tp:  # a subclass would lose its own fields on the way
                raise _wrong(expected, value)
            return (encoders.get(tp) or self._encoder(tp))(value, depth)  # type: ignore[no-any-return]

        def decode(value: Any, depth: int) -> Any:
            return (decoders.get(tp) or self._decoder(tp))(value, depth)

        return encode, decode


class StructuralSerializer(Serializer):
    """Encodes any attrs class with every check :class:`Serializer` makes, without registration.

    An event's type name is its class name (or the name it was registered under). It decodes
    nothing: with no registry there is no list of classes that stored data may build. The
    in-memory store uses it by default to check the events it keeps as objects, so a test on
    that store refuses what a durable store would refuse (a float for money, NaN, an object that
    is not an attrs class, a field type that cannot be stored) -- except a class you forgot to
    register: only your own serializer can know that.
    """

    def __init__(self, types: Iterable[type] = ()) -> None:
        super().__init__(types)
        self._checking: dict[type, tuple[str, _Encoder]] = {}

    def check(self, obj: object) -> str:
        """Make every check :meth:`encode` makes on ``obj`` and return its type name.

        The JSON text is not written: once every value has passed its field's check, writing it
        cannot fail, and skipping it halves the cost of a check.
        """
        cls = type(obj)
        known = self._checking.get(cls)
        if known is None:
            known = self._checking[cls] = (self.stored_name_of(cls), self._encoder(cls))
        type_name, to_dict = known
        try:
            to_dict(obj, 1)
        except _Refused as refused:
            raise SerializationError(type_name, refused.describe()) from None
        return type_name

    def name_of(self, cls: type) -> str:
        """The type name of any attrs class; anything else is refused."""
        name = self._by_type.get(cls)
        if name is None:
            if not attrs.has(cls):
                raise SerializationError(
                    getattr(cls, "__qualname__", repr(cls)),
                    "not an attrs class: events are attrs classes, or a durable store could not store them",
                )
            with self._lock:
                # Names may repeat here (two tests' classes called Happened): nothing is decoded by name.
                name = self._by_type.setdefault(cls, cls.__name__)
        return name

    def version_of(self, cls: type) -> int:
        """The schema version of any attrs class: its ``__schema_version__``, or 1."""
        self.name_of(cls)
        return self._versions.get(cls) or schema_version_of(cls)

    def _nested_name(self, cls: type) -> str:
        return self.name_of(cls)

    def class_of(self, type_name: str) -> type:
        """Refuse: a structural serializer decodes nothing."""
        raise SerializationError(type_name, "a StructuralSerializer checks encoding only and decodes nothing")


def _read_only(data: Mapping[str, Any]) -> Mapping[str, Any]:
    # A function rather than the bare class: the checkers read a converter's parameter as the
    # field's __init__ type, and MappingProxyType's is a generic protocol they cannot solve.
    return types.MappingProxyType(data)


@attrs.frozen
class RawEvent:
    """A stored event as read without its class: its type name and its JSON object.

    ``data`` is a read-only view of the top level (nested lists and objects are the parsed
    JSON as is). Compared by value; the hash covers the type name only, as JSON objects have none.
    """

    type_name: str
    data: Mapping[str, Any] = attrs.field(converter=_read_only, hash=False)


class RawSerializer(Serializer):
    """Decodes every stored type name to a :class:`RawEvent`; registers and encodes nothing.

    For tools (the ``orchestrix`` command) that read stores of events they have no classes
    for: whatever type names the data holds, no class is looked up, built or imported.
    Appending through a store that uses it raises SerializationError, so a read-only tool
    cannot write raw records back by mistake.
    """

    def register(
        self,
        cls: _C,
        name: str | None = None,
        *,
        aliases: Iterable[str] = (),
        upcasters: Iterable[Upcaster] = (),
    ) -> _C:
        """Refuse: a raw serializer decodes every type the same way."""
        raise SerializationError(
            name or str(getattr(cls, "__qualname__", repr(cls))), "a RawSerializer registers no types"
        )

    def _register_all(
        self, entries: list[tuple[type, str | None, Iterable[str]]], upcasters: Iterable[Upcaster]
    ) -> None:
        # The constructor registers through here: types or upcasters given to it are refused too.
        for cls, name, _ in entries:
            self.register(cls, name)
        for step in upcasters:
            raise SerializationError(step.target_name, "a RawSerializer registers no upcasters")

    def to_dict(self, obj: object) -> tuple[str, dict[str, Any]]:
        """Refuse: raw records are for reading only."""
        raise SerializationError(type(obj).__qualname__, "a RawSerializer cannot encode (read-only)")

    def encode(self, obj: object) -> tuple[str, bytes]:
        """Refuse: raw records are for reading only."""
        raise SerializationError(type(obj).__qualname__, "a RawSerializer cannot encode (read-only)")

    def from_dict(self, type_name: str, data: dict[str, Any]) -> RawEvent:
        """Wrap ``data`` as the RawEvent of ``type_name``."""
        return RawEvent(type_name, data)

    def decode(self, type_name: str, data: bytes | str) -> RawEvent:
        """Parse the stored JSON object into a RawEvent; damaged JSON raises SerializationError."""
        try:
            parsed = loads(data)
        except RecursionError:
            raise SerializationError(type_name, "stored data nests too deeply to parse") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise SerializationError(type_name, f"cannot decode stored data: {exc!r}") from exc
        if type(parsed) is not dict:
            raise SerializationError(type_name, f"stored data is not a JSON object: {parsed!r:.60}")
        return RawEvent(type_name, parsed)


# -- the generated per-class codecs -----------------------------------------------------------

# Checks a field's value skips when it already has exactly its JSON type (and, for text, is
# ASCII, which cannot hold a lone surrogate; isascii() is O(1)): the generated code calls the
# codec only when this test is true, which is what a value of the wrong type makes it.
_GUARDS: dict[Any, str] = {
    str: "type({v}) is not str or not {v}.isascii()",
    int: "type({v}) is not int",
    bool: "type({v}) is not bool",
    type(None): "{v} is not None",
}
_TEXT_RESULTS = (str, Decimal, uuid.UUID, datetime, date)
"""Annotations whose encoder returns a str, which the JSON text writes with ``quote``."""


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text) and not text.startswith("__")


def _call(k: int, f: _Field, prefix: str) -> str:
    return f"{prefix}{k}(v{k}, depth + 1)" if f.nested else f"{prefix}{k}(v{k})"


def _compile_encoders(cls: type, fields: list[_Field]) -> tuple[_Encoder, _Encoder]:
    """Two functions of an instance of ``cls`` and its depth, generated for its fields: to its
    JSON dict, and straight to its compact JSON text (what :meth:`Serializer.encode` stores).

    Generated like attrs' own methods (and cattrs' unstructure functions): a loop over the
    fields, a call per check and a dict handed to the JSON encoder cost more than the encoding
    of a small event itself. A field whose value has exactly its annotated JSON type skips the
    check's call; strings and integers are written by the functions ``json`` itself uses.
    """
    names: dict[str, Any] = {
        "dumps": dumps,
        "quote": quote,
        "int_text": int.__repr__,
        "Refused": _Refused,
        "too_deep": _too_deep,
        "MAX_DEPTH": MAX_DEPTH,
    }
    lines = ["    if depth > MAX_DEPTH:", "        raise too_deep()"]
    keys = []
    texts = []
    for k, f in enumerate(fields):
        lines.append(f"    v{k} = obj.{f.key}" if _is_name(f.key) else f"    v{k} = getattr(obj, {f.key!r})")
        names[f"c{k}"] = f.encode
        guard = _GUARDS.get(f.annotation)
        indent = "    "
        if guard is not None:
            lines.append(f"    if {guard.format(v=f'v{k}')}:")
            indent = "        "
        lines += [
            f"{indent}try:",
            f"{indent}    v{k} = {_call(k, f, 'c')}",
            f"{indent}except Refused as refused:",
            f"{indent}    raise refused.at({'.' + f.key!r}) from None",
        ]
        keys.append(f"{f.key!r}: v{k}")
        if f.annotation in _TEXT_RESULTS:
            write = "quote"
        elif f.annotation is int:
            write = "int_text"
        else:
            write = "dumps"
        texts.append(f"{(',' if k else '{') + quote(f.key) + ':'!r} + {write}(v{k})")
    fetch = "\n".join(lines) + "\n"
    source = (
        f"def to_dict(obj, depth=1):\n{fetch}    return {{{', '.join(keys)}}}\n"
        f"def to_json(obj, depth=1):\n{fetch}    return {' + '.join(texts) if texts else repr('{')} + '}}'\n"
    )
    exec(compile(source, f"<orchestrix encoders for {cls.__qualname__}>", "exec"), names)
    return names["to_dict"], names["to_json"]


def _compile_decoder(cls: type, fields: list[_Field]) -> _Decoder:
    """A function of a parsed JSON object and its depth that checks every field of ``cls`` against
    its annotation and builds the instance; generated like the encoders, for the same reason.

    Fields without a default must be present; fields with one may be missing; other keys are
    ignored. Whatever the class raises on the checked values (a validator) is a refusal too.
    """
    names: dict[str, Any] = {
        "cls": cls,
        "Refused": _Refused,
        "wrong": _wrong,
        "too_deep": _too_deep,
        "missing": _missing,
        "refused_by_class": _refused_by_class,
        "MAX_DEPTH": MAX_DEPTH,
        "expected": f"a JSON object for {cls.__qualname__}",
    }
    lines = [
        "def decode(data, depth):",
        "    if type(data) is not dict:",
        "        raise wrong(expected, data)",
        "    if depth > MAX_DEPTH:",
        "        raise too_deep()",
    ]
    optional = any(f.has_default or not _is_name(f.alias) for f in fields)
    if optional:
        lines.append("    kw = {}")
    arguments = []
    for k, f in enumerate(fields):
        names[f"d{k}"] = f.decode
        if f.has_default:
            lines.append(f"    if {f.key!r} in data:")
            indent = "        "
            lines.append(f"{indent}v{k} = data[{f.key!r}]")
        else:
            indent = "    "
            lines += [
                "    try:",
                f"        v{k} = data[{f.key!r}]",
                "    except KeyError:",
                f"        raise missing({f.key!r}) from None",
            ]
        guard = _GUARDS.get(f.annotation)
        check_indent = indent
        if guard is not None:
            lines.append(f"{indent}if {guard.format(v=f'v{k}')}:")
            check_indent = indent + "    "
        lines += [
            f"{check_indent}try:",
            f"{check_indent}    v{k} = {_call(k, f, 'd')}",
            f"{check_indent}except Refused as refused:",
            f"{check_indent}    raise refused.at({'.' + f.key!r}) from None",
        ]
        if f.has_default or not _is_name(f.alias):
            lines.append(f"{indent}kw[{f.alias!r}] = v{k}")
        else:
            arguments.append(f"{f.alias}=v{k}")
    if optional:
        arguments.append("**kw")
    lines += [
        "    try:",
        f"        return cls({', '.join(arguments)})",
        "    except Exception as exc:",
        "        raise refused_by_class(cls, exc)",
    ]
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<orchestrix decoder for {cls.__qualname__}>", "exec"), names)
    return names["decode"]  # type: ignore[no-any-return]
