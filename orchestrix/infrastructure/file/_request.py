"""Encoding an append: validate it and build its record on the caller's own thread, before any lock.

A :class:`Request` then carries the record through the commit (:mod:`._commit`) and brings its
outcome back to the caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrix.core._checks import (
    MAX_POSITION,
    check_appends,
    check_events,
    check_expected_version_arg,
    check_stream_name,
)
from orchestrix.core.errors import BatchTooLargeError, SerializationError
from orchestrix.core.eventsourcing._backend import Part, to_import_parts, to_new_events, to_parts
from orchestrix.core.eventsourcing.store import ANY, AppendResult, ImportedEvent, StreamAppend
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file._format import (
    FRAME_SIZE,
    MAX_BODY,
    FormatProblem,
    prepare_record,
    type_field,
)

NAMES_CACHED = 4096
"""Stream and type names a store keeps encoded; past that the cache starts over."""


class Request:
    """One caller's append: its encoded record, and then its outcome."""

    __slots__ = (
        "batch",
        "done",
        "error",
        "expected",
        "future",
        "handed",
        "ids",
        "loop",
        "record",
        "result",
        "stream",
        "wake",
    )

    def __init__(
        self, stream: str, batch: list[NewEvent], ids: tuple[bytes, ...], record: bytearray, expected: int
    ) -> None:
        self.stream = stream
        self.batch = batch
        self.ids = ids
        self.record = record
        self.expected = expected
        self.result: AppendResult | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake: threading.Lock | None = None  # a waiting thread's: released when done, or to write
        self.handed = False  # its caller was told to write the next group
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[None] | None = None


def prepare(
    serializer: Serializer,
    names: dict[Any, bytes],
    stream: str,
    events: Sequence[NewEvent | Any],
    expected_version: int,
) -> Request:
    """Validate and encode an append outside every lock, so concurrent callers do it in parallel.

    ``names`` caches, per store, the UTF-8 form of stream names already checked and of type
    names already made into record fields: an append usually goes to a stream it has seen.
    """
    raw_stream = names.get(stream) if type(stream) is str else None
    if raw_stream is None:
        raw_stream = check_stream_name(stream).encode()
        if len(names) >= NAMES_CACHED:
            names.clear()
        names[stream] = raw_stream
    if type(expected_version) is not int or not 0 <= expected_version <= MAX_POSITION:
        check_expected_version_arg(expected_version)  # the named modes pass, bad input raises
    batch = to_new_events(stream, events)
    return _request(serializer, names, stream, raw_stream, batch, expected_version, False)


def _request(
    serializer: Serializer,
    names: dict[Any, bytes],
    stream: str,
    raw_stream: bytes,
    batch: list[NewEvent],
    expected_version: int,
    continues: bool,
    kind: type[Request] = Request,
) -> Request:
    """Encode one stream's batch into its record (see :func:`prepare`)."""
    encode = serializer.encode
    prepared = []
    for new in batch:
        type_name, payload = encode(new.event)
        field = names.get((type_name,))
        if field is None:
            try:
                field = names[(type_name,)] = type_field(type_name)
            except FormatProblem as exc:
                raise SerializationError(type_name, str(exc)) from None
        correlation, causation = new.correlation_id, new.causation_id
        prepared.append(
            (
                new.event_id.int.to_bytes(16, "big"),  # UUID.bytes, without its Python-level property
                None if correlation is None else correlation.bytes,
                None if causation is None else causation.bytes,
                field,
                payload,
            )
        )
    record = prepare_record(raw_stream, prepared, continues)
    if len(record) - FRAME_SIZE > MAX_BODY:
        raise BatchTooLargeError(stream, "record_bytes", MAX_BODY + FRAME_SIZE, len(record))
    ids = (prepared[0][0],) if len(prepared) == 1 else tuple([p[0] for p in prepared])
    return kind(stream, batch, ids, record, expected_version)


class ManyRequest:
    """One caller's multi-stream append: a Request per stream, planned, written, synced and
    published together (:mod:`._group`), and then its outcome."""

    __slots__ = ("done", "error", "future", "handed", "ids", "loop", "parts", "result", "wake")

    def __init__(self, parts: list[Request]) -> None:
        self.parts = parts
        ids = parts[0].ids
        for part in parts[1:]:  # a few streams: concatenating beats a generator
            ids += part.ids
        self.ids = ids
        self.result: tuple[AppendResult, ...] | None = None  # set here only for a replay
        self.error: BaseException | None = None
        self.done = False
        self.wake: threading.Lock | None = None
        self.handed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[None] | None = None

    def results(self) -> tuple[AppendResult, ...]:
        """The outcome once committed: the original results of a replay, or each part's result."""
        if self.error is not None:
            raise self.error
        if self.result is not None:
            return self.result
        results = []
        for part in self.parts:
            result = part.result
            if result is None:  # pragma: no cover - the commit always sets them
                raise RuntimeError("a multi-stream append finished without a result")
            results.append(result)
        return tuple(results)


