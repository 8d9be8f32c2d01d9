"""Stored bytes are input: decode checks every field against its annotation, as encode does.

Every case here was built into an object (or raised RecursionError) before decode checked
what it read; each now raises SerializationError naming the type, the field and the value.
"""

from __future__ import annotations

import enum
import json
import math
import typing
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix.core.errors import DomainError, SerializationError
from orchestrix.core.messaging.serializer import MAX_DEPTH, RawSerializer, Serializer


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Access(enum.Flag):
    READ = 1
    WRITE = 2


@attrs.frozen
class Money:
    amount: Decimal
    currency: str


@attrs.frozen
class Fields:
    text: str
    count: int
    ratio: float
    flag: bool
    amount: Decimal
    ref: uuid.UUID
    at: datetime
    day: date
    colour: Colour
    level: Level
    access: Access
    money: Money
    nothing: None = None
    maybe: Money | None = None
    maybe_count: int | None = None
    names: list[str] = attrs.Factory(list)
    tags: tuple[str, ...] = ()
    amounts: list[Decimal] = attrs.Factory(list)
    ids: frozenset[uuid.UUID] = frozenset()
    levels: set[Level] = attrs.Factory(set)
    by_name: dict[str, Money] = attrs.Factory(dict)
    counts: dict[str, int] = attrs.Factory(dict)
    grid: list[list[int]] = attrs.Factory(list)


@attrs.frozen
class Node:
    label: str
    child: Node | None = None


@attrs.frozen
class Tree:
    children: list[Tree] = attrs.Factory(list)


def serializer() -> Serializer:
    return Serializer(types=[Fields, Money, Node, Tree])


def valid() -> dict[str, Any]:
    """A stored Fields as encode writes it."""
    return {
        "text": "hello",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "amount": "12.50",
        "ref": "12345678-1234-5678-1234-567812345678",
        "at": "2026-11-25T12:30:01+00:00",
        "day": "2026-02-28",
        "colour": "red",
        "level": 2,
        "access": 3,
        "money": {"amount": "0.10", "currency": "EUR"},
        "nothing": None,
        "maybe": None,
        "maybe_count": None,
        "names": ["a"],
        "tags": ["x", "y"],
        "amounts": ["1.00"],
        "ids": ["12345678-1234-5678-1234-567812345678"],
        "levels": [1],
        "by_name": {"k": {"amount": "3", "currency": "USD"}},
        "counts": {"a": 1},
        "grid": [[1, 2], []],
    }


def decode(data: dict[str, Any] | str) -> Any:
    text = data if isinstance(data, str) else json.dumps(data)
    return serializer().decode("Fields", text.encode())


def test_the_stored_form_of_every_supported_type_decodes() -> None:
    fields = decode(valid())
    assert fields.amount == Decimal("12.50") and fields.access == Access.READ | Access.WRITE
    assert fields.tags == ("x", "y") and fields.levels == {Level.LOW} and fields.grid == [[1, 2], []]
    assert serializer().decode(*serializer().encode(fields)) == fields


