"""JSON serialization of events and value objects through an explicit type registry.

Each registered class is stored under a stable type name. Decoding only ever builds
registered classes, guided by their field annotations; nothing in stored data can make
orchestrix import a module or run code (no pickle, no dotted paths).

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Decimal``
(stored as a string, so it round-trips exactly), ``UUID``, ``datetime``, ``date``,
``Enum`` subclasses, registered attrs classes, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``frozenset[X]`` and ``dict[str, X]``.

:class:`RawSerializer` is the read-only exception: it builds no class at all and hands out each
stored event as a :class:`RawEvent` (type name plus parsed JSON), for tools that inspect a
store without knowing its event classes.
"""

from __future__ import annotations

import enum
import json
import keyword
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from orchestrix.core.errors import SerializationError, UnknownEventTypeError

__all__ = ["RawEvent", "RawSerializer", "Serializer"]

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]
_NATIVE = (str, int, float, bool)
# Built once: json.dumps with non-default options constructs a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder behind _JSON, made once instead of on every encode() (about half its cost for a
# small event). Circular checks are off: the dicts are built fresh from attrs fields.
_C_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def _dumps(data: dict[str, Any]) -> str:
    if _C_ENCODE is None:
        return _JSON.encode(data)
    return "".join(_C_ENCODE(data, 0))


def _dumps_value(value: Any) -> str:
    if _C_ENCODE is None:
        return _JSON.encode(value)
    return "".join(_C_ENCODE(value, 0))


_quote: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
"""A JSON string literal, not ASCII-escaped (the C function when there is one)."""

_UNJSON = json.JSONDecoder()
_SCAN = _UNJSON.scan_once


