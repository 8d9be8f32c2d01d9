"""Per-type codecs: the check of one annotation, in each direction.

Encoders take a field's value and return what JSON holds; decoders take what JSON holds and
return the value. Both raise :class:`~orchestrix.core.messaging._refusals._Refused`. The
serializer puts them together per class (see ``_generated``).
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from orchestrix.core.errors import SerializationError
from orchestrix.core.messaging._refusals import (
    _REPR,
    MAX_DEPTH,
    _Refused,
    _show,
    _text_ok,
    _too_deep,
    _wrong,
)
from orchestrix.core.messaging.evolution import _UpcastFailed

_Encoder = Callable[..., Any]
_Decoder = Callable[..., Any]
_SCALARS = (str, int, float, bool, type(None))


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
