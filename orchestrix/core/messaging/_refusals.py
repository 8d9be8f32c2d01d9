"""Refusals: a value that does not fit its annotation, and the messages that say so.

The codecs raise :class:`_Refused`, each level adds its part of the path on the way up, and the
serializer's public methods turn it into a SerializationError naming the event type.
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_DEPTH = 100
"""How many levels values may nest: the event is level 1, each object or array inside adds one."""

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


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
