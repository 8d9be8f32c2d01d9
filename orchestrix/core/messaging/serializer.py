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
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from orchestrix._speedups import loads
from orchestrix.core.errors import SchemaEvolutionError, SerializationError, UnknownEventTypeError
from orchestrix.core.messaging._codecs import (
    _LEAVES,
    _Decoder,
    _Encoder,
    _enum_codec,
    _mapping_decoder,
    _mapping_encoder,
    _optional,
    _sequence_decoder,
    _sequence_encoder,
    _upcasting,
)
from orchestrix.core.messaging._generated import _compile_decoder, _compile_encoders, _Field
from orchestrix.core.messaging._refusals import MAX_DEPTH, _Refused, _wrong
from orchestrix.core.messaging._registry import _Entries, _registered, _Tables
from orchestrix.core.messaging.evolution import (
    Upcaster,
    _compose,
    parse_stored_name,
    schema_version_of,
    stored_name,
)

__all__ = ["MAX_DEPTH", "RawEvent", "RawSerializer", "Serializer", "StructuralSerializer"]

_C = TypeVar("_C", bound=type)
"""A registered class: ``register`` returns the class it was given, so as a decorator it keeps the
class's own type (its constructor's signature stays checked) instead of widening it to ``type``."""


class Serializer:
    """Encode registered attrs classes to JSON bytes and back, by stable type name.

    Both directions check every field against its annotation (see the module's rules) and raise
    :class:`~orchestrix.core.errors.SerializationError` naming the type, the field and the value.
    """

    # The per-class codecs' makers: generated source, or its plain loops (which the tests compare).
    _forms: ClassVar[tuple[Callable[..., tuple[_Encoder, _Encoder]], Callable[..., _Decoder]]] = (
        _compile_encoders,
        _compile_decoder,
    )

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

    def _register_all(self, entries: _Entries, upcasters: Iterable[Upcaster]) -> None:
        """Check every entry and every chain against what is registered, then register all or none."""
        with self._lock:
            known = _Tables(self._by_name, self._by_type, self._aliases, self._versions, self._steps)
            tables = _registered(known, entries, upcasters)
            self._by_name, self._by_type, self._aliases = tables.by_name, tables.by_type, tables.aliases
            self._versions, self._steps = tables.versions, tables.steps
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
            fields.append(
                _Field(field.name, alias, annotation, enc, dec, nested, has_default, bool(field.kw_only))
            )
        make_encoders, make_decoder = self._forms
        encode, to_json = make_encoders(cls, fields)
        self._encoders[cls] = encode
        self._json_encoders[cls] = to_json
        self._decoders[cls] = make_decoder(cls, fields)

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

    def _register_all(self, entries: _Entries, upcasters: Iterable[Upcaster]) -> None:
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
