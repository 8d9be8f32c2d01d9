"""Schema versions and upcasters: stored names, the checks made when a serializer is built, every
decode path, and a property that a chain of upcasters composes to the newest version built directly."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix.core.errors import SchemaEvolutionError, SerializationError, UnknownEventTypeError
from orchestrix.core.eventsourcing import NO_STREAM
from orchestrix.core.messaging import RawSerializer, Serializer, Upcaster, upcaster
from orchestrix.core.messaging.evolution import parse_stored_name, schema_version_of, stored_name
from orchestrix.core.messaging.serializer import StructuralSerializer
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.memory.store import InMemoryEventStore

# -- one event type through three versions ----------------------------------------------------


@attrs.frozen
class PriceSetV1:
    """Version 1, as an old program defined it: a price in cents."""

    sku: str
    cents: int


@attrs.frozen
class PriceSetV2:
    """Version 2: the price became a Decimal amount."""

    __schema_version__: ClassVar[int] = 2

    sku: str
    amount: Decimal


@attrs.frozen
class PriceSet:
    """Version 3, today's: a currency was added."""

    __schema_version__: ClassVar[int] = 3

    sku: str
    amount: Decimal
    currency: str


@upcaster("PriceSet", 1)
def cents_to_amount(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    data["amount"] = str(Decimal(data.pop("cents")) / 100)
    return data


@upcaster(PriceSet, 2)
def add_currency(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


def old_serializer(cls: type) -> Serializer:
    """What an older program registered: its class under the same type name, with its own chain."""
    serializer = Serializer()
    serializer.register(cls, "PriceSet", upcasters=[cents_to_amount] if cls is PriceSetV2 else [])
    return serializer


def today() -> Serializer:
    return Serializer([PriceSet], upcasters=[cents_to_amount, add_currency])


# -- stored names -------------------------------------------------------------------------------


def test_a_type_without_a_version_is_at_version_1_and_stored_under_its_bare_name() -> None:
    assert schema_version_of(PriceSetV1) == 1
    assert old_serializer(PriceSetV1).encode(PriceSetV1("a", 150)) == ("PriceSet", b'{"sku":"a","cents":150}')


def test_a_newer_version_is_stored_in_the_type_name() -> None:
    serializer = today()
    assert serializer.version_of(PriceSet) == 3
    assert serializer.stored_name_of(PriceSet) == "PriceSet@3"
    assert serializer.name_of(PriceSet) == "PriceSet"
    assert serializer.encode(PriceSet("a", Decimal("1.50"), "USD"))[0] == "PriceSet@3"
    assert serializer.to_dict(PriceSet("a", Decimal("1.50"), "USD"))[0] == "PriceSet@3"


def test_the_version_is_not_inherited() -> None:
    @attrs.frozen
    class Special(PriceSet):
        note: str = ""

    assert schema_version_of(Special) == 1


@pytest.mark.parametrize("version", [0, -1, "2", 1.0, True])
def test_a_version_that_is_not_a_positive_int_is_refused(version: object) -> None:
    @attrs.frozen
    class Odd:
        x: int

    Odd.__schema_version__ = version  # type: ignore[attr-defined]
    with pytest.raises(SchemaEvolutionError, match="__schema_version__ must be an int of 1 or more"):
        Serializer([Odd])


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("PriceSet", ("PriceSet", 1)),
        ("PriceSet@1", ("PriceSet", 1)),
        ("PriceSet@12", ("PriceSet", 12)),
        ("PriceSet@02", ("PriceSet@02", 1)),
        ("PriceSet@0", ("PriceSet@0", 1)),
        ("PriceSet@x", ("PriceSet@x", 1)),
        ("PriceSet@٣", ("PriceSet@٣", 1)),  # a digit, but not an ASCII one
    ],
)
def test_stored_names_parse_only_canonical_versions(name: str, parsed: tuple[str, int]) -> None:
    assert parse_stored_name(name) == parsed
    if parsed[0] == "PriceSet":
        assert parse_stored_name(stored_name(*parsed)) == parsed