# (field, stored value, what the message must show of the value). Each was decoded unchecked
# before: a Decimal NaN, an inexact Decimal, an int where text belongs, text where an int belongs,
# an infinite int or float, ...
WRONG = [
    ("amount", "NaN", "'NaN'"),
    ("amount", "-Infinity", "'-Infinity'"),
    ("amount", "Infinity", "'Infinity'"),
    ("amount", "sNaN", "'sNaN'"),
    ("amount", 0.1, "0.1"),
    ("amount", 5, "5"),
    ("amount", "one", "'one'"),
    ("text", 5, "5"),
    ("text", None, "None"),
    ("text", ["a"], "['a']"),
    ("text", "half a pair \ud800", "'half a pair \\ud800'"),
    ("count", "5", "'5'"),
    ("count", 1e999, "inf"),
    ("count", 5.0, "5.0"),
    ("count", True, "True"),
    ("ratio", float("nan"), "nan"),
    ("ratio", 1e999, "inf"),
    ("ratio", float("-inf"), "-inf"),
    ("ratio", "0.5", "'0.5'"),
    ("ratio", False, "False"),
    ("flag", 1, "1"),
    ("flag", "true", "'true'"),
    ("ref", 5, "5"),
    ("ref", "not-a-uuid", "'not-a-uuid'"),
    ("at", 1700000000, "1700000000"),
    ("at", "yesterday", "'yesterday'"),
    ("day", "2026-02-30", "'2026-02-30'"),
    ("colour", "green", "'green'"),
    ("colour", ["red"], "['red']"),
    ("level", True, "True"),  # True == 1 in Python, but true is not the stored 1
    ("level", 1.0, "1.0"),
    ("level", "1", "'1'"),
    ("access", "3", "'3'"),
    ("money", [], "[]"),
    ("money", "EUR", "'EUR'"),
    ("nothing", 0, "0"),
    ("maybe", 5, "5"),
    ("maybe_count", "5", "'5'"),
    ("names", "abc", "'abc'"),  # list("abc") was ['a', 'b', 'c']
    ("names", {"a": 1}, "{'a': 1}"),
    ("tags", "xy", "'xy'"),
    ("counts", [["a", 1]], "[['a', 1]]"),  # dict([["a", 1]]) was {'a': 1}
]


@pytest.mark.parametrize(("field", "stored", "shown"), WRONG)
def test_a_stored_value_that_does_not_fit_its_annotation_is_refused(
    field: str, stored: Any, shown: str
) -> None:
    data = valid() | {field: stored}
    with pytest.raises(SerializationError) as raised:
        decode(data)
    message = str(raised.value)
    assert raised.value.type_name == "Fields"
    assert message.startswith(f"Fields: field '{field}'"), message
    assert shown in message, message


# Items inside containers and nested objects: the message gives the path down to the value.
NESTED = [
    ("money", {"amount": "NaN", "currency": "EUR"}, "money.amount", "'NaN'"),
    ("money", {"amount": "1", "currency": 5}, "money.currency", "5"),
    ("maybe", {"amount": 0.1, "currency": "EUR"}, "maybe.amount", "0.1"),
    ("names", ["a", 5], "names[1]", "5"),
    ("amounts", ["1", "2", "Infinity"], "amounts[2]", "'Infinity'"),
    ("ids", ["12345678-1234-5678-1234-567812345678", "x"], "ids[1]", "'x'"),
    ("levels", [3], "levels[0]", "3"),
    ("by_name", {"k": {"amount": 1e999, "currency": "EUR"}}, "by_name['k'].amount", "inf"),
    ("counts", {"a": "1"}, "counts['a']", "'1'"),
    ("grid", [[1], [2, "3"]], "grid[1][1]", "'3'"),
    ("grid", [1], "grid[0]", "1"),
]


@pytest.mark.parametrize(("field", "stored", "path", "shown"), NESTED)
def test_a_wrong_value_deep_inside_is_refused_with_its_path(
    field: str, stored: Any, path: str, shown: str
) -> None:
    with pytest.raises(SerializationError) as raised:
        decode(valid() | {field: stored})
    message = str(raised.value)
    assert message.startswith(f"Fields: field {path!r}"), message
    assert shown in message, message


def test_the_json_literals_nan_and_infinity_are_refused_for_numbers() -> None:
    base = json.dumps(valid())
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400"):
        with pytest.raises(SerializationError, match="field 'ratio'"):
            decode(base.replace('"ratio": 0.5', f'"ratio": {literal}'))
        with pytest.raises(SerializationError, match="field 'count'"):
            decode(base.replace('"count": 3', f'"count": {literal}'))


def test_a_missing_field_without_a_default_is_refused_and_named() -> None:
    data = valid()
    del data["money"]
    with pytest.raises(SerializationError, match="Fields: field 'money': missing"):
        decode(data)


