import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix.core.errors import SerializationError, UnknownEventTypeError
from orchestrix.core.messaging import Event, Serializer


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Money:
    amount: Decimal
    currency: str


@attrs.frozen
class Everything(Event):
    text: str
    count: int
    ratio: float
    flag: bool
    amount: Decimal
    ref: uuid.UUID
    at: datetime
    day: date
    colour: Colour
    money: Money
    maybe: Money | None = None
    tags: tuple[str, ...] = ()
    amounts: list[Decimal] = attrs.Factory(list)
    by_name: dict[str, Money] = attrs.Factory(dict)
    ids: frozenset[uuid.UUID] = frozenset()


@attrs.frozen
class Small(Event):
    n: int


def full_serializer() -> Serializer:
    return Serializer(types=[Everything, Money, Small])


def sample() -> Everything:
    return Everything(
        text='ünïcode "quoted" \\ text',
        count=-3,
        ratio=0.25,
        flag=True,
        amount=Decimal("1234567890.12345678901234567890"),
        ref=uuid.uuid4(),
        at=datetime(2026, 11, 25, 12, 30, 1, 123456, tzinfo=UTC),
        day=date(2026, 2, 28),
        colour=Colour.BLUE,
        money=Money(Decimal("0.10"), "EUR"),
        maybe=None,
        tags=("a", "b"),
        amounts=[Decimal("1.00"), Decimal("-2.5")],
        by_name={"x": Money(Decimal("3"), "USD")},
        ids=frozenset({uuid.uuid4()}),
    )


def test_every_supported_field_type_round_trips_exactly() -> None:
    serializer = full_serializer()
    event = sample()
    type_name, data = serializer.encode(event)
    assert type_name == "Everything"
    decoded = serializer.decode(type_name, data)
    assert decoded == event
    assert str(decoded.amount) == "1234567890.12345678901234567890"
    assert str(decoded.money.amount) == "0.10"


def _reference_json(serializer: Serializer, obj: object) -> bytes:
    import json

    return json.dumps(serializer.to_dict(obj)[1], separators=(",", ":"), ensure_ascii=False).encode()


def test_encode_writes_exactly_the_json_of_to_dict() -> None:
    serializer = full_serializer()
    for obj in (sample(), Money(Decimal("-0"), "\u2028\x00\x1f\t\n"), Small(2**70), Small(-0)):
        assert serializer.encode(obj)[1] == _reference_json(serializer, obj)


@given(
    st.text(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
)
def test_encode_matches_to_dict_for_any_values(
    text: str, count: int, ratio: float, flag: bool, tags: list[str]
) -> None:
    serializer = full_serializer()
    obj = attrs.evolve(sample(), text=text, count=count, ratio=ratio, flag=flag, tags=tuple(tags))
    try:
        encoded = serializer.encode(obj)[1]
    except SerializationError:  # a lone surrogate: refused either way
        with pytest.raises(UnicodeEncodeError):
            _reference_json(serializer, obj)
        return
    assert encoded == _reference_json(serializer, obj)
    assert serializer.decode("Everything", encoded) == obj


def test_a_subclass_value_of_a_native_field_is_checked_and_written_like_json_does() -> None:
    class Count(int):
        pass

    class Text(str):
        pass

    @attrs.frozen
    class Pair:
        n: int
        s: str

    serializer = Serializer(types=[Pair])
    pair = Pair(Count(5), Text('a "b"'))
    assert serializer.encode(pair)[1] == b'{"n":5,"s":"a \\"b\\""}' == _reference_json(serializer, pair)
    with pytest.raises(SerializationError, match="int"):
        serializer.encode(Pair(True, "x"))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="str"):
        serializer.encode(Pair(1, 2))  # type: ignore[arg-type]


def test_decimals_are_stored_as_strings_never_floats() -> None:
    _, data = full_serializer().encode(sample())
    assert b'"amount":"1234567890.12345678901234567890"' in data


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_any_finite_decimal_round_trips(amount: Decimal) -> None:
    serializer = Serializer(types=[Money])
    decoded = serializer.decode(*serializer.encode(Money(amount, "EUR")))
    assert str(decoded.amount) == str(amount)


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN")])
def test_non_finite_decimals_are_refused(bad: Decimal) -> None:
    with pytest.raises(SerializationError, match="non-finite"):
        Serializer(types=[Money]).encode(Money(bad, "EUR"))


def test_a_float_where_a_decimal_belongs_is_refused() -> None:
    with pytest.raises(SerializationError, match="expected Decimal"):
        Serializer(types=[Money]).encode(Money(0.1, "EUR"))  # type: ignore[arg-type]


def test_wrong_native_types_are_refused_on_write() -> None:
    with pytest.raises(SerializationError, match="expected int"):
        Serializer(types=[Small]).encode(Small("1"))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="expected int"):
        Serializer(types=[Small]).encode(Small(True))


def test_float_nan_is_refused() -> None:
    @attrs.frozen
    class Ratio:
        value: float

    with pytest.raises(SerializationError):
        Serializer(types=[Ratio]).encode(Ratio(float("nan")))


def test_an_unregistered_type_is_named_in_the_error() -> None:
    with pytest.raises(UnknownEventTypeError, match="Small") as raised:
        Serializer(types=[Money]).encode(Small(1))
    assert raised.value.registered == ("Money",)


def test_an_unknown_stored_type_name_is_refused_without_importing_anything() -> None:
    with pytest.raises(UnknownEventTypeError, match=r"os\.system"):
        Serializer(types=[Small]).decode("os.system", b'{"n": 1}')


