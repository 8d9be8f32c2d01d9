"""Each shortcut in orchestrix._speedups gives exactly what its plain form gives."""

from __future__ import annotations

import json
import math
import signal
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix import _speedups
from orchestrix.core.eventsourcing._backend import new_append_result, new_event, new_recorded
from orchestrix.core.eventsourcing.store import AppendResult
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent

uuids = st.uuids()
maybe_uuids = st.none() | uuids
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _same_object(fast: Any, plain: Any) -> None:
    assert type(fast) is type(plain)
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert repr(fast) == repr(plain)


@given(event=json_values, event_id=uuids, correlation=maybe_uuids, causation=maybe_uuids)
def test_the_fast_new_event_is_the_new_event(
    event: Any, event_id: uuid.UUID, correlation: uuid.UUID | None, causation: uuid.UUID | None
) -> None:
    assert new_event is not NewEvent  # the shortcut is in use on this interpreter
    fast = new_event(event, event_id, correlation, causation)
    plain = NewEvent(event, event_id, correlation, causation)
    assert type(fast) is NewEvent and fast == plain and repr(fast) == repr(plain)


@given(
    event_id=uuids,
    stream=st.text(min_size=1),
    version=st.integers(0, 2**63 - 1),
    position=st.integers(1, 2**63 - 1),
    at=st.datetimes(timezones=st.just(UTC)),
    type_name=st.text(min_size=1),
    event=json_values,
    correlation=maybe_uuids,
    causation=maybe_uuids,
)
def test_the_fast_recorded_event_is_the_recorded_event(
    event_id: uuid.UUID,
    stream: str,
    version: int,
    position: int,
    at: datetime,
    type_name: str,
    event: Any,
    correlation: uuid.UUID | None,
    causation: uuid.UUID | None,
) -> None:
    fields = (event_id, stream, version, position, at, type_name, event, correlation, causation)
    fast, plain = new_recorded(*fields), RecordedEvent(*fields)
    assert type(fast) is RecordedEvent and fast == plain and repr(fast) == repr(plain)


@given(stream=st.text(), pairs=st.lists(st.tuples(st.integers(0), st.integers(1)), min_size=1, max_size=5))
def test_the_fast_append_result_is_the_append_result(stream: str, pairs: list[tuple[int, int]]) -> None:
    versions, positions = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    fast, plain = new_append_result(stream, versions, positions), AppendResult(stream, versions, positions)
    _same_object(fast, plain)
    assert (fast.last_version, fast.last_position) == (plain.last_version, plain.last_position)


def test_a_class_without_slots_gets_its_own_constructor_back() -> None:
    import attrs

    @attrs.frozen(slots=False)
    class Loose:
        a: int

    assert _speedups.slots_constructor(Loose, (1,)) is Loose


@given(raw=st.binary(min_size=16, max_size=16))
def test_uuid_from_bytes_is_the_uuid_constructor(raw: bytes) -> None:
    fast, plain = _speedups.uuid_from_bytes(raw), _speedups.plain_uuid_from_bytes(raw)
    _same_object(fast, plain)
    assert (str(fast), fast.bytes, fast.int, fast.is_safe) == (
        str(plain),
        plain.bytes,
        plain.int,
        plain.is_safe,
    )


def test_new_uuid4_makes_version_4_uuids_that_round_trip_and_never_repeat() -> None:
    made: list[uuid.UUID] = []

    def draw() -> None:
        made.extend(_speedups.new_uuid4() for _ in range(3000))  # more than one refill each

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == len(made) == 12000
    for u in made[::97]:
        plain = uuid.UUID(str(u))
        _same_object(u, plain)
        assert (u.version, u.variant, u.is_safe) == (4, uuid.RFC_4122, plain.is_safe)


@given(value=json_values)
def test_dumps_is_compact_json_dumps(value: Any) -> None:
    fast = _speedups.dumps(value)
    assert fast == _speedups.plain_dumps(value)
    assert json.loads(fast) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, [1, -math.inf], {"a": math.nan}])
def test_dumps_refuses_what_plain_dumps_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        _speedups.plain_dumps(value)
    with pytest.raises(ValueError):
        _speedups.dumps(value)


@given(text=st.text(alphabet=st.characters(codec=None)))
def test_quote_is_json_string_quoting(text: str) -> None:
    assert _speedups.quote(text) == _speedups.plain_quote(text)


@given(value=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_loads_parses_what_dumps_writes_as_json_loads_does(value: dict[str, Any]) -> None:
    data = _speedups.dumps(value).encode()
    assert _speedups.loads(data) == json.loads(data) == value


@given(data=st.binary(max_size=40) | st.builds(lambda b: b"{" + b, st.binary(max_size=40)))
def test_loads_gives_json_loads_answer_or_error_on_any_bytes(data: bytes) -> None:
    try:
        expected: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError both are
        with pytest.raises(type(exc)):
            _speedups.loads(data)
    else:
        got = _speedups.loads(data)
        assert got == expected or (got != got and expected != expected)  # NaN is never equal


def test_the_signal_module_reads_and_sets_what_signal_does() -> None:
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("signal handlers are set from the main thread only")
    fast = _speedups.signal_module
    assert int(fast.SIGINT) == int(signal.SIGINT)
    assert fast.default_int_handler is signal.default_int_handler
    before = signal.getsignal(signal.SIGINT)
    try:

        def note(signum: int, frame: object) -> None:  # pragma: no cover - never delivered
            pass

        previous = fast.signal(fast.SIGINT, note)
        assert previous == before
        assert signal.getsignal(signal.SIGINT) is note
        assert fast.getsignal(fast.SIGINT) is note
    finally:
        signal.signal(signal.SIGINT, before)


@given(st.uuids(), st.text())
def test_uuid5_in_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    fast, plain = _speedups.uuid5_in(namespace), _speedups.plain_uuid5_in(namespace)
    try:
        expected = uuid.uuid5(namespace, name)
    except UnicodeEncodeError:  # a lone surrogate: refused alike
        with pytest.raises(UnicodeEncodeError):
            fast(name)
        return
    for made in (fast(name), plain(name)):
        assert made == expected
        assert str(made) == str(expected) and hash(made) == hash(expected)
        assert (made.version, made.variant, made.is_safe) == (5, uuid.RFC_4122, expected.is_safe)