def test_missing_fields_with_defaults_take_them_and_unknown_keys_are_ignored() -> None:
    data = {k: v for k, v in valid().items() if k not in ("maybe", "names", "grid")} | {"gone": [1]}
    fields = decode(data)
    assert fields.maybe is None and fields.names == [] and fields.grid == []


@pytest.mark.parametrize("stored", ["[]", "5", '"text"', "null", "[1, 2]"])
def test_stored_data_that_is_no_json_object_is_refused(stored: str) -> None:
    with pytest.raises(SerializationError, match="Fields: expected a JSON object"):
        decode(stored)


def test_what_the_class_itself_refuses_is_a_serialization_error() -> None:
    class Negative(DomainError):
        pass

    def positive(instance: Any, attribute: Any, value: int) -> None:
        if value < 0:
            raise Negative(f"{value} < 0")

    @attrs.frozen
    class Count:
        n: int = attrs.field(validator=positive)

    with pytest.raises(SerializationError, match="Count refused the stored values") as raised:
        Serializer(types=[Count]).decode("Count", b'{"n": -1}')
    assert isinstance(raised.value.__cause__, Negative)


def test_a_private_attrs_field_round_trips() -> None:
    @attrs.frozen
    class Secret:
        _code: str
        _pin: int = 0

    serializer = Serializer(types=[Secret])
    assert serializer.encode(Secret("x", 4))[1] == b'{"_code":"x","_pin":4}'
    assert serializer.decode(*serializer.encode(Secret("x", 4))) == Secret("x", 4)


def test_from_dict_checks_like_decode() -> None:
    with pytest.raises(SerializationError, match="field 'amount'"):
        serializer().from_dict("Money", {"amount": "NaN", "currency": "EUR"})


# -- encode: the same rules, where it was laxer --------------------------------------------------


def test_a_dict_with_keys_that_are_not_text_is_refused_when_written() -> None:
    @attrs.frozen
    class Lookup:
        names: dict[str, str]

    serializer = Serializer(types=[Lookup])
    refused = r"Lookup: field 'names': dict keys must be str, got key int 1"
    with pytest.raises(SerializationError, match=refused):
        serializer.encode(Lookup({1: "a"}))  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="dict keys must be str"):
        serializer.to_dict(Lookup({("a",): "a"}))  # type: ignore[dict-item]


ENCODE_WRONG = [
    ("names", ("a",), "expected list"),  # a tuple reads back as a list, which is not equal to it
    ("tags", ["x"], "expected tuple"),
    ("names", "abc", "expected list"),
    ("counts", [("a", 1)], "expected dict"),
    ("day", datetime(2026, 1, 1, tzinfo=UTC), "expected date"),  # would not read back as a date
    ("nothing", 0, "expected None"),
    ("ratio", float("inf"), "non-finite float"),
    ("text", "half a pair \ud800", "text with a lone surrogate"),
    ("counts", {"a\udc00": 1}, "key with a lone surrogate"),
    ("colour", "red", "expected Colour"),
    ("money", ("1", "EUR"), "expected Money"),
]


@pytest.mark.parametrize(("field", "value", "reason"), ENCODE_WRONG)
def test_encode_refuses_what_would_not_read_back_the_same(field: str, value: Any, reason: str) -> None:
    obj = attrs.evolve(decode(valid()), **{field: value})
    with pytest.raises(SerializationError, match=f"Fields: field '{field}': {reason}"):
        serializer().encode(obj)
    with pytest.raises(SerializationError, match=f"Fields: field '{field}': {reason}"):
        serializer().to_dict(obj)


def test_a_subclass_of_a_nested_class_is_refused_as_it_would_lose_its_fields() -> None:
    @attrs.frozen
    class TaggedMoney(Money):
        tag: str = "x"

    obj = attrs.evolve(decode(valid()), money=TaggedMoney(Decimal(1), "EUR"))
    with pytest.raises(SerializationError, match="field 'money': expected Money"):
        serializer().encode(obj)


class Pair(enum.Enum):
    A = (1, 2)  # would be written as [1, 2], which no member has


