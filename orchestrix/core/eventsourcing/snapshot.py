"""Snapshots: an aggregate's state at one version of its stream, kept apart from the streams.

A :class:`Snapshot` names the stream, the version and the id of the last event its state
includes, and the aggregate class's ``snapshot_version``. Loading with a snapshot replays only
the events after it; the snapshot is checked against its stream first (the event it names
must still be there, with the same id), so it is never trusted beyond its stream.

A :class:`SnapshotStore` keeps at most one snapshot per stream. Its state is encoded through
the store's :class:`~orchestrix.core.messaging.serializer.Serializer`, with the rules events
follow: either an instance of a registered attrs class (stored under its type name, decoded only
into that class), or plain JSON data (``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
finite ``float``, ``bool``, ``None``; at most :data:`~orchestrix.core.messaging.serializer.MAX_DEPTH`
levels). Nothing is pickled and nothing named in stored data is imported.

A save replaces the stored snapshot unless that one has the same ``schema_version`` and a higher
``version`` (two writers racing keep the newer state; a new schema version replaces the old).
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Protocol, runtime_checkable

import attrs

from orchestrix.core import _io
from orchestrix.core._checks import check_stream_name
from orchestrix.core.errors import InvalidArgumentError, SerializationError
from orchestrix.core.eventsourcing.keys import KeyRefused
from orchestrix.core.eventsourcing.store import MAX_POSITION
from orchestrix.core.messaging.serializer import MAX_DEPTH, Serializer, StructuralSerializer

__all__ = [
    "JSON_STATE",
    "EncodedSnapshot",
    "Snapshot",
    "SnapshotStore",
    "check_schema_version",
    "check_snapshot",
    "decode_snapshot",
    "decode_wanted",
    "encode_snapshot",
    "replaces",
]

JSON_STATE = ""
"""The ``state_type`` of a snapshot whose state is plain JSON data rather than a registered class."""


@attrs.frozen
class Snapshot:
    """An aggregate's state as of ``version`` of ``stream`` (the event ``event_id``).

    ``state`` is what the aggregate's ``snapshot()`` returned; ``refusals`` the keys its stream
    refused (:mod:`~orchestrix.core.eventsourcing.keys`), which are part of its state too.
    """

    stream: str
    version: int
    event_id: uuid.UUID
    schema_version: int
    state: Any
    refusals: tuple[KeyRefused, ...] = ()


@attrs.frozen
class EncodedSnapshot:
    """A snapshot as a store keeps it: its facts, and its state and refusals as JSON text."""

    stream: str
    version: int
    event_id: uuid.UUID
    schema_version: int
    state_type: str
    """The state's registered type name, or :data:`JSON_STATE` for plain JSON data."""
    state: str
    refusals: str