class Serializer:
    """Encode registered attrs classes to JSON bytes and back, by stable type name."""

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._by_name: dict[str, type] = {}
        self._by_type: dict[type, str] = {}
        self._encoders: dict[type, _Encoder] = {}
        self._decoders: dict[type, _Decoder] = {}
        self._json_encoders: dict[type, _Encoder] = {}
        self._encoding: dict[type, tuple[str, _Encoder]] = {}
        self._lock = threading.Lock()
        for cls in types:
            self.register(cls)

    def register(self, cls: type, name: str | None = None) -> type:
        """Register an attrs class under ``name`` (default: its class name); returns the class.

        Usable as a decorator. Registering the same class twice under one name is harmless;
        one name for two classes is refused.
        """
        if not attrs.has(cls):
            raise SerializationError(
                getattr(cls, "__qualname__", repr(cls)), "only attrs classes can be registered"
            )
        type_name = name or cls.__name__
        with self._lock:
            known = self._by_name.get(type_name)
            if known is not None and known is not cls:
                raise SerializationError(
                    type_name, f"name already registered for {known.__module__}.{known.__qualname__}"
                )
            known_name = self._by_type.get(cls)
            if known_name is not None and known_name != type_name:
                raise SerializationError(type_name, f"class already registered as {known_name!r}")
            self._by_name[type_name] = cls
            self._by_type[cls] = type_name
        return cls

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

    def class_of(self, type_name: str) -> type:
        """The registered class for a stored type name."""
        try:
            return self._by_name[type_name]
        except KeyError:
            raise UnknownEventTypeError(type_name, self._by_name) from None

    def to_dict(self, obj: object) -> tuple[str, dict[str, Any]]:
        """Encode ``obj`` to its type name and a JSON-compatible dict."""
        cls = type(obj)
        type_name = self.name_of(cls)
        return type_name, self._encoder(cls)(obj)

    def from_dict(self, type_name: str, data: dict[str, Any]) -> Any:
        """Build the registered class named ``type_name`` from a dict made by :meth:`to_dict`."""
        cls = self.class_of(type_name)
        try:
            return self._decoder(cls)(data)
        except SerializationError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, InvalidOperation) as exc:
            raise SerializationError(type_name, f"cannot decode stored data: {exc!r}") from exc

    def encode(self, obj: object) -> tuple[str, bytes]:
        """Encode ``obj`` to its type name and compact UTF-8 JSON."""
        cls = type(obj)
        known = self._encoding.get(cls)  # every append encodes: one lookup instead of to_dict's three
        if known is None:
            type_name = self.name_of(cls)
            self._encoder(cls)  # compiles both
            known = self._encoding[cls] = (type_name, self._json_encoders[cls])
        type_name, to_json = known
        try:
            # UTF-8 refuses lone surrogates ("\ud800"), which JSON would happily escape.
            return type_name, to_json(obj).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(type_name, f"cannot encode: {exc}") from exc

    def decode(self, type_name: str, data: bytes | str) -> Any:
        """Decode JSON made by :meth:`encode` into the registered class ``type_name``."""
        cls = self.class_of(type_name)
        try:
            return self._decoder(cls)(_loads(data))
        except SerializationError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, InvalidOperation) as exc:
            raise SerializationError(type_name, f"cannot decode stored data: {exc!r}") from exc

    # -- codec compilation: done once per class, then cached ------------------------------

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

    def _compile(self, cls: type) -> None:
        type_name = self._by_type[cls]
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # a forward reference that cannot be resolved
            raise SerializationError(type_name, f"cannot resolve field annotations: {exc}") from exc
        fields: list[tuple[str, _Encoder | None, _Decoder | None]] = []
        for field in attrs.fields(cls):
            if not field.init:
                continue
            annotation = hints.get(field.name, field.type)
            try:
                enc, dec = self._codec(annotation)
            except SerializationError as exc:
                raise SerializationError(type_name, f"field {field.name!r}: {exc}") from None
            fields.append((field.name, enc, dec))
        decoded = tuple((name, dec) for name, _, dec in fields)
        exact = {field.name: hints.get(field.name, field.type) for field in attrs.fields(cls)}
        encode, to_json = _compile_encoders(cls, [(name, enc, exact[name]) for name, enc, _ in fields])

        def decode(data: dict[str, Any]) -> Any:
            kwargs = {}
            for name, dec in decoded:
                if name in data:
                    value = data[name]
                    kwargs[name] = value if dec is None else dec(value)
            return cls(**kwargs)

        self._encoders[cls] = encode
        self._json_encoders[cls] = to_json
        self._decoders[cls] = decode

    def _codec(self, tp: Any) -> tuple[_Encoder | None, _Decoder | None]:
        """Encoder and decoder for one annotation; ``None`` means the value is JSON as is."""
        if tp in _NATIVE or tp is type(None):
            return _checked(tp), None
        if tp is Decimal:
            return _encode_decimal, Decimal
        if tp is uuid.UUID:
            return _encode_uuid, uuid.UUID
        if tp is datetime:
            return _encode_datetime, datetime.fromisoformat
        if tp is date:
            return _encode_date, date.fromisoformat
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_encoder(tp), tp
        if isinstance(tp, type) and attrs.has(tp):
            if tp not in self._by_type:
                raise UnknownEventTypeError(tp.__qualname__, self._by_name)
            return (lambda v: self._encoder(tp)(v)), (lambda v: self._decoder(tp)(v))
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            others = [a for a in args if a is not type(None)]
            if len(others) != 1 or len(args) != 2:
                raise SerializationError(repr(tp), "only X | None unions are supported")
            enc, dec = self._codec(others[0])
            return _optional(enc, others[0]), (None if dec is None else _optional(dec, None))
        if origin in (list, tuple, frozenset, set) and args:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise SerializationError(repr(tp), "use tuple[X, ...] for tuples")
            enc, dec = self._codec(args[0])
            return _sequence_encoder(enc), _sequence_decoder(dec, origin)
        if origin is dict and args and args[0] is str:
            enc, dec = self._codec(args[1])
            return _mapping(enc), _mapping(dec)
        raise SerializationError(repr(tp), "unsupported field type")


@attrs.frozen
class RawEvent:
    """A stored event as read without its class: its type name and its JSON object.

    ``data`` is a read-only view of the top level (nested lists and objects are the parsed
    JSON as is). Compared by value; the hash covers the type name only, as JSON objects have none.
    """

    type_name: str
    data: Mapping[str, Any] = attrs.field(converter=types.MappingProxyType, hash=False)


class RawSerializer(Serializer):
    """Decodes every stored type name to a :class:`RawEvent`; registers and encodes nothing.

    For tools (the ``orchestrix`` command) that read stores of events they have no classes
    for: whatever type names the data holds, no class is looked up, built or imported.
    Appending through a store that uses it raises SerializationError, so a read-only tool
    cannot write raw records back by mistake.
    """

    def register(self, cls: type, name: str | None = None) -> type:
        """Refuse: a raw serializer decodes every type the same way."""
        raise SerializationError(
            name or getattr(cls, "__qualname__", repr(cls)), "a RawSerializer registers no types"
        )

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
            parsed = _loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise SerializationError(type_name, f"cannot decode stored data: {exc!r}") from exc
        if type(parsed) is not dict:
            raise SerializationError(type_name, f"stored data is not a JSON object: {parsed!r:.60}")
        return RawEvent(type_name, parsed)


