"""The PostgreSQL event store: many processes on many hosts share one ordered log.

Writers never wait for each other except on the same stream: optimistic concurrency is
``UNIQUE(stream, version)``, idempotency is ``UNIQUE(event_id)``, and the global order comes
from the appending transaction's id (see ``_schema`` and docs/postgres.md), so no lock is
held across commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orchestrix.core._checks import (
    check_after,
    check_expected_version_arg,
    check_from_version,
    check_limit,
    check_stream_name,
    check_timeout,
    check_types,
)
from orchestrix.core.errors import BatchTooLargeError
from orchestrix.core.eventsourcing._backend import (
    Part,
    to_import_parts,
    to_new_events,
    to_parts,
    wanted_names,
)
from orchestrix.core.eventsourcing.fencing import Fence, current_fence
from orchestrix.core.eventsourcing.store import ANY, AppendResult, ImportedEvent, StreamAppend
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.postgres import _ops
from orchestrix.infrastructure.postgres._db import Database
from orchestrix.infrastructure.postgres._notify import Listener, Notifier
from orchestrix.infrastructure.postgres._schema import MAX_BATCH_SIZE, ensure_schema, validate_schema_name
from orchestrix.infrastructure.postgres._statements import Statements
from orchestrix.infrastructure.postgres.checkpoint import PostgresCheckpointStore
from orchestrix.infrastructure.postgres.snapshot import PostgresSnapshotStore

__all__ = ["PostgresEventStore"]


class PostgresEventStore:
    """An EventStore in a PostgreSQL (13+) schema, with sync and asyncio forms of every call.

    ``dsn_or_pool`` is a libpq connection string or URI, or a ``psycopg_pool.ConnectionPool``
    the caller owns (then ``close`` leaves it open). Asyncio calls use connections of the
    running loop, or ``async_pool`` if given. Tables are created (or migrated) on construction
    unless ``create_schema`` is false.

    Lost connections and server restarts are retried with backoff for ``retry_timeout``
    seconds, then raise ``DatabaseUnavailableError``; retrying an append is safe because its
    event ids make a stored batch a no-op. ``poll_interval`` bounds how long a waiter sleeps
    when no notification arrives; ``visibility_timeout`` bounds how long a read waits for this
    store's own appends to pass the order horizon (a long transaction elsewhere in the cluster
    can hold it back).
    """

    page_size = 1000

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool,
        serializer: Serializer,
        *,
        schema: str = "orchestrix",
        create_schema: bool = True,
        pool_size: int = 10,
        async_pool: AsyncConnectionPool | None = None,
        retry_timeout: float = 15.0,
        poll_interval: float = 1.0,
        notify_interval: float = 0.05,
        visibility_timeout: float = 5.0,
    ) -> None:
        self._serializer = serializer
        self._schema = validate_schema_name(schema)
        self._st = Statements(schema)
        self._db = Database(
            dsn_or_pool, pool_size=pool_size, retry_timeout=retry_timeout, async_pool=async_pool
        )
        self._poll_interval = poll_interval
        self._visibility_timeout = visibility_timeout
        self._own_position = 0
        self._own_lock = threading.Lock()
        self._notifier = Notifier(self._db.connect, self._st.notify, notify_interval)
        self._listener = Listener(self._db.connect, self._st.listen)
        try:
            self._db.open(functools.partial(ensure_schema, schema=schema, create=create_schema))
            # Events committed before this store opened count as its own: a read waits (bounded
            # by the visibility timeout) for the horizon to pass them, so a store reopened while
            # an older transaction elsewhere still holds the horizon back sees what was there.
            self._own_position = self._db.run("open", lambda: _ops.committed_position_op(self._st))
        except BaseException:
            self._db.close()
            raise

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the tables."""
        return self._schema

    @property
    def listener(self) -> Listener:
        """The LISTEN side (its ``backend_pid`` and ``connections_made`` help tests and monitoring)."""
        return self._listener

    def checkpoints(self) -> PostgresCheckpointStore:
        """A CheckpointStore in the same schema, sharing this store's connections."""
        return PostgresCheckpointStore._sharing(self._db, self._st)

    def snapshots(self) -> PostgresSnapshotStore:
        """A SnapshotStore in the same schema, sharing this store's connections and serializer."""
        return PostgresSnapshotStore._sharing(self._db, self._schema, self._serializer)

    # -- fencing --------------------------------------------------------------------------------

    checks_fences = True
    """Appends made under a fence (:func:`~orchestrix.core.eventsourcing.fencing.fenced`) are checked."""

    def grant_fence(self, name: str) -> Fence:
        """Grant lease ``name`` anew (``PartitionLease`` does this when it claims a partition).

        From now on, appends made under an older fence of ``name`` raise FencedError.
        """
        return Fence(name, self._db.run("grant_fence", lambda: _ops.grant_fence_op(self._st, name)))

    def fence_generation(self, name: str) -> int | None:
        """The newest generation granted for lease ``name``, or None."""
        return self._db.run("fence_generation", lambda: _ops.fence_generation_op(self._st, name))

    # -- writing --------------------------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Append all events, or raise ConcurrencyError and write none."""
        encoded = self._prepare(stream, events, expected_version)
        fence = current_fence()
        result, written = self._db.run(
            "append", lambda: _ops.append_op(self._st, stream, encoded, expected_version, fence)
        )
        self._appended(result, written)
        return result

    async def append_async(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int = ANY
    ) -> AppendResult:
        """Asyncio form of :meth:`append`."""
        encoded = self._prepare(stream, events, expected_version)
        fence = current_fence()
        result, written = await self._db.run_async(
            "append", lambda: _ops.append_op(self._st, stream, encoded, expected_version, fence)
        )
        self._appended(result, written)
        return result

    def append_many(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Append to several streams in one transaction, all or nothing (see ``EventStore.append_many``)."""
        parts = self._prepare_many(appends)
        fence = current_fence()
        results, written = self._db.run("append_many", lambda: _ops.append_streams_op(self._st, parts, fence))
        self._appended(results[-1], written)
        return results

    async def append_many_async(self, appends: Sequence[StreamAppend]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`append_many`."""
        parts = self._prepare_many(appends)
        fence = current_fence()
        results, written = await self._db.run_async(
            "append_many", lambda: _ops.append_streams_op(self._st, parts, fence)
        )
        self._appended(results[-1], written)
        return results

    def import_events(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Store events recorded elsewhere with their versions, ids and times (see ``EventImport``)."""
        parts, times = self._prepare_import(events)
        fence = current_fence()
        results, written = self._db.run(
            "import_events", lambda: _ops.append_streams_op(self._st, parts, fence, times)
        )
        self._appended(results[-1], written)
        return results

    async def import_events_async(self, events: Sequence[ImportedEvent]) -> tuple[AppendResult, ...]:
        """Asyncio form of :meth:`import_events`."""
        parts, times = self._prepare_import(events)
        fence = current_fence()
        results, written = await self._db.run_async(
            "import_events", lambda: _ops.append_streams_op(self._st, parts, fence, times)
        )
        self._appended(results[-1], written)
        return results

    def _prepare_import(
        self, events: Sequence[ImportedEvent]
    ) -> tuple[list[tuple[str, _ops.EncodedBatch, int]], list[list[datetime]]]:
        parts, times = to_import_parts(events)
        return self._encode_parts(parts), times

    def _prepare_many(self, appends: Sequence[StreamAppend]) -> list[tuple[str, _ops.EncodedBatch, int]]:
        return self._encode_parts(to_parts(appends))

    def _encode_parts(self, parts: list[Part]) -> list[tuple[str, _ops.EncodedBatch, int]]:
        total = sum(len(batch) for _, batch, _ in parts)
        if total > MAX_BATCH_SIZE:
            raise BatchTooLargeError(parts[0][0], "events", MAX_BATCH_SIZE, total)
        return [
            (stream, _ops.encode_batch(self._serializer, batch), expected)
            for stream, batch, expected in parts
        ]

    def _prepare(
        self, stream: str, events: Sequence[NewEvent | Any], expected_version: int
    ) -> _ops.EncodedBatch:
        check_stream_name(stream)
        check_expected_version_arg(expected_version)
        batch = to_new_events(stream, events)
        if len(batch) > MAX_BATCH_SIZE:
            raise BatchTooLargeError(stream, "events", MAX_BATCH_SIZE, len(batch))
        return _ops.encode_batch(self._serializer, batch)

    def _appended(self, result: AppendResult, written: bool) -> None:
        with self._own_lock:
            self._own_position = max(self._own_position, result.last_position)
        if written:
            self._notifier.poke()

    # -- reading --------------------------------------------------------------------------------

    def read_stream(self, stream: str, from_version: int = 0) -> Iterator[RecordedEvent]:
        """Yield the stream's events from ``from_version`` on, fetched lazily in pages."""
        check_stream_name(stream)
        return self._read_stream(stream, check_from_version(from_version))

    def _read_stream(self, stream: str, version: int) -> Iterator[RecordedEvent]:
        pages = _StreamPages(self, stream, version)
        while (op := pages.next()) is not None:
            rows = self._db.run("read_stream", op)
            yield from pages.took(rows)

    def read_all(
        self, after: int = 0, limit: int | None = None, *, types: Collection[type] | None = None
    ) -> Iterator[RecordedEvent]:
        """Yield every event with a position greater than ``after``, in global order, lazily (only
        those of ``types``, if given: rows of other types are passed over undecoded)."""
        return self._read_all(check_after(after), check_limit(limit), check_types(types))

    def _read_all(
        self, after: int, limit: int | None, types: frozenset[type] | None
    ) -> Iterator[RecordedEvent]:
        pages = _AllPages(self, after, limit, types)
        while (op := pages.next()) is not None:
            rows = self._db.run("read_all", op)
            yield from pages.took(rows)

    def read_stream_async(self, stream: str, from_version: int = 0) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_stream`."""
        check_stream_name(stream)
        return self._read_stream_async(stream, check_from_version(from_version))

    async def _read_stream_async(self, stream: str, version: int) -> AsyncIterator[RecordedEvent]:
        pages = _StreamPages(self, stream, version)
        while (op := pages.next()) is not None:
            rows = await self._db.run_async("read_stream", op)
            for event in pages.took(rows):
                yield event

    def read_all_async(
        self, after: int = 0, limit: int | None = None, *, types: Collection[type] | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Asyncio form of :meth:`read_all`."""
        return self._read_all_async(check_after(after), check_limit(limit), check_types(types))

    async def _read_all_async(
        self, after: int, limit: int | None, types: frozenset[type] | None
    ) -> AsyncIterator[RecordedEvent]:
        pages = _AllPages(self, after, limit, types)
        while (op := pages.next()) is not None:
            rows = await self._db.run_async("read_all", op)
            for event in pages.took(rows):
                yield event

    def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, or NO_STREAM (-1) if it has none."""
        check_stream_name(stream)
        return self._db.run("stream_version", lambda: _ops.stream_version_op(self._st, stream))

    async def stream_version_async(self, stream: str) -> int:
        """Asyncio form of :meth:`stream_version`."""
        check_stream_name(stream)
        return await self._db.run_async("stream_version", lambda: _ops.stream_version_op(self._st, stream))

    def last_position(self) -> int:
        """The highest position a reader can see now (0 for an empty store)."""
        own = self._own_position
        return self._db.run(
            "last_position", lambda: _ops.last_position_op(self._st, own, self._visibility_timeout)
        )

    async def last_position_async(self) -> int:
        """Asyncio form of :meth:`last_position`."""
        own = self._own_position
        return await self._db.run_async(
            "last_position", lambda: _ops.last_position_op(self._st, own, self._visibility_timeout)
        )

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event with position > ``after`` is readable or ``timeout`` passes.

        Woken by LISTEN/NOTIFY; polls every ``poll_interval`` in case a notification is lost,
        and faster while an event is committed but still behind the order horizon.
        """
        check_after(after)
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        listener = self._listener
        listener.start()
        listener.wait_ready(min(timeout, 2.0))
        while True:
            generation = listener.generation
            visible, pending = self._db.run("wait_for_events", lambda: _ops.events_after_op(self._st, after))
            if visible:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or listener.stopped:
                return False
            listener.wait_change(generation, min(remaining, self._pause(pending)))

    async def wait_for_events_async(self, after: int, timeout: float) -> bool:
        """Asyncio form of :meth:`wait_for_events`; the loop never blocks."""
        check_after(after)
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        listener = self._listener
        listener.start()
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        listener.add_async_waiter(loop, woken)
        try:
            if not listener.connected:
                await _wait_event(woken, min(timeout, 2.0))
            while True:
                woken.clear()
                visible, pending = await self._db.run_async(
                    "wait_for_events", lambda: _ops.events_after_op(self._st, after)
                )
                if visible:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or listener.stopped:
                    return False
                await _wait_event(woken, min(remaining, self._pause(pending)))
        finally:
            listener.remove_async_waiter(loop, woken)

    def _pause(self, pending: bool) -> float:
        # A committed event behind the horizon shows up when an older transaction ends,
        # which may send no notification (an aborted append, a foreign transaction).
        if pending:
            return min(self._poll_interval, 0.01)
        return self._poll_interval if self._listener.connected else min(self._poll_interval, 0.25)

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the last notification, stop the listener and close connections this store opened."""
        self._notifier.close()
        self._listener.close()
        self._db.close()

    def __enter__(self) -> PostgresEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    # asyncio.timeout, not wait_for: on 3.11 wait_for runs event.wait() as a task of its own
    # and, when a cancel lands in the loop turn in which that task ends, returns as if nothing
    # happened; the cancelled subscriber then polls on for ever.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class _StreamPages:
    """The paging of one stream read, shared by the sync and asyncio forms: which page to fetch
    next (an operation for ``Database.run``), and the events of the page just fetched."""

    def __init__(self, store: PostgresEventStore, stream: str, version: int) -> None:
        self.store = store
        self.stream = stream
        self.version = version
        self.done = False

    def next(self) -> Any:
        if self.done:
            return None
        st, size = self.store._st, self.store.page_size
        return functools.partial(_ops.read_stream_page_op, st, self.stream, self.version, size)

    def took(self, rows: list[Any]) -> Iterator[RecordedEvent]:
        if len(rows) < self.store.page_size:
            self.done = True
        else:
            self.version = rows[-1][2] + 1
        return _ops.decode_rows(self.store._serializer, rows)


class _AllPages:
    """The paging of a read of the global order (see :class:`_StreamPages`).

    ``own`` is the highest position this store appended itself (or found committed when it
    opened) that lies ahead: a read waits
    (up to the visibility timeout) for the order horizon to pass it, so a writer reads its own
    appends; once a page is past it, later pages need not wait.
    """

    def __init__(
        self, store: PostgresEventStore, after: int, limit: int | None, types: frozenset[type] | None
    ) -> None:
        self.store = store
        self.after = after
        self.remaining = limit
        self.own = store._own_position if store._own_position > after else 0
        self.size = 0
        self.done = False
        # With a type filter, rows are still read in order (the page moves past the others) and
        # only those taken are decoded; ``remaining`` counts those.
        self.wanted = None if types is None else wanted_names(store._serializer.class_of, types)

    def next(self) -> Any:
        if self.done or (self.remaining is not None and self.remaining <= 0):
            return None
        store = self.store
        # A filtered read asks for whole pages: how many rows hold the events it takes is unknown.
        if self.remaining is None or self.wanted is not None:
            self.size = store.page_size
        else:
            self.size = min(store.page_size, self.remaining)
        return functools.partial(
            _ops.read_all_page_op, store._st, self.after, self.size, self.own, store._visibility_timeout
        )

    def took(self, rows: list[Any]) -> Iterator[RecordedEvent]:
        if len(rows) < self.size:
            self.done = True
        else:
            self.after = rows[-1][0]
            self.own = self.own if self.own > self.after else 0
        if self.wanted is not None:
            wanted = self.wanted
            rows = [row for row in rows if wanted(row[4])]  # row[4]: the stored type name
            if self.remaining is not None and len(rows) >= self.remaining:
                rows, self.done = rows[: self.remaining], True
        if not self.done and self.remaining is not None:
            self.remaining -= len(rows)
        return _ops.decode_rows(self.store._serializer, rows)