@attrs.frozen
class Holder:
    pair: Pair


def test_an_enum_whose_values_json_cannot_hold_is_refused() -> None:
    with pytest.raises(SerializationError, match="enum values must be"):
        Serializer(types=[Holder]).encode(Holder(Pair.A))


# -- nesting -------------------------------------------------------------------------------------


def chain(levels: int) -> Node:
    """A Node that nests ``levels`` levels deep (itself being level 1)."""
    node = Node("leaf")
    for k in range(levels - 1):
        node = Node(f"n{k}", node)
    return node


def test_values_nested_up_to_the_limit_round_trip() -> None:
    node = chain(MAX_DEPTH)
    assert serializer().decode(*serializer().encode(node)) == node
    tree = Tree()
    for _ in range(MAX_DEPTH // 2 - 1):  # a Tree and its list: two levels each
        tree = Tree([tree])
    assert serializer().decode(*serializer().encode(tree)) == tree


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 3000])
def test_an_event_nested_deeper_than_the_limit_is_refused_when_written(levels: int) -> None:
    refused = f"Node: field 'child.*': values nest deeper than {MAX_DEPTH}"
    with pytest.raises(SerializationError, match=refused):
        serializer().encode(chain(levels))
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH}"):
        serializer().to_dict(chain(levels))


def test_a_list_nested_deeper_than_the_limit_is_refused_when_written() -> None:
    tree = Tree()
    for _ in range(2000):
        tree = Tree([tree])
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH}"):
        serializer().encode(tree)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 3000])
def test_stored_data_nested_deeper_than_the_limit_is_refused_when_read(levels: int) -> None:
    stored = '{"label":"x","child":' * (levels - 1) + '{"label":"x"}' + "}" * (levels - 1)
    with pytest.raises(SerializationError, match=f"Node: .*{MAX_DEPTH}"):
        serializer().decode("Node", stored.encode())


@pytest.mark.parametrize("opening", ["[", '{"a":', '{"children":['])
def test_a_document_100k_levels_deep_is_refused_not_a_recursion_error(opening: str) -> None:
    closing = {"[": "]", '{"a":': "}", '{"children":[': "]}"}[opening]
    stored = (opening * 100_000 + "1" + closing * 100_000).encode()
    for type_name in ("Node", "Tree", "Fields"):
        with pytest.raises(SerializationError, match=type_name):
            serializer().decode(type_name, stored)
    with pytest.raises(SerializationError, match="Money"):
        RawSerializer().decode("Money", stored)