@pytest.mark.parametrize("name", ["PriceSet@02", "PriceSet@0", "PriceSet@x", "Unknown@2"])
def test_a_stored_name_with_a_non_canonical_version_is_an_unknown_type(name: str) -> None:
    with pytest.raises(UnknownEventTypeError):
        today().decode(name, b'{"sku":"a","amount":"1","currency":"EUR"}')


@pytest.mark.parametrize("name", ["Price@2", "Price@1", "@3"])
def test_a_registered_name_cannot_end_like_a_version(name: str) -> None:
    with pytest.raises(SerializationError, match="cannot end in '@' and a number"):
        Serializer().register(PriceSetV1, name)
    with pytest.raises(SerializationError, match="cannot end in '@' and a number"):
        Serializer().register(PriceSetV1, aliases=[name])


@pytest.mark.parametrize("name", ["Price@Set", "Price@", "Price@02", "@"])
def test_other_names_with_the_separator_are_plain_text_at_every_version(name: str) -> None:
    @attrs.frozen
    class Versioned:
        __schema_version__: ClassVar[int] = 2

        sku: str

    serializer = Serializer()
    serializer.register(Versioned, name, upcasters=[upcaster(name, 1)(lambda data: {**data, "sku": "old"})])
    assert serializer.encode(Versioned("a")) == (f"{name}@2", b'{"sku":"a"}')
    assert serializer.decode(f"{name}@2", b'{"sku":"a"}') == Versioned("a")
    assert serializer.decode(name, b'{"sku":"a"}') == Versioned("old")


# -- reading every version ------------------------------------------------------------------------


def test_every_stored_version_reads_as_todays_class() -> None:
    serializer = today()
    expected = PriceSet("a", Decimal("1.5"), "EUR")
    v1 = old_serializer(PriceSetV1).encode(PriceSetV1("a", 150))
    v2 = old_serializer(PriceSetV2).encode(PriceSetV2("a", Decimal("1.5")))
    assert v2[0] == "PriceSet@2"
    assert serializer.decode(*v1) == expected
    assert serializer.decode(*v2) == expected
    assert serializer.decode("PriceSet@1", v1[1]) == expected
    assert serializer.decode(*serializer.encode(expected)) == expected
    assert serializer.from_dict("PriceSet", {"sku": "a", "cents": 150}) == expected
    assert serializer.class_of("PriceSet@2") is PriceSet