Queued = Request | ManyRequest
"""What callers queue for a group commit: a one-stream or a multi-stream append."""


class ImportRequest(Request):
    """One record of an import: written with its events' own time, not the commit's."""

    __slots__ = ("recorded_us",)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def prepare_import(
    serializer: Serializer, names: dict[Any, bytes], events: Sequence[ImportedEvent]
) -> ManyRequest:
    """Validate and encode an import (see ``EventImport``) as a multi-stream append whose records
    carry their events' times. A record has one time, so a stream's run is cut into a record per
    run of equal times; its first record expects the stream where the run starts, the next ones
    follow it in the same commit (ANY)."""
    parts, times = to_import_parts(events)
    pieces: list[tuple[str, list[NewEvent], int, datetime]] = []
    for (stream, batch, expected), at in zip(parts, times, strict=True):
        start = 0
        for k in range(1, len(batch) + 1):
            if k == len(batch) or at[k] != at[start]:
                pieces.append((stream, batch[start:k], expected if start == 0 else ANY, at[start]))
                start = k
    last = len(pieces) - 1
    requests: list[Request] = []
    for k, (stream, batch, expected, first) in enumerate(pieces):
        raw_stream = names.get(stream) or stream.encode()
        request = _request(serializer, names, stream, raw_stream, batch, expected, k < last, ImportRequest)
        request.recorded_us = (first - _EPOCH) // _MICROSECOND  # type: ignore[attr-defined]
        requests.append(request)
    return ManyRequest(requests)


def merge_runs(results: Sequence[AppendResult]) -> tuple[AppendResult, ...]:
    """An import's results, one per stream: its records' results joined where a run was cut."""
    merged: list[AppendResult] = []
    for result in results:
        if merged and merged[-1].stream == result.stream:
            before = merged.pop()
            result = AppendResult(
                result.stream, before.versions + result.versions, before.positions + result.positions
            )
        merged.append(result)
    return tuple(merged)


def prepare_many(
    serializer: Serializer, names: dict[Any, bytes], appends: Sequence[StreamAppend]
) -> ManyRequest:
    """Validate and encode a multi-stream append outside every lock: one record per stream, each
    but the last marked as continued by the next, so recovery keeps them together or not at all.

    The checks are :func:`to_parts`'s, in its order (every part's arguments, then each part's
    events, then ids repeated across parts), run the way :func:`prepare` runs them for one
    stream: names already checked come from ``names``, and the shared checks run only to raise.
    Otherwise a two-stream append would cost the checks of three appends (measured in
    bench/README.md, issue 17).
    """
    if (type(appends) is not list and type(appends) is not tuple) or not appends:
        return _many(serializer, names, to_parts(appends))
    checked = []
    seen: set[bytes] = set()
    for part in appends:
        if type(part) is not StreamAppend:
            return _many(serializer, names, to_parts(appends))  # raises, naming the part
        stream, expected, events = part.stream, part.expected_version, part.events
        raw = names.get(stream) if type(stream) is str else None
        if raw is None:
            raw = check_stream_name(stream).encode()
            if len(names) >= NAMES_CACHED:
                names.clear()
            names[stream] = raw
        if type(expected) is not int or not 0 <= expected <= MAX_POSITION:
            check_expected_version_arg(expected)
        if type(events) is not list and type(events) is not tuple:
            check_events(events)
        if raw in seen:
            check_appends(appends)  # raises: a stream named twice
        seen.add(raw)
        checked.append((stream, raw, expected, events))
    batches = [to_new_events(stream, events) for stream, _, _, events in checked]
    ids = [e.event_id.int for batch in batches for e in batch]  # ints: hashed in C, unlike UUIDs
    if len(set(ids)) != len(ids):
        to_parts(appends)  # raises DuplicateEventIdError, naming the stream and the id
    last = len(checked) - 1
    return ManyRequest(
        [
            _request(serializer, names, stream, raw, batch, expected, k < last)
            for k, ((stream, raw, expected, _), batch) in enumerate(zip(checked, batches, strict=True))
        ]
    )


def _many(serializer: Serializer, names: dict[Any, bytes], parts: list[Part]) -> ManyRequest:
    """Encode the checked parts of a multi-stream append, each but the last marked as continued."""
    last = len(parts) - 1
    requests = []
    for k, (stream, batch, expected) in enumerate(parts):
        raw_stream = names.get(stream) or stream.encode()
        requests.append(_request(serializer, names, stream, raw_stream, batch, expected, k < last))
    return ManyRequest(requests)