def _loads(data: bytes | str) -> Any:
    """``json.loads``, minus its encoding detection for what :meth:`Serializer.encode` writes.

    An object encoded by ``encode`` starts with ``{`` followed by a non-NUL byte, which
    ``json.loads`` would detect as UTF-8 too; anything else takes the general path.
    """
    if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\x00":
        text = data.decode("utf-8", "surrogatepass")
        # The scanner alone: encode() writes no whitespace around the object, so the two regex
        # matches JSONDecoder.decode spends on it (a fifth of a replay) find nothing. Anything
        # unusual goes to json.loads, which raises its usual errors.
        try:
            parsed, end = _SCAN(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return parsed
    return json.loads(data)


def _compile_encoders(cls: type, fields: list[tuple[str, _Encoder | None, Any]]) -> tuple[_Encoder, _Encoder]:
    """Two functions of an instance of ``cls``, generated for its fields: to its JSON dict, and
    straight to its compact JSON text (what :meth:`Serializer.encode` stores).

    Generated like attrs' own methods (and cattrs' unstructure functions): a loop over the
    fields, a call per check and a dict handed to the JSON encoder cost more than the encoding
    of a small event itself. A field whose value has exactly its annotated JSON type skips the
    check's call; strings and integers are written by the functions ``json`` itself uses.
    """
    names: dict[str, Any] = {"dumps": _dumps_value, "quote": _quote, "int_text": int.__repr__}
    lines = []
    keys = []
    texts = []
    for k, (name, enc, annotation) in enumerate(fields):
        simple = name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")
        lines.append(f"    v{k} = obj.{name}" if simple else f"    v{k} = getattr(obj, {name!r})")
        if enc is not None:
            names[f"c{k}"] = enc
            if annotation in _NATIVE:
                names[f"t{k}"] = annotation
                lines.append(f"    if type(v{k}) is not t{k}:")
                lines.append(f"        v{k} = c{k}(v{k})")
            else:
                lines.append(f"    v{k} = c{k}(v{k})")
        keys.append(f"{name!r}: v{k}")
        write = {str: "quote", int: "int_text"}.get(annotation, "dumps")
        texts.append(f"{(',' if k else '{') + _quote(name) + ':'!r} + {write}(v{k})")
    fetch = "\n".join(lines) + "\n"
    source = (
        f"def to_dict(obj):\n{fetch}    return {{{', '.join(keys)}}}\n"
        f"def to_json(obj):\n{fetch}    return {' + '.join(texts) if texts else repr('{')} + '}}'\n"
    )
    exec(compile(source, f"<orchestrix encoders for {cls.__qualname__}>", "exec"), names)
    return names["to_dict"], names["to_json"]


def _checked(tp: type) -> _Encoder | None:
    """A type check for JSON-native fields, so a wrong value fails on write, not on read."""
    if tp is type(None):
        return None
    if tp is float:
        accepted: tuple[type, ...] = (float, int)
    else:
        accepted = (tp,)

    def check(value: Any) -> Any:
        if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
            raise SerializationError(tp.__name__, f"expected {tp.__name__}, got {value!r}")
        return value

    return check


def _encode_decimal(value: Any) -> str:
    if type(value) is not Decimal:
        raise SerializationError("Decimal", f"expected Decimal, got {type(value).__name__} {value!r}")
    if not value.is_finite():
        raise SerializationError("Decimal", f"non-finite value {value} cannot be stored")
    return str(value)


def _encode_uuid(value: Any) -> str:
    if not isinstance(value, uuid.UUID):
        raise SerializationError("UUID", f"expected UUID, got {value!r}")
    return str(value)


def _encode_datetime(value: Any) -> str:
    if not isinstance(value, datetime):
        raise SerializationError("datetime", f"expected datetime, got {value!r}")
    return value.isoformat()


def _encode_date(value: Any) -> str:
    if not isinstance(value, date):
        raise SerializationError("date", f"expected date, got {value!r}")
    return value.isoformat()


def _enum_encoder(tp: type[enum.Enum]) -> _Encoder:
    def encode(value: Any) -> Any:
        if not isinstance(value, tp):
            raise SerializationError(tp.__name__, f"expected {tp.__name__}, got {value!r}")
        return value.value

    return encode


def _optional(inner: _Encoder | None, tp: Any) -> _Encoder:
    if inner is None:
        return lambda v: v
    return lambda v: None if v is None else inner(v)


def _sequence_encoder(inner: _Encoder | None) -> _Encoder:
    if inner is None:
        return list
    return lambda v: [inner(x) for x in v]


def _sequence_decoder(inner: _Decoder | None, origin: type) -> _Decoder:
    if inner is None:
        return origin
    return lambda v: origin(inner(x) for x in v)


def _mapping(inner: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if inner is None:
        return dict
    return lambda v: {k: inner(x) for k, x in v.items()}
