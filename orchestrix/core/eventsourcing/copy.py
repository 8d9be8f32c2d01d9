"""Copying every event of one store into another: resumable, order-keeping, and verified.

The engine works over the :class:`~orchestrix.core.eventsourcing.store.EventStore` protocol
only, so it copies between any two backends (the ``orchestrix copy`` command picks them).
Events travel as their stored JSON: the source is read and the target written through a
:class:`PassThroughSerializer`, which hands the stored bytes on without knowing any class.
With a serializer of the user's (``decode_with``), each event is decoded into its class and
encoded again, which writes it as its class encodes now (its newest schema).

Each page of events is one :meth:`~EventStore.append_many`: its streams' runs in source order,
each expecting the stream to be at the version before its first event (so stream versions are
kept, and a target stream that already holds other events is refused), stored whole or not at
all. Because the global order is kept, the target's last event marks how far the copy got: a
copy stopped anywhere (Ctrl-C, a kill) resumes after that event's place in the source, found
by its stream and version (and checked by its id), without writing any event twice. The target
holds nothing but the copied events (no marker an application would have to decode).

Event ids, stream names, versions, correlation and causation ids, each event's ``recorded_at``
and the global order are kept; positions may differ (PostgreSQL numbers its own). The times are
kept by writing each page with the target's ``import_events`` (:class:`EventImport`: every
orchestrix store has it); a target without it gets ``append_many`` pages, which stamp the time
of the copy, and the result says so (``kept_times``).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from typing import Any, TypeVar

import attrs

from orchestrix._speedups import dumps, loads
from orchestrix.core.errors import CopyTargetError
from orchestrix.core.eventsourcing.store import EventImport, EventStore, ImportedEvent, StreamAppend
from orchestrix.core.messaging.evolution import Upcaster
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import RawSerializer, Serializer

_C = TypeVar("_C", bound=type)

__all__ = [
    "DEFAULT_PAGE",
    "Progress",
    "CopyResult",
    "PassThroughSerializer",
    "StoredEvent",
    "Tally",
    "copy_store",
    "tally",
]

DEFAULT_PAGE = 1000
"""Events per atomic page: big enough to amortize a commit, small enough to redo cheaply."""


@attrs.frozen(slots=True)
class StoredEvent:
    """An event as its stored type name and JSON bytes, copied without decoding."""

    type_name: str
    data: bytes


class PassThroughSerializer(Serializer):
    """Reads events as :class:`StoredEvent` (the stored bytes) and writes them back unchanged.

    It registers no types and encodes only a :class:`StoredEvent`: a copy writes exactly
    what it read, and no stored type name makes it look up, build or import a class.
    """

    def register(
        self,
        cls: _C,
        name: str | None = None,
        *,
        aliases: Iterable[str] = (),
        upcasters: Iterable[Upcaster] = (),
    ) -> _C:
        """Refuse: every type passes through the same way."""
        return RawSerializer().register(cls, name, aliases=aliases, upcasters=upcasters)

    def decode(self, type_name: str, data: bytes | str) -> StoredEvent:
        """Keep the stored JSON as bytes."""
        return StoredEvent(type_name, data.encode() if isinstance(data, str) else bytes(data))

    def from_dict(self, type_name: str, data: dict[str, Any]) -> StoredEvent:
        """The StoredEvent of ``type_name`` holding ``data`` as compact JSON."""
        return StoredEvent(type_name, dumps(data).encode())

    def encode(self, obj: object) -> tuple[str, bytes]:
        """Write a StoredEvent's type name and bytes as they are."""
        if isinstance(obj, StoredEvent):
            return obj.type_name, obj.data
        return RawSerializer().encode(obj)  # refuses, naming the type

    def to_dict(self, obj: object) -> tuple[str, dict[str, Any]]:
        """A StoredEvent's type name and parsed JSON."""
        if isinstance(obj, StoredEvent):
            return obj.type_name, loads(obj.data)
        return RawSerializer().to_dict(obj)  # refuses, naming the type


@attrs.frozen
class Tally:
    """What a store holds, in the terms a copy must keep: compared to verify a copy."""

    events: int
    versions: dict[str, int]
    """Each stream's last version."""
    ids: int
    """The event ids as one order-free number (their sum modulo 2**128)."""
    checksum: str
    """SHA-256 over every event's stream, version, id, type, canonical JSON and (unless a copy
    could not keep them) recorded_at, in global order."""

    def differences(self, other: Tally) -> list[str]:
        """What differs between this (the source) and ``other`` (the target), one phrase each."""
        found = []
        if self.events != other.events:
            found.append(f"event count {self.events:,} in the source, {other.events:,} in the target")
        streams = [
            s
            for s in self.versions.keys() | other.versions.keys()
            if self.versions.get(s) != other.versions.get(s)
        ]
        if streams:
            shown = ", ".join(
                f"{s!r} (version {self.versions.get(s, 'none')} vs {other.versions.get(s, 'none')})"
                for s in sorted(streams)[:5]
            )
            more = f" and {len(streams) - 5} more" if len(streams) > 5 else ""
            found.append(f"stream versions differ: {shown}{more}")
        if self.ids != other.ids:
            found.append("the sets of event ids differ")
        if self.checksum != other.checksum:
            found.append("the checksum differs (payloads, types, times or order)")
        return found


@attrs.frozen
class CopyResult:
    """What one run of :func:`copy_store` did."""

    copied: int
    """Events written by this run."""
    skipped: int
    """Events an earlier, stopped run had copied already (the run resumed after them)."""
    source_position: int
    """The source position the copy reached."""
    seconds: float
    kept_times: bool = True
    """Whether each event kept its original ``recorded_at`` (the target has ``import_events``)."""