def test_a_nested_value_object_must_be_registered_too() -> None:
    serializer = Serializer(types=[Everything])
    with pytest.raises(SerializationError, match="Money"):
        serializer.encode(sample())


def test_unsupported_field_types_are_refused_with_the_field_named() -> None:
    @attrs.frozen
    class Vague:
        payload: Any

    with pytest.raises(SerializationError, match="payload"):
        Serializer(types=[Vague]).encode(Vague(1))


def test_one_name_for_two_classes_is_refused() -> None:
    @attrs.frozen
    class Small:  # a different class with the same name
        n: int

    serializer = Serializer(types=[globals()["Small"]])
    with pytest.raises(SerializationError, match="already registered"):
        serializer.register(Small)


def test_explicit_names_keep_old_data_readable_after_a_rename() -> None:
    serializer = Serializer()
    serializer.register(Small, name="SmallThingHappened")
    type_name, data = serializer.encode(Small(5))
    assert type_name == "SmallThingHappened"
    assert serializer.decode("SmallThingHappened", data) == Small(5)


def test_only_attrs_classes_can_be_registered() -> None:
    with pytest.raises(SerializationError, match="attrs"):
        Serializer(types=[dict])


@pytest.mark.parametrize(
    "data", [b"{not json", b"[]", b"{}", b"{", b'{"n": 1} trailing', b'{"n": 1}{}', b'{"n": }']
)
def test_damaged_stored_data_raises_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="Small"):
        Serializer(types=[Small]).decode("Small", data)


@pytest.mark.parametrize("data", [b' {"n": 1}', b'{"n": 1} \n', b'{ "n" : 1 }', '{"n": 1}'])
def test_stored_json_with_whitespace_or_as_text_still_decodes(data: bytes | str) -> None:
    assert Serializer(types=[Small]).decode("Small", data) == Small(1)


def test_text_that_is_not_valid_unicode_is_refused_on_write() -> None:
    @attrs.frozen
    class Note:
        text: str

    with pytest.raises(SerializationError, match="Note"):
        Serializer(types=[Note]).encode(Note("half a pair: \ud800"))


def test_new_event_ids_are_random_version_4_uuids() -> None:
    import uuid

    from orchestrix.core.messaging.messages import NewEvent

    ids = [NewEvent(None).event_id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:50]:
        assert isinstance(event_id, uuid.UUID)
        assert (event_id.version, event_id.variant) == (4, uuid.RFC_4122)
        assert uuid.UUID(str(event_id)) == event_id
        assert hash(uuid.UUID(bytes=event_id.bytes)) == hash(event_id)


def test_new_event_ids_are_unique_across_threads() -> None:
    import threading

    from orchestrix.core.messaging.messages import NewEvent

    made: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(mine: list[uuid.UUID]) -> None:
        start.wait()
        mine.extend(NewEvent(None).event_id for _ in range(5000))

    threads = [threading.Thread(target=make, args=(mine,)) for mine in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in made for i in mine]
    assert len(set(every)) == len(every) == 40_000


def test_a_forked_child_makes_other_event_ids_than_its_parent() -> None:
    import multiprocessing

    from orchestrix.core.messaging.messages import NewEvent

    NewEvent(None)  # the parent has random bits buffered that a child would inherit
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_new_ids, args=(send, 100))
    child.start()
    theirs = receive.recv()
    child.join()
    ours = [NewEvent(None).event_id.bytes for _ in range(100)]
    assert not set(theirs) & set(ours)


def _send_new_ids(connection: Any, count: int) -> None:
    from orchestrix.core.messaging.messages import NewEvent

    connection.send([NewEvent(None).event_id.bytes for _ in range(count)])


# -- the raw serializer: reading events without their classes -----------------------------------


def test_the_raw_serializer_reads_any_type_name_as_its_json_without_building_a_class() -> None:
    from orchestrix.core.messaging.serializer import RawEvent, RawSerializer

    type_name, data = Serializer(types=[Money]).encode(Money(Decimal("0.10"), "EUR"))
    raw = RawSerializer().decode(type_name, data)
    assert raw == RawEvent("Money", {"amount": "0.10", "currency": "EUR"})
    assert RawSerializer().decode("os.system", '{"cmd": "rm"}').type_name == "os.system"
    assert RawSerializer().from_dict("Anything", {"x": 1}) == RawEvent("Anything", {"x": 1})


def test_a_raw_event_cannot_be_changed() -> None:
    from orchestrix.core.messaging.serializer import RawSerializer

    raw = RawSerializer().decode("Money", b'{"amount":"1"}')
    with pytest.raises(TypeError):
        raw.data["amount"] = "2"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        raw.type_name = "Other"  # type: ignore[misc]


def test_the_raw_serializer_refuses_to_encode_or_register() -> None:
    from orchestrix.core.messaging.serializer import RawSerializer

    raw = RawSerializer()
    with pytest.raises(SerializationError, match="read-only"):
        raw.encode(Money(Decimal("1"), "EUR"))
    with pytest.raises(SerializationError, match="read-only"):
        raw.to_dict(Money(Decimal("1"), "EUR"))
    with pytest.raises(SerializationError, match="registers no types"):
        raw.register(Money)
    with pytest.raises(SerializationError, match="registers no types"):
        RawSerializer(types=[Money])


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_the_raw_serializer_refuses_stored_data_that_is_not_a_json_object(data: bytes) -> None:
    from orchestrix.core.messaging.serializer import RawSerializer

    with pytest.raises(SerializationError, match="Money"):
        RawSerializer().decode("Money", data)
