"""Per-class codecs generated as Python source, once per registered class.

Generated like attrs' own methods (and cattrs' unstructure functions): a loop over the fields,
a call per check and a dict handed to the JSON encoder cost more than the encoding of a small
event itself. Each generated form has its plain equivalent beside it (``_plain_encoders``,
``_plain_decoder``: the same loop written as a loop), and ``tests/core/test_generated_codecs.py``
checks that both give the same objects, the same JSON text and the same refusals.
"""

from __future__ import annotations

import keyword
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import attrs

from orchestrix._speedups import dumps, quote
from orchestrix.core.messaging._codecs import _Decoder, _Encoder
from orchestrix.core.messaging._refusals import (
    MAX_DEPTH,
    _missing,
    _Refused,
    _refused_by_class,
    _too_deep,
    _wrong,
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
    kw_only: bool = False  # the __init__ takes it by keyword only


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
    in_order = True  # the fields so far went positionally: the next required one may too
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
            in_order = False
            lines.append(f"{indent}kw[{f.alias!r}] = v{k}")
        elif in_order and not f.kw_only:
            arguments.append(f"v{k}")  # positionally: a third cheaper than by keyword
        else:
            in_order = False
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


# -- the plain forms: what the generated functions do, as loops ------------------------------


def _plain_encoders(cls: type, fields: list[_Field]) -> tuple[_Encoder, _Encoder]:
    """What :func:`_compile_encoders` generates, as a loop over ``fields``."""

    def to_dict(obj: Any, depth: int = 1) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise _too_deep()
        out = {}
        for f in fields:
            value = getattr(obj, f.key)
            try:
                out[f.key] = f.encode(value, depth + 1) if f.nested else f.encode(value)
            except _Refused as refused:
                raise refused.at("." + f.key) from None
        return out

    def to_json(obj: Any, depth: int = 1) -> str:
        return dumps(to_dict(obj, depth))

    return to_dict, to_json


def _plain_decoder(cls: type, fields: list[_Field]) -> _Decoder:
    """What :func:`_compile_decoder` generates, as a loop over ``fields``."""
    expected = f"a JSON object for {cls.__qualname__}"

    def decode(data: Any, depth: int) -> Any:
        if type(data) is not dict:
            raise _wrong(expected, data)
        if depth > MAX_DEPTH:
            raise _too_deep()
        arguments = {}
        for f in fields:
            if f.key not in data:
                if f.has_default:
                    continue
                raise _missing(f.key)
            value = data[f.key]
            try:
                arguments[f.alias] = f.decode(value, depth + 1) if f.nested else f.decode(value)
            except _Refused as refused:
                raise refused.at("." + f.key) from None
        try:
            return cls(**arguments)
        except Exception as exc:
            raise _refused_by_class(cls, exc)  # noqa: B904 - its __cause__ is set, as generated

    return decode