Progress = Callable[[int, int, int, int], None]
"""Called after each page as ``progress(start, source_position, events_copied, source_last_position)``;
``start`` is the source position the run began after (not 0 when it resumed)."""


def copy_store(
    source: EventStore,
    target: EventStore,
    *,
    decode_with: Serializer | None = None,
    page: int = DEFAULT_PAGE,
    progress: Progress | None = None,
    clock: Callable[[], float] | None = None,
) -> CopyResult:
    """Copy every event of ``source`` (read through a :class:`PassThroughSerializer`, or
    through ``decode_with`` to re-encode each event) into ``target`` (opened with a
    PassThroughSerializer), resuming after the target's last event."""
    now = clock or time.monotonic
    began = now()
    after, skipped = _resume_point(source, target)
    last = source.last_position()
    copied = 0
    position = after
    importing = isinstance(target, EventImport)
    for batch in _read_ahead(_pages(source.read_all(after=after), page)):
        position = batch[-1].position
        if importing:
            target.import_events(_page_imports(batch, decode_with))  # type: ignore[attr-defined]
        else:
            target.append_many(_page_appends(batch, decode_with))
        copied += len(batch)
        if progress is not None:
            progress(after, position, copied, last)
    return CopyResult(copied, skipped, position, now() - began, importing)


def _read_ahead(pages: Iterator[list[RecordedEvent]], depth: int = 2) -> Iterator[list[RecordedEvent]]:
    """The pages of ``pages``, read by a thread up to ``depth`` pages ahead: the source is read
    and decoded while the target stores the page before (a database write waits on the
    network, without the GIL). At most ``depth + 2`` pages are in memory."""
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(kind: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put((kind, item), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in pages:
                if not offer("page", batch):
                    return
            offer("end", None)
        except BaseException as exc:  # handed to the copying thread, raised there
            offer("error", exc)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="orchestrix-copy-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            kind, item = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()  # a stopped copy (an error, Ctrl-C) lets the reader go
        reader.join(timeout=5)


def _resume_point(source: EventStore, target: EventStore) -> tuple[int, int]:
    """(source position to read after, events copied before) from the target's last event."""
    end = target.last_position()
    if end == 0:
        return 0, 0
    last = next(iter(target.read_all(after=end - 1, limit=1)))
    original = next(iter(source.read_stream(last.stream, last.version)), None)
    if original is None or original.event_id != last.event_id or original.version != last.version:
        raise CopyTargetError(last.stream, last.version)
    # Events before it in the source were copied with it; counted for the report only.
    return original.position, _count_until(source, original.position)


def _count_until(source: EventStore, position: int) -> int:
    count = 0
    for recorded in source.read_all():
        if recorded.position > position:
            break
        count += 1
    return count


def _pages(events: Iterable[RecordedEvent], size: int) -> Iterator[list[RecordedEvent]]:
    """Cut the source into pages of about ``size`` events; a page also ends before an event
    whose stream had an earlier, interrupted run in it, as append_many takes each stream once."""
    batch: list[RecordedEvent] = []
    seen: set[str] = set()
    current: str | None = None
    for recorded in events:
        stream = recorded.stream
        if stream != current and (stream in seen or len(batch) >= size):
            yield batch
            batch, seen = [], set()
        batch.append(recorded)
        seen.add(stream)
        current = stream
    if batch:
        yield batch


def _page_imports(batch: list[RecordedEvent], decode_with: Serializer | None) -> list[ImportedEvent]:
    imports = []
    for recorded in batch:
        event = recorded.event
        if decode_with is not None:
            event = StoredEvent(*decode_with.encode(event))
        imports.append(
            ImportedEvent(
                recorded.stream,
                recorded.version,
                event,
                recorded.event_id,
                recorded.recorded_at,
                recorded.correlation_id,
                recorded.causation_id,
            )
        )
    return imports


def _page_appends(batch: list[RecordedEvent], decode_with: Serializer | None) -> list[StreamAppend]:
    appends: list[StreamAppend] = []
    run: list[NewEvent] = []
    run_stream = batch[0].stream
    run_start = batch[0].version
    for recorded in batch:
        if recorded.stream != run_stream:
            appends.append(StreamAppend(run_stream, run, run_start - 1))
            run, run_stream, run_start = [], recorded.stream, recorded.version
        event = recorded.event
        if decode_with is not None:
            event = StoredEvent(*decode_with.encode(event))
        run.append(NewEvent(event, recorded.event_id, recorded.correlation_id, recorded.causation_id))
    appends.append(StreamAppend(run_stream, run, run_start - 1))
    return appends


def tally(events: Iterable[RecordedEvent], serializer: Serializer, *, times: bool = True) -> Tally:
    """Sum up ``events`` (read through ``serializer``) for verification; with ``times``, the
    checksum covers each event's ``recorded_at`` (in UTC, to the microsecond) too."""
    count = 0
    versions: dict[str, int] = {}
    ids = 0
    digest = hashlib.sha256()
    for recorded in events:
        count += 1
        versions[recorded.stream] = recorded.version
        ids = (ids + recorded.event_id.int) % (1 << 128)
        type_name, data = serializer.to_dict(recorded.event)
        line = [recorded.stream, recorded.version, str(recorded.event_id), type_name, data]
        if times:
            line.append(recorded.recorded_at.astimezone(UTC).isoformat(timespec="microseconds"))
        digest.update(_canonical(line).encode())
        digest.update(b"\n")
    return Tally(count, versions, ids, digest.hexdigest())


def _canonical(value: Any) -> str:
    # Keys sorted: PostgreSQL's jsonb keeps no key order, so the same event reads back reordered.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
