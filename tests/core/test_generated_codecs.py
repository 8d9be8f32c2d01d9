"""The generated per-class codecs against their plain forms: the same objects, the same JSON text
and the same refusals, for every kind of annotation, on good values and on bad ones."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import attrs
import pytest

from orchestrix.core.errors import SerializationError
from orchestrix.core.messaging._generated import _plain_decoder, _plain_encoders
from orchestrix.core.messaging.serializer import Serializer


class PlainSerializer(Serializer):
    _forms: ClassVar[Any] = (_plain_encoders, _plain_decoder)


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


@attrs.frozen
class Inner:
    label: str
    amount: Decimal


def _positive(instance: Any, attribute: Any, value: int) -> None:
    if value < 0:
        raise ValueError("negative")


@attrs.frozen
class Everything:
    text: str
    count: int = attrs.field(validator=_positive)
    ratio: float
    flag: bool
    nothing: None
    money: Decimal
    ident: uuid.UUID
    at: datetime
    day: date
    colour: Colour
    inner: Inner
    maybe: Inner | None
    items: list[int]
    pair: tuple[str, ...]
    tags: frozenset[str]
    by_name: dict[str, Inner]
    _private: int = 0
    later: str = attrs.field(default="d", kw_only=True)


def _good(**changes: Any) -> Everything:
    values: dict[str, Any] = dict(
        text="héllo",
        count=3,
        ratio=1.5,
        flag=True,
        nothing=None,
        money=Decimal("10.25"),
        ident=uuid.UUID(int=7),
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        day=date(2026, 1, 2),
        colour=Colour.BLUE,
        inner=Inner("a", Decimal("1")),
        maybe=None,
        items=[1, 2],
        pair=("x",),
        tags=frozenset({"t"}),
        by_name={"k": Inner("b", Decimal("2"))},
    )
    values.update(changes)
    return Everything(**values)


GOOD = [
    _good(),
    _good(maybe=Inner("m", Decimal("-3.5")), private=4, later="z"),
    _good(ratio=2, items=[], by_name={}, text=""),
]

BAD_OBJECTS = [
    _good(text=5),
    _good(ratio=float("nan")),
    _good(money=0.1),
    _good(items=[1, "2"]),
    _good(by_name={"k": "not inner"}),
    _good(by_name={1: Inner("b", Decimal("2"))}),
    _good(text="\udc80"),
    _good(colour="red"),
    _good(pair=["x"]),
]


def _both() -> tuple[Serializer, Serializer]:
    return Serializer([Everything, Inner]), PlainSerializer([Everything, Inner])


def _outcome(action: Any) -> Any:
    try:
        return ("ok", action())
    except SerializationError as exc:
        return ("refused", str(exc), type(exc.__cause__))


@pytest.mark.parametrize("value", GOOD + BAD_OBJECTS)
def test_encoding_gives_the_same_text_or_the_same_refusal(value: Everything) -> None:
    fast, plain = _both()
    outcome = _outcome(lambda: fast.encode(value))
    assert outcome == _outcome(lambda: plain.encode(value))
    assert outcome[0] == ("ok" if value in GOOD else "refused")
    assert _outcome(lambda: fast.to_dict(value)) == _outcome(lambda: plain.to_dict(value))


def _stored(**changes: Any) -> bytes:
    data = json.loads(Serializer([Everything, Inner]).encode(GOOD[1])[1])
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    # A lone surrogate, as JSON may spell it (json.dumps would not write one):
    return json.dumps(data).encode().replace(b'"SURROGATE"', b'"\\udc80"')


STORED = [
    _stored(),
    _stored(_private=KeyError, later=KeyError),
    _stored(unknown="ignored"),
    _stored(text=KeyError),
    _stored(count=-1),
    _stored(count=True),
    _stored(ratio="1"),
    _stored(flag=1),
    _stored(nothing=0),
    _stored(money=0.1),
    _stored(ident="nope"),
    _stored(at="2026-13-01"),
    _stored(colour="BLUE"),
    _stored(inner={"label": "x"}),
    _stored(maybe=[]),
    _stored(items=[1, 2.5]),
    _stored(tags=[1]),
    _stored(by_name={"k": {"label": 1, "amount": "1"}}),
    _stored(text="SURROGATE"),
    b"[]",
    b"not json",
]


@pytest.mark.parametrize("data", STORED)
def test_decoding_gives_the_same_object_or_the_same_refusal(data: bytes) -> None:
    fast, plain = _both()
    type_name = fast.stored_name_of(Everything)
    outcome = _outcome(lambda: fast.decode(type_name, data))
    assert outcome == _outcome(lambda: plain.decode(type_name, data))
    assert outcome[0] == ("ok" if data in STORED[:3] else "refused")