def test_the_newest_version_is_decoded_without_calling_an_upcaster() -> None:
    calls: list[int] = []

    @upcaster("PriceSet", 1)
    def step_1(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return cents_to_amount(data)

    @upcaster("PriceSet", 2)
    def step_2(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(2)
        return add_currency(data)

    serializer = Serializer([PriceSet], upcasters=[step_1, step_2])
    serializer.decode(*serializer.encode(PriceSet("a", Decimal("1"), "USD")))
    assert calls == []
    serializer.decode("PriceSet@2", b'{"sku":"a","amount":"1"}')
    assert calls == [2]
    serializer.decode("PriceSet", b'{"sku":"a","cents":100}')
    assert calls == [2, 1, 2]


def test_upcast_data_is_checked_like_any_stored_data() -> None:
    with pytest.raises(SerializationError, match="field 'amount'"):
        today().decode("PriceSet@2", b'{"sku":"a","amount":1.5}')


def test_a_version_newer_than_the_class_is_refused_naming_both() -> None:
    with pytest.raises(SchemaEvolutionError, match="stored at version 4, newer than version 3") as caught:
        today().decode("PriceSet@4", b"{}")
    assert caught.value.versions == (4,)


def test_an_upcaster_that_fails_names_its_step() -> None:
    @upcaster("PriceSet", 1)
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("cents")

    @upcaster("PriceSet", 2)
    def not_a_dict(data: dict[str, Any]) -> dict[str, Any]:
        return [data]  # type: ignore[return-value]

    serializer = Serializer([PriceSet], upcasters=[broken, not_a_dict])
    with pytest.raises(
        SerializationError, match=r"upcaster from version 1 to 2 \(.*broken\) raised KeyError"
    ) as caught:
        serializer.decode("PriceSet", b'{"sku":"a"}')
    assert isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(
        SerializationError, match=r"upcaster from version 2 to 3 .* returned list, not a dict"
    ):
        serializer.decode("PriceSet@2", b'{"sku":"a"}')
    with pytest.raises(SerializationError, match="expected a JSON object"):
        serializer.decode("PriceSet@2", b"[1]")


# -- checked when built ---------------------------------------------------------------------------


def test_a_gap_in_the_chain_is_refused_when_the_serializer_is_built() -> None:
    with pytest.raises(
        SchemaEvolutionError,
        match="PriceSet: the type is at version 3 but no upcaster goes from version 2 to 3",
    ) as caught:
        Serializer([PriceSet], upcasters=[cents_to_amount])
    assert (caught.value.type_name, caught.value.versions) == ("PriceSet", (2, 3))
    with pytest.raises(SchemaEvolutionError, match="from version 1 to 2"):
        Serializer([PriceSet], upcasters=[add_currency])
    with pytest.raises(SchemaEvolutionError, match="from version 1 to 2"):
        Serializer([PriceSet])


def test_an_upcaster_for_a_type_that_is_not_registered_is_refused() -> None:
    stray = upcaster("PriceChanged", 1)(add_currency.function)
    with pytest.raises(
        SchemaEvolutionError,
        match=r"PriceChanged: upcaster from version 1 to 2 for a type that is not registered "
        r"\(registered: PriceSet\)",
    ):
        Serializer([PriceSet], upcasters=[cents_to_amount, add_currency, stray])
    with pytest.raises(SchemaEvolutionError, match="not registered"):
        Serializer([PriceSetV1], upcasters=[upcaster(PriceSet, 1)(add_currency.function)])


def test_two_upcasters_for_one_step_are_refused() -> None:
    again = upcaster("PriceSet", 2)(lambda data: {**data, "currency": "USD"})
    with pytest.raises(
        SchemaEvolutionError, match="two upcasters from version 2 to 3: add_currency and"
    ) as caught:
        Serializer([PriceSet], upcasters=[cents_to_amount, add_currency, again])
    assert caught.value.versions == (2, 3)
    # The same step given twice is one step.
    Serializer([PriceSet], upcasters=[cents_to_amount, add_currency, add_currency])


def test_a_step_beyond_the_types_version_is_refused() -> None:
    beyond = upcaster("PriceSet", 3)(lambda data: data)
    with pytest.raises(
        SchemaEvolutionError, match="upcaster from version 3 to 4, but the type is at version 3"
    ):
        Serializer([PriceSet], upcasters=[cents_to_amount, add_currency, beyond])


def test_an_upcaster_starts_at_version_1() -> None:
    with pytest.raises(SchemaEvolutionError, match="version of 1 or more, not 0"):
        upcaster("PriceSet", 0)


def test_only_upcasters_are_taken_as_upcasters() -> None:
    with pytest.raises(SchemaEvolutionError, match="not an upcaster"):
        Serializer([PriceSet], upcasters=[cents_to_amount, add_currency.function])  # type: ignore[list-item]


def test_register_checks_the_chain_and_registers_nothing_when_it_is_refused() -> None:
    serializer = Serializer()
    with pytest.raises(SchemaEvolutionError, match="from version 2 to 3"):
        serializer.register(PriceSet, upcasters=[cents_to_amount])
    assert serializer.type_names == ()
    with pytest.raises(UnknownEventTypeError):
        serializer.decode("PriceSet", b'{"sku":"a","cents":1}')
    serializer.register(PriceSet, upcasters=[cents_to_amount, add_currency])
    assert serializer.decode("PriceSet", b'{"sku":"a","cents":100}') == PriceSet("a", Decimal("1"), "EUR")


def test_the_raw_serializer_takes_no_upcasters() -> None:
    with pytest.raises(SerializationError, match="registers no upcasters"):
        RawSerializer(upcasters=[cents_to_amount])


# -- renamed types --------------------------------------------------------------------------------


@attrs.frozen
class PriceFixed:
    """PriceSet, renamed at version 3."""

    __schema_version__: ClassVar[int] = 3

    sku: str
    amount: Decimal
    currency: str


def renamed() -> Serializer:
    return Serializer(
        [PriceFixed],
        aliases={"PriceSet": PriceFixed},
        upcasters=[
            upcaster("PriceFixed", 1)(cents_to_amount.function),
            upcaster(PriceFixed, 2)(add_currency.function),
        ],
    )


def test_a_renamed_type_reads_its_old_name_at_every_version_and_writes_the_new_one() -> None:
    serializer = renamed()
    expected = PriceFixed("a", Decimal("1.5"), "EUR")
    assert serializer.decode(*old_serializer(PriceSetV1).encode(PriceSetV1("a", 150))) == expected
    assert serializer.decode(*old_serializer(PriceSetV2).encode(PriceSetV2("a", Decimal("1.5")))) == expected
    assert serializer.decode("PriceSet@3", b'{"sku":"a","amount":"1.5","currency":"EUR"}') == expected
    assert serializer.encode(expected)[0] == "PriceFixed@3"
    assert serializer.type_names == ("PriceFixed",)
    assert serializer.class_of("PriceSet") is PriceFixed


def test_upcasters_are_registered_under_the_new_name() -> None:
    with pytest.raises(SchemaEvolutionError, match="old name of 'PriceFixed'"):
        Serializer([PriceFixed], aliases={"PriceSet": PriceFixed}, upcasters=[cents_to_amount])


def test_an_alias_cannot_take_a_name_another_class_has() -> None:
    with pytest.raises(SerializationError, match="name already registered"):
        Serializer([PriceSetV1, PriceFixed], aliases={"PriceSetV1": PriceFixed})
    with pytest.raises(SerializationError, match="name already registered"):
        Serializer([PriceSetV1], aliases={"Old": PriceSetV1, "PriceSetV1": PriceFixed})


# -- every store reads old records, and never rewrites them -------------------------------------------


def write_old(store_factory: Any) -> None:
    with store_factory(old_serializer(PriceSetV1)) as store:
        store.append("price-a", [PriceSetV1("a", 150)], expected_version=NO_STREAM)
    with store_factory(old_serializer(PriceSetV2)) as store:
        store.append("price-a", [PriceSetV2("a", Decimal("2"))], expected_version=0)


def test_the_file_store_reads_old_versions_on_every_path(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_old(lambda serializer: FileEventStore(path, serializer))
    segment = path / "segment-00000001.log"
    before = segment.read_bytes()
    expected = [PriceSet("a", Decimal("1.5"), "EUR"), PriceSet("a", Decimal("2"), "EUR")]
    with FileEventStore(path, today()) as store:
        assert [r.event for r in store.read_stream("price-a")] == expected
        assert [r.event for r in store.read_all()] == expected
        assert [r.event_type for r in store.read_all()] == ["PriceSet", "PriceSet@2"]
        store.append("price-a", [PriceSet("a", Decimal("3"), "USD")], expected_version=1)
    assert segment.read_bytes()[: len(before.rstrip(b"\0"))] == before.rstrip(b"\0")
    with FileEventStore(path, RawSerializer()) as store:
        assert [r.event_type for r in store.read_all()] == ["PriceSet", "PriceSet@2", "PriceSet@3"]


def test_the_memory_store_with_a_serializer_reads_old_versions() -> None:
    store = InMemoryEventStore(serializer=old_serializer(PriceSetV1))
    store.append("price-a", [PriceSetV1("a", 150)])
    store._serializer = today()  # what a restarted program would bring to the same records
    assert [r.event for r in store.read_stream("price-a")] == [PriceSet("a", Decimal("1.5"), "EUR")]


def test_every_store_records_the_same_type_name() -> None:
    event = PriceSet("a", Decimal("1"), "USD")
    checked = InMemoryEventStore()
    checked.append("p", [event])
    encoded = InMemoryEventStore(serializer=today())
    encoded.append("p", [event])
    assert (
        [r.event_type for r in checked.read_all()]
        == [r.event_type for r in encoded.read_all()]
        == ["PriceSet@3"]
    )
    assert StructuralSerializer().check(event) == "PriceSet@3"


# -- the property: a chain of upcasters composes to the newest version built directly ----------------

# A record's history is a list of operations on its fields (all ints); each one makes a version.
Op = tuple[str, str, Any]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[str], list[Op]]:
    first = [f"f{i}" for i in range(draw(st.integers(1, 3)))]
    fields = list(first)
    ops: list[Op] = []
    fresh = iter(f"g{i}" for i in range(100))
    for _ in range(draw(st.integers(0, 6))):
        kinds = ["add", "shift", "rename"] + (["drop"] if len(fields) > 1 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "add":
            name = draw(st.sampled_from([next(fresh), *[f for f in first if f not in fields]]))
            ops.append(("add", name, draw(st.integers(-5, 5))))
            fields.append(name)
        elif kind == "shift":
            ops.append(("shift", draw(st.sampled_from(fields)), draw(st.integers(-5, 5))))
        elif kind == "rename":
            old = draw(st.sampled_from(fields))
            new = next(fresh)
            ops.append(("rename", old, new))
            fields[fields.index(old)] = new
        else:
            name = draw(st.sampled_from(fields))
            ops.append(("drop", name, None))
            fields.remove(name)
    return first, ops


def fields_at(first: list[str], ops: list[Op], version: int) -> list[str]:
    fields = list(first)
    for kind, name, arg in ops[: version - 1]:
        if kind == "add":
            fields.append(name)
        elif kind == "rename":
            fields[fields.index(name)] = arg
        elif kind == "drop":
            fields.remove(name)
    return fields


def record_class(fields: list[str], version: int) -> type:
    cls = attrs.make_class("Record", {name: attrs.field(type=int) for name in fields}, frozen=True)
    cls.__schema_version__ = version  # type: ignore[attr-defined]
    return cls


def step(op: Op) -> Any:
    """The upcaster of one operation, written as a user would: a new dict from the old."""
    kind, name, arg = op

    def apply(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        if kind == "add":
            data[name] = arg
        elif kind == "shift":
            data[name] += arg
        elif kind == "rename":
            data[arg] = data.pop(name)
        else:
            del data[name]
        return data

    return apply


def directly(first_values: dict[str, int], ops: list[Op]) -> dict[str, int]:
    """The newest version's values from a record's, worked out as each newest field's origin (a
    field of the record, or a later default) plus the sum of the shifts after it: no dict is
    transformed step by step."""
    origin: dict[str, tuple[str | None, int]] = {name: (name, 0) for name in first_values}
    for kind, name, arg in ops:
        if kind == "add":
            origin[name] = (None, arg)
        elif kind == "shift":
            source, offset = origin[name]
            origin[name] = (source, offset + arg)
        elif kind == "rename":
            origin[arg] = origin.pop(name)
        else:
            del origin[name]
    return {
        name: (first_values[source] if source else 0) + offset for name, (source, offset) in origin.items()
    }


@given(histories(), st.data())
def test_any_chain_of_upcasters_composes_to_the_newest_version_built_directly(
    history: tuple[list[str], list[Op]], data: st.DataObject
) -> None:
    first, ops = history
    newest = len(ops) + 1
    newest_class = record_class(fields_at(first, ops, newest), newest)
    steps = [upcaster("Record", n + 1)(step(op)) for n, op in enumerate(ops)]
    serializer = Serializer()
    serializer.register(newest_class, upcasters=steps)
    written_at = data.draw(st.integers(1, newest), label="written at version")
    old_fields = fields_at(first, ops, written_at)
    values = data.draw(
        st.fixed_dictionaries({f: st.integers(-1000, 1000) for f in old_fields}), label="values"
    )
    old = Serializer()
    old.register(record_class(old_fields, written_at), upcasters=steps[: written_at - 1])
    type_name, stored = old.encode(old.class_of("Record")(**values))

    expected = newest_class(**directly(values, ops[written_at - 1 :]))
    assert serializer.decode(type_name, stored) == expected
    assert json.loads(serializer.encode(expected)[1]) == attrs.asdict(expected)
    assert serializer.encode(expected)[0] == stored_name("Record", newest)


def test_upcaster_objects_call_their_function() -> None:
    assert isinstance(cents_to_amount, Upcaster)
    assert cents_to_amount({"sku": "a", "cents": 5}) == {"sku": "a", "amount": "0.05"}
    assert (cents_to_amount.target_name, add_currency.target_name) == ("PriceSet", "PriceSet")
