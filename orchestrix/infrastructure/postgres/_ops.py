"""Store operations written once, without I/O, and run by both the sync and the asyncio driver.

An operation is a generator: it yields :class:`Query` (the driver answers with the fetched
rows, or throws the ``UniqueViolation`` the query raised into the generator) or
:class:`Sleep`, and returns its result. The same logic thus serves ``append`` and
``append_async`` without two copies (and without threads).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, LiteralString, TypeVar

import attrs
from psycopg import errors as pg_errors

from orchestrix.core.errors import ConcurrencyError, FencedError, MultiStreamConflictError, SerializationError
from orchestrix.core.eventsourcing._backend import (
    Part,
    check_expected_versions,
    find_replayed_append,
    find_replayed_many,
    new_append_result,
    new_recorded,
)
from orchestrix.core.eventsourcing.fencing import Fence
from orchestrix.core.eventsourcing.store import ANY, NO_STREAM, STREAM_EXISTS, AppendResult
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.postgres._schema import EVENT_ID_CONSTRAINT
from orchestrix.infrastructure.postgres._statements import SMALL_MULTI_APPEND, Statements

__all__: list[str] = []

T = TypeVar("T")


@attrs.frozen
class Query:
    """Run ``sql`` with ``params``; answer with all rows (or an empty list if ``fetch`` is false)."""

    sql: LiteralString
    params: Any
    fetch: bool = True


@attrs.frozen
class Sleep:
    """Pause for ``seconds`` (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


Op = Generator[Query | Sleep, Any, T]

# Losing a version race under ANY or STREAM_EXISTS just means "read the new version and go
# again"; each loss means another append succeeded, so this bound is only a safety net.
_MAX_RACES = 1000


@attrs.frozen
class EncodedBatch:
    """A batch ready for the append statement: parallel arrays, one entry per event."""

    batch: Sequence[NewEvent]
    ids: list[uuid.UUID]
    types: list[str]
    data: list[str]
    correlation: list[uuid.UUID | None]
    causation: list[uuid.UUID | None]


def encode_batch(serializer: Serializer, batch: Sequence[NewEvent]) -> EncodedBatch:
    """Encode every event up front, so a bad one fails the append before anything is sent."""
    types, data = [], []
    for new in batch:
        type_name, payload = serializer.encode(new.event)
        text = payload.decode()
        # PostgreSQL text cannot hold NUL; JSON escapes it in strings, so only odd type names
        # (or a serializer that does not escape) can carry one.
        if "\x00" in type_name:
            raise SerializationError(type_name, "type names stored in PostgreSQL cannot contain NUL")
        if "\x00" in text:
            raise SerializationError(
                type_name, "encoded data contains a raw NUL, which PostgreSQL text refuses"
            )
        types.append(type_name)
        data.append(text)
    return EncodedBatch(
        batch,
        [e.event_id for e in batch],
        types,
        data,
        [e.correlation_id for e in batch],
        [e.causation_id for e in batch],
    )


def append_op(
    st: Statements, stream: str, encoded: EncodedBatch, expected: int, fence: Fence | None = None
) -> Op[tuple[AppendResult, bool]]:
    """Append a batch; returns the result and whether anything was written (False for a replay).

    Under a ``fence``, the batch is written only while the fence's generation is the lease's
    newest grant (checked in the same statement); otherwise FencedError.
    """
    if len(encoded.ids) == 1:
        if fence is not None:
            statement = st.append_one_fenced
        else:
            statement = st.append_new if expected == NO_STREAM else st.append_one
        params: dict[str, Any] = {
            "stream": stream,
            "expected": expected,
            "id": encoded.ids[0],
            "type": encoded.types[0],
            "data": encoded.data[0],
            "corr": encoded.correlation[0],
            "caus": encoded.causation[0],
        }
    else:
        statement = st.append_many if fence is None else st.append_many_fenced
        params = {
            "stream": stream,
            "expected": expected,
            "ids": encoded.ids,
            "types": encoded.types,
            "data": encoded.data,
            "corr": encoded.correlation,
            "caus": encoded.causation,
        }
    if fence is not None:
        params["fence"], params["gen"] = fence.name, fence.generation
    for _ in range(_MAX_RACES):
        try:
            rows = yield Query(statement, params)
        except pg_errors.UniqueViolation as exc:
            # Either an id is stored already (a retry of this batch, or a misuse of the id), or
            # another writer took the version this statement read as free.
            replayed = yield from _replayed_op(st, stream, encoded.batch)
            if replayed is not None:
                return replayed, False
            if exc.diag.constraint_name == EVENT_ID_CONSTRAINT or expected in (ANY, STREAM_EXISTS):
                continue
            actual = yield from stream_version_op(st, stream)
            raise ConcurrencyError(stream, expected, actual) from None
        if rows:
            # Both are consecutive runs (base + index, current + index); RETURNING order is not
            # promised, so sort.
            if len(rows) == 1:
                ((position, version),) = rows
                return new_append_result(stream, (version,), (position,)), True
            positions = tuple(sorted(row[0] for row in rows))
            versions = tuple(sorted(row[1] for row in rows))
            return new_append_result(stream, versions, positions), True
        # The expected version (or the fence) did not match; a stored batch is still a replay.
        replayed = yield from _replayed_op(st, stream, encoded.batch)
        if replayed is not None:
            return replayed, False
        if fence is not None:
            current = yield from fence_generation_op(st, fence.name)
            if current != fence.generation:
                raise FencedError(fence.name, fence.generation, current)
        actual = yield from stream_version_op(st, stream)
        if _satisfies(expected, actual):
            continue  # the stream moved between the statement and this check; try again
        raise ConcurrencyError(stream, expected, actual)
    actual = yield from stream_version_op(st, stream)
    raise ConcurrencyError(stream, expected, actual)


def _array_params(parts: Sequence[tuple[str, EncodedBatch, int]]) -> dict[str, Any]:
    """The parameters of ``Statements.append_streams``: one array per column."""
    return {
        "streams": [stream for stream, _, _ in parts],
        "expecteds": [expected for _, _, expected in parts],
        "parts": [k for k, (_, encoded, _) in enumerate(parts, 1) for _ in encoded.ids],
        "nums": [n for _, encoded, _ in parts for n in range(1, len(encoded.ids) + 1)],
        "ids": [i for _, encoded, _ in parts for i in encoded.ids],
        "types": [t for _, encoded, _ in parts for t in encoded.types],
        "data": [d for _, encoded, _ in parts for d in encoded.data],
        "corr": [c for _, encoded, _ in parts for c in encoded.correlation],
        "caus": [c for _, encoded, _ in parts for c in encoded.causation],
    }


def _small_params(parts: Sequence[tuple[str, EncodedBatch, int]]) -> dict[str, Any]:
    """The parameters of ``Statements.append_streams_small``: the streams and the events as JSON.

    Not ASCII-escaped: text that cannot be sent (a lone surrogate) fails in the client's
    encoding, as it does in the array form, instead of reaching the server as an escape.
    """
    events: list[dict[str, Any]] = []
    for k, (_, encoded, _) in enumerate(parts, 1):
        for n, (event_id, type_name, data, correlation, causation) in enumerate(
            zip(
                encoded.ids, encoded.types, encoded.data, encoded.correlation, encoded.causation, strict=True
            ),
            1,
        ):
            events.append(
                {
                    "p": k,
                    "n": n,
                    "i": len(events) + 1,
                    "id": str(event_id),
                    "t": type_name,
                    "d": data,
                    "c": None if correlation is None else str(correlation),
                    "k": None if causation is None else str(causation),
                }
            )
    streams = [{"s": stream, "e": expected, "k": k} for k, (stream, _, expected) in enumerate(parts, 1)]
    return {
        "streams": json.dumps(streams, ensure_ascii=False),
        "events": json.dumps(events, ensure_ascii=False),
    }


def append_streams_op(
    st: Statements,
    parts: Sequence[tuple[str, EncodedBatch, int]],
    fence: Fence | None = None,
    times: Sequence[Sequence[datetime]] | None = None,
) -> Op[tuple[tuple[AppendResult, ...], bool]]:
    """Append to several streams in one statement (so one transaction): all of it, or raise.

    Returns the results in the order of ``parts`` and whether anything was written (False for a
    replay). A failed expectation raises MultiStreamConflictError naming every stream that failed.
    ``times`` (an import) are the parts' events' own ``recorded_at``, else the database's now();
    an import always takes the array form (its pages are big).
    """
    streams = [stream for stream, _, _ in parts]
    if times is not None:
        statement = st.import_streams if fence is None else st.import_streams_fenced
        params = _array_params(parts)
        params["times"] = [t for part in times for t in part]
    else:
        small = sum(len(encoded.ids) for _, encoded, _ in parts) <= SMALL_MULTI_APPEND
        statement = st.append_streams_small if small else st.append_streams
        params = _small_params(parts) if small else _array_params(parts)
        if fence is not None:
            statement = st.append_streams_small_fenced if small else st.append_streams_fenced
    if fence is not None:
        params["fence"], params["gen"] = fence.name, fence.generation
    checked = [(stream, list(encoded.batch), expected) for stream, encoded, expected in parts]
    loose = all(expected in (ANY, STREAM_EXISTS) for _, _, expected in parts)
    for _ in range(_MAX_RACES):
        try:
            rows = yield Query(statement, params)
        except pg_errors.UniqueViolation as exc:
            replayed = yield from _replayed_many_op(st, checked)
            if replayed is not None:
                return replayed, False
            if exc.diag.constraint_name == EVENT_ID_CONSTRAINT or loose:
                continue
            yield from _check_streams_op(st, checked)
            continue  # every expectation still holds: the race was on a stream expecting ANY
        if rows:
            found: dict[str, list[tuple[int, int]]] = {}
            for position, stream, version in rows:
                found.setdefault(stream, []).append((position, version))
            results = []
            for stream in streams:
                placed = sorted(found[stream])
                results.append(AppendResult(stream, tuple(v for _, v in placed), tuple(p for p, _ in placed)))
            return tuple(results), True
        replayed = yield from _replayed_many_op(st, checked)
        if replayed is not None:
            return replayed, False
        if fence is not None:
            current = yield from fence_generation_op(st, fence.name)
            if current != fence.generation:
                raise FencedError(fence.name, fence.generation, current)
        yield from _check_streams_op(st, checked)  # raises unless the streams moved meanwhile
    # A thousand lost races: report every stream as it is now, as a single append does.
    rows = yield Query(st.stream_versions, (streams,))
    versions = {row[0]: int(row[1]) for row in rows}
    raise MultiStreamConflictError(ConcurrencyError(s, e, versions[s]) for s, _, e in parts)


def _replayed_many_op(st: Statements, parts: Sequence[Part]) -> Op[tuple[AppendResult, ...] | None]:
    rows = yield Query(st.lookup_ids, ([e.event_id for _, batch, _ in parts for e in batch],))
    if not rows:
        return None
    places = {row[0]: (row[1], row[2], row[3]) for row in rows}
    return find_replayed_many(parts, places.get)


def _check_streams_op(st: Statements, parts: Sequence[Part]) -> Op[None]:
    """Raise MultiStreamConflictError for every stream whose version fails its expectation."""
    rows = yield Query(st.stream_versions, ([stream for stream, _, _ in parts],))
    versions = {row[0]: int(row[1]) for row in rows}
    check_expected_versions(parts, versions.__getitem__)


def _satisfies(expected: int, actual: int) -> bool:
    if expected == ANY:
        return True
    if expected == STREAM_EXISTS:
        return actual >= 0
    return expected == actual


def _replayed_op(st: Statements, stream: str, batch: Sequence[NewEvent]) -> Op[AppendResult | None]:
    rows = yield Query(st.lookup_ids, ([e.event_id for e in batch],))
    if not rows:
        return None
    places = {row[0]: (row[1], row[2], row[3]) for row in rows}
    return find_replayed_append(stream, batch, places.get)


def fence_generation_op(st: Statements, name: str) -> Op[int | None]:
    """The newest generation granted for lease ``name``, or None."""
    rows = yield Query(st.fence_generation, (name,))
    return int(rows[0][0]) if rows else None


def grant_fence_op(st: Statements, name: str) -> Op[int]:
    """Grant lease ``name`` anew; returns the new generation."""
    rows = yield Query(st.grant_fence, (name,))
    return int(rows[0][0])


def stream_version_op(st: Statements, stream: str) -> Op[int]:
    """The stream's last version, or -1."""
    rows = yield Query(st.stream_version, (stream,))
    return int(rows[0][0])


def read_stream_page_op(
    st: Statements, stream: str, from_version: int, limit: int
) -> Op[list[tuple[Any, ...]]]:
    """Up to ``limit`` rows of the stream from ``from_version`` on."""
    rows: list[tuple[Any, ...]] = yield Query(st.read_stream, (stream, from_version, limit))
    return rows


def read_all_page_op(
    st: Statements, after: int, limit: int, own_position: int, visibility_timeout: float
) -> Op[list[tuple[Any, ...]]]:
    """Up to ``limit`` rows after ``after``, below the horizon.

    If this store appended ``own_position`` (> after) itself, wait (up to
    ``visibility_timeout``) for the horizon to pass it, so a store reads its own writes.
    """
    if own_position <= after:  # nothing of this store's own to wait for: the plain page
        page: list[tuple[Any, ...]] = yield Query(st.read_all, (after, limit))
        return page
    waited = _Backoff(visibility_timeout)
    while True:
        rows = yield Query(st.read_all_horizon, (after, limit))
        horizon = rows[0][0]
        if horizon > own_position or not waited.more():
            return [row[1:] for row in rows if row[1] is not None]
        yield Sleep(waited.next_delay())


def last_position_op(st: Statements, own_position: int, visibility_timeout: float) -> Op[int]:
    """The highest position below the horizon (waiting for this store's own appends, bounded)."""
    waited = _Backoff(visibility_timeout)
    while True:
        rows = yield Query(st.last_position, ())
        horizon, last = rows[0]
        if horizon > own_position or not waited.more():
            return int(last)
        yield Sleep(waited.next_delay())


def committed_position_op(st: Statements) -> Op[int]:
    """The highest position committed so far, below the horizon or not (0 for an empty store)."""
    rows = yield Query(st.committed_position, ())
    return int(rows[0][0])


def events_after_op(st: Statements, after: int) -> Op[tuple[bool, bool]]:
    """(an event after ``after`` is readable, an event after ``after`` is committed but not yet readable)."""
    rows = yield Query(st.events_after, (after,))
    horizon, first = rows[0]
    if first is None:
        return False, False
    return first < horizon, first >= horizon


def load_checkpoint_op(st: Statements, name: str) -> Op[int]:
    """The saved position for ``name``, or 0."""
    rows = yield Query(st.load_checkpoint, (name,))
    return int(rows[0][0]) if rows else 0


def save_checkpoint_op(st: Statements, name: str, position: int) -> Op[None]:
    """Upsert the position for ``name``."""
    yield Query(st.save_checkpoint, (name, position), fetch=False)


def decode_row(serializer: Serializer, row: Sequence[Any]) -> RecordedEvent:
    """Build a RecordedEvent from a row in ``Statements`` column order."""
    return _decode_all(serializer, [row])[0]


def decode_rows(serializer: Serializer, rows: Sequence[Sequence[Any]]) -> Iterator[RecordedEvent]:
    """The RecordedEvents of a page of rows in ``Statements`` column order.

    A page at a time, in one comprehension: a call per row would cost a tenth of a read. If
    an event cannot be decoded, the events before it are still yielded, then its error raised.
    """
    try:
        return iter(_decode_all(serializer, rows))
    except Exception:
        return (decode_row(serializer, row) for row in rows)


def _decode_all(serializer: Serializer, rows: Sequence[Sequence[Any]]) -> list[RecordedEvent]:
    # Timestamps come in UTC from the store's own connections (TimeZone=UTC); those of a
    # connection in another time zone are converted.
    decode, make = serializer.decode, new_recorded
    return [
        make(
            event_id,
            stream,
            version,
            position,
            recorded_at if recorded_at.tzinfo is UTC else _utc(recorded_at),
            event_type,
            decode(event_type, data),
            correlation,
            causation,
        )
        for position, stream, version, event_id, event_type, data, correlation, causation, recorded_at in rows
    ]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class _Backoff:
    """Delays of 0.5 ms doubling to 50 ms, for at most ``budget`` seconds in all."""

    def __init__(self, budget: float) -> None:
        self._deadline = time.monotonic() + budget
        self._delay = 0.0005

    def more(self) -> bool:
        return time.monotonic() < self._deadline

    def next_delay(self) -> float:
        delay = min(self._delay, max(0.0, self._deadline - time.monotonic()))
        self._delay = min(self._delay * 2, 0.05)
        return delay