# -- any document: a correctly typed object, or SerializationError ------------------------------


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is what ``annotation`` promises, as this test (not the serializer) reads it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, type(int | None)):
        return any(conforms(value, a) for a in args)
    if origin is not None:
        if type(value) is not origin:
            return False
        if origin is dict:
            return all(type(k) is str and text_ok(k) and conforms(v, args[1]) for k, v in value.items())
        return all(conforms(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is str:
        return type(value) is str and text_ok(value)
    if annotation is float:
        return type(value) is int or (type(value) is float and math.isfinite(value))
    if annotation is Decimal:
        return type(value) is Decimal and value.is_finite()
    if annotation in (int, bool, uuid.UUID, datetime, date):
        return type(value) is annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return type(value) is annotation
    if attrs.has(annotation):
        hints = typing.get_type_hints(annotation)
        return type(value) is annotation and all(
            conforms(getattr(value, f.name), hints[f.name]) for f in attrs.fields(annotation)
        )
    raise AssertionError(f"the test does not know {annotation!r}")


def text_ok(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: json.dumps writes them as NaN and Infinity
    | st.text(max_size=8)
    | st.sampled_from(
        ["NaN", "-Infinity", "sNaN", "1.5", "1e3", "0.1", "red", "2026-02-28", "2026-02-28T01:02"]
    )
    | st.uuids().map(str)
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
)
JSON_ISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A stored Fields with up to three changes: a field dropped, replaced by a random JSON value,
    or given a random item or entry; plus random extra keys."""
    data = valid()
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(data)))
        value = data[name]
        change = draw(st.integers(0, 2))
        if change == 0:
            del data[name]
        elif change == 1 and isinstance(value, dict) and value:
            data[name] = value | {draw(st.sampled_from(sorted(value))): draw(JSON_ISH)}
        elif change == 1 and isinstance(value, list):
            data[name] = [*value, draw(JSON_ISH)]
        else:
            data[name] = draw(JSON_ISH)
    return data | draw(st.dictionaries(st.text(max_size=6), JSON_ISH, max_size=2))


@given(documents())
def test_any_json_document_decodes_into_a_correctly_typed_object_or_is_refused(data: dict[str, Any]) -> None:
    serializer_ = serializer()
    try:
        fields = serializer_.decode("Fields", json.dumps(data).encode())
    except SerializationError:
        return
    assert conforms(fields, Fields)
    assert serializer_.decode(*serializer_.encode(fields)) == fields  # what was read can be written


@given(st.one_of(JSON_ISH.map(json.dumps), st.text(max_size=40)).map(str.encode) | st.binary(max_size=40))
def test_any_bytes_decode_into_a_correctly_typed_object_or_are_refused(stored: bytes) -> None:
    for type_name, cls in (("Money", Money), ("Node", Node), ("Tree", Tree)):
        try:
            obj = serializer().decode(type_name, stored)
        except SerializationError:
            continue
        assert conforms(obj, cls)


# -- the structural serializer: the in-memory store's check ------------------------------------


@given(documents())
def test_the_structural_check_refuses_exactly_what_encode_refuses(data: dict[str, Any]) -> None:
    from orchestrix.core.messaging.serializer import StructuralSerializer

    try:
        fields = serializer().decode("Fields", json.dumps(data).encode())
    except SerializationError:
        return
    # Spoil one field at a time with a value no store can keep.
    for name, value in (("amount", 0.1), ("text", "\udc00"), ("counts", {2: 1}), ("ratio", math.nan)):
        spoiled = attrs.evolve(fields, **{name: value})
        structural = StructuralSerializer()
        with pytest.raises(SerializationError) as by_encode:
            serializer().encode(spoiled)
        with pytest.raises(SerializationError) as by_check:
            structural.check(spoiled)
        assert str(by_check.value) == str(by_encode.value)
    assert StructuralSerializer().check(fields) == "Fields"
    assert StructuralSerializer().encode(fields) == serializer().encode(fields)


def test_the_structural_serializer_decodes_nothing_and_takes_only_attrs_classes() -> None:
    from orchestrix.core.messaging.serializer import StructuralSerializer

    structural = StructuralSerializer()
    type_name, data = structural.encode(Money(Decimal("1"), "EUR"))
    with pytest.raises(SerializationError, match="decodes nothing"):
        structural.decode(type_name, data)
    with pytest.raises(SerializationError, match="not an attrs class"):
        structural.check({"amount": "1"})


# -- how the generated decoder calls the class: positionally while it can, by keyword after ----


@attrs.frozen
class _KeywordOnlyTail:
    a: int
    b: str = attrs.field(kw_only=True)
    c: int = 7


@attrs.frozen(kw_only=True)
class _AllKeywordOnly:
    first: int
    second: str


@attrs.frozen
class _PrivateAndDefaulted:
    _hidden: int
    shown: str
    extra: int = 0


@pytest.mark.parametrize(
    "value",
    [
        _KeywordOnlyTail(1, b="x"),
        _KeywordOnlyTail(1, b="x", c=2),
        _AllKeywordOnly(first=1, second="s"),
        _PrivateAndDefaulted(5, "s"),
        _PrivateAndDefaulted(5, "s", 3),
    ],
)
def test_every_way_a_class_takes_its_fields_round_trips(value: object) -> None:
    serializer = Serializer([type(value)])
    assert serializer.decode(*serializer.encode(value)) == value