@runtime_checkable
class SnapshotStore(Protocol):
    """At most one snapshot per stream, kept apart from the streams.

    Every call checks its arguments first and raises an
    :class:`~orchestrix.core.errors.InvalidArgumentError` naming what was wrong, storing nothing.
    """

    def save(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` for its stream (see :func:`replaces`); durable when this returns."""
        ...

    def load(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """The stream's snapshot, or None; with ``schema_version``, None for a snapshot of another
        schema version too, without decoding its state (its class may be gone)."""
        ...

    def delete(self, stream: str) -> None:
        """Forget the stream's snapshot, if it has one."""
        ...

    async def save_async(self, snapshot: Snapshot) -> None:
        """Asyncio form of :meth:`save`."""
        ...

    async def load_async(self, stream: str, schema_version: int | None = None) -> Snapshot | None:
        """Asyncio form of :meth:`load`."""
        ...

    async def delete_async(self, stream: str) -> None:
        """Asyncio form of :meth:`delete`."""
        ...


# -- the rules every store shares ---------------------------------------------------------------


def check_snapshot(snapshot: object) -> Snapshot:
    """Return ``snapshot`` if it is a Snapshot with usable facts; its state is checked on encoding."""
    if type(snapshot) is not Snapshot:
        raise InvalidArgumentError("snapshot", snapshot, "a Snapshot")
    check_stream_name(snapshot.stream)
    for name in ("version", "schema_version"):
        value = getattr(snapshot, name)
        if type(value) is not int or not 0 <= value <= MAX_POSITION:
            raise InvalidArgumentError(f"snapshot.{name}", value, "an int from 0 to 2**63-1")
    if type(snapshot.event_id) is not uuid.UUID:
        raise InvalidArgumentError("snapshot.event_id", snapshot.event_id, "a UUID")
    if type(snapshot.refusals) is not tuple or any(type(r) is not KeyRefused for r in snapshot.refusals):
        raise InvalidArgumentError("snapshot.refusals", snapshot.refusals, "a tuple of KeyRefused")
    return snapshot


def check_schema_version(schema_version: object) -> int | None:
    """Return ``schema_version`` if it is None (any) or a schema version a load may ask for."""
    if schema_version is not None and (
        type(schema_version) is not int or not 0 <= schema_version <= MAX_POSITION
    ):
        raise InvalidArgumentError("schema_version", schema_version, "None or an int from 0 to 2**63-1")
    return schema_version


def replaces(stored: EncodedSnapshot | Snapshot | None, new: EncodedSnapshot | Snapshot) -> bool:
    """Whether saving ``new`` replaces ``stored``: unless that is of the same schema and newer."""
    return stored is None or stored.schema_version != new.schema_version or new.version >= stored.version


def encode_snapshot(serializer: Serializer | None, snapshot: Snapshot) -> EncodedSnapshot:
    """Check ``snapshot`` and encode its state and refusals with ``serializer``'s rules.

    Without a serializer (the in-memory store's default) a registered-class state is checked
    as :class:`~orchestrix.core.messaging.serializer.StructuralSerializer` checks events.
    Raises SerializationError for a state that is neither a registered attrs instance nor
    plain JSON data.
    """
    check_snapshot(snapshot)
    state = snapshot.state
    codec = serializer if serializer is not None else StructuralSerializer()
    if attrs.has(type(state)):
        state_type, text = codec.encode(state)
        state_text = text.decode()
    else:
        state_type = JSON_STATE
        state_text = _dump_json(snapshot.stream, state)
    refusals = [list(codec.to_dict(refusal)) for refusal in snapshot.refusals]
    return EncodedSnapshot(
        snapshot.stream,
        snapshot.version,
        snapshot.event_id,
        snapshot.schema_version,
        state_type,
        state_text,
        json.dumps(refusals, ensure_ascii=False, separators=(",", ":")),
    )


def decode_snapshot(serializer: Serializer, encoded: EncodedSnapshot) -> Snapshot:
    """Build the Snapshot from what a store kept; the state only ever becomes a registered class
    or plain JSON data. Damaged data raises SerializationError."""
    if encoded.state_type == JSON_STATE:
        state = _load_json(encoded.stream, encoded.state)
    else:
        state = serializer.decode(encoded.state_type, encoded.state)
    raw = _load_json(encoded.stream, encoded.refusals)
    if type(raw) is not list or not all(type(r) is list and len(r) == 2 and type(r[1]) is dict for r in raw):
        raise SerializationError(_what(encoded.stream), f"malformed refusals {encoded.refusals[:80]!r}")
    refusals = []
    for type_name, data in raw:
        refusal = serializer.from_dict(type_name, data)
        if type(refusal) is not KeyRefused:
            raise SerializationError(type_name, "a snapshot's refusals must be KeyRefused records")
        refusals.append(refusal)
    return Snapshot(
        encoded.stream, encoded.version, encoded.event_id, encoded.schema_version, state, tuple(refusals)
    )


def decode_wanted(
    serializer: Serializer, encoded: EncodedSnapshot | None, schema_version: int | None
) -> Snapshot | None:
    """Decode ``encoded`` unless there is none or it is of another schema version than asked for."""
    if encoded is None or (schema_version is not None and encoded.schema_version != schema_version):
        return None
    return decode_snapshot(serializer, encoded)


def _what(stream: str) -> str:
    return f"snapshot of {stream!r}"


def _dump_json(stream: str, state: Any) -> str:
    problem = _json_problem(state, 1)
    if problem is not None:
        raise SerializationError(
            _what(stream),
            f"state {problem}: a snapshot's state is a registered attrs instance or plain JSON data",
        )
    return json.dumps(state, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _load_json(stream: str, text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise SerializationError(_what(stream), "stored data nests too deeply to parse") from None
    except ValueError as exc:
        raise SerializationError(_what(stream), f"cannot decode stored data: {exc}") from exc
    problem = _json_problem(value, 1)
    if problem is not None:
        raise SerializationError(_what(stream), f"stored state {problem}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can hold")


def _json_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is not plain JSON data that comes back as itself, or None if it is."""
    if depth > MAX_DEPTH:
        return f"nests deeper than {MAX_DEPTH} levels"
    kind = type(value)
    if kind is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            return "holds text with a lone surrogate"
        return None
    if kind is int or kind is bool or value is None:
        return None
    if kind is float:
        return None if math.isfinite(value) else f"holds {value!r}"
    if kind is list:
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"has a dict key {key!r} that is not a str"
            problem = _json_problem(key, depth) or _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"holds a {kind.__name__} ({value!r:.60}), which is not JSON (register an attrs class for it)"


# -- the operations the repository awaits (see orchestrix.core._io) -----------------------------


async def _load_snapshot(snapshots: Any, stream: str, schema_version: int) -> Snapshot | None:
    """The stream's snapshot of ``schema_version`` from ``snapshots``, or None."""
    if _io.is_sync():
        return snapshots.load(stream, schema_version)  # type: ignore[no-any-return]
    return await snapshots.load_async(stream, schema_version)  # type: ignore[no-any-return]


async def _save_snapshot(snapshots: Any, snapshot: Snapshot) -> None:
    """Keep ``snapshot`` in ``snapshots``."""
    if _io.is_sync():
        snapshots.save(snapshot)
    else:
        await snapshots.save_async(snapshot)
