"""The database a store talks to, and the sync driver that runs operations with bounded retries.

Sync calls use a ``psycopg_pool.ConnectionPool``. Asyncio calls use ``AsyncConnection`` objects
kept per event loop (``_async_connections.py``), or an ``AsyncConnectionPool`` the caller owns;
both retry here. Which failures a retry can cure is ``_connect.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from orchestrix.core.errors import StoreClosedError
from orchestrix.infrastructure.postgres._async_connections import LoopConnections, drive_async
from orchestrix.infrastructure.postgres._connect import (
    ConnectFailed,
    Retry,
    classify_connect_failure,
    database_error,
    is_retryable,
    utc_session,
    with_defaults,
)
from orchestrix.infrastructure.postgres._ops import Op, Sleep

__all__: list[str] = []

T = TypeVar("T")

_DIAGNOSE_TIMEOUT = 2
"""Seconds the connection attempt after a pool timeout may take (the pool already waited)."""


class Database:
    """Everything that talks to one PostgreSQL database: pools, drivers, retry policy."""

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool,
        *,
        pool_size: int,
        retry_timeout: float,
        async_pool: AsyncConnectionPool | None = None,
    ) -> None:
        self.retry_timeout = retry_timeout
        self._closed = False
        self._async_pool = async_pool
        if isinstance(dsn_or_pool, ConnectionPool):
            self._pool = dsn_or_pool
            self._owns_pool = False
            self.conninfo = with_defaults(dsn_or_pool.conninfo, _plain_kwargs(dsn_or_pool.kwargs))
        else:
            self.conninfo = with_defaults(dsn_or_pool)
            # Opened by open() once a first connection worked: a pool opened on a DSN that
            # cannot work would log each of its failed attempts in the background.
            self._pool = ConnectionPool(
                self.conninfo,
                kwargs={"autocommit": True},
                min_size=1,
                max_size=max(1, pool_size),
                configure=utc_session,
                name="orchestrix",
                open=False,
            )
            self._owns_pool = True
        self._loops: dict[asyncio.AbstractEventLoop, LoopConnections] = {}
        self._loops_lock = threading.Lock()
        self._async_size = max(1, pool_size)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        """A dedicated connection outside the pool (for LISTEN and NOTIFY)."""
        return psycopg.Connection.connect(self.conninfo, autocommit=True, **kwargs)

    # -- sync ---------------------------------------------------------------------------------

    def open(self, function: Callable[[psycopg.Connection], T]) -> T:
        """Call ``function`` once to open the store, then open the pool this object made.

        The store's own pool is not used for this: a pool hides why it cannot connect behind
        a timeout, so a DSN that cannot work would be retried for the whole budget. A
        connection of its own fails at once, with the server's reason.
        """
        if not self._owns_pool:
            return self.call("open", function)

        def direct(timeout: float) -> T:
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                raise ConnectFailed(exc) from exc
            with conn:
                return function(conn)

        result = self._retrying("open", direct)
        self._pool.open(wait=False)
        return result

    def run(self, operation: str, make_op: Callable[[], Op[T]]) -> T:
        """Run an operation on a pooled connection, retrying lost connections within the budget."""
        # The pool is typed by what callers may pass (any ConnectionPool); its connections are plain ones.
        pool = cast("ConnectionPool[psycopg.Connection[Any]]", self._pool)

        # getconn/putconn, not pool.connection(): _drive commits (or rolls back) itself, so the
        # context manager's own commit and bookkeeping would only add about 3 us per call
        # (half of what borrowing a connection costs). An error's open transaction is rolled
        # back here, as leaving ``with conn`` would.
        def pooled(timeout: float) -> T:
            conn = pool.getconn(timeout)
            try:
                return _drive(conn, make_op())
            except BaseException:
                _rollback_quietly(conn)
                raise
            finally:
                pool.putconn(conn)

        return self._retrying(operation, pooled)

    def call(self, operation: str, function: Callable[[psycopg.Connection], T]) -> T:
        """Call ``function`` with a pooled connection, retrying lost connections within the budget."""

        def pooled(timeout: float) -> T:
            with self._pool.connection(timeout=timeout) as conn:
                return function(conn)

        return self._retrying(operation, pooled)

    def _retrying(self, operation: str, attempt: Callable[[float], T]) -> T:
        retry: Retry | None = None
        timeout = self.retry_timeout
        while True:
            if self._closed:
                raise StoreClosedError("the store is closed")
            try:
                return attempt(timeout)
            except PoolClosed:
                raise StoreClosedError("the store is closed") from None
            except PoolTimeout as exc:  # the pool cannot say why: find out, failing fast if need be
                error: psycopg.Error = self.diagnose() or exc
            except ConnectFailed as exc:
                error = classify_connect_failure(self.conninfo, exc.cause)
            except psycopg.Error as exc:
                if not is_retryable(exc):
                    raise database_error(operation, exc) from exc
                error = exc
            if retry is None:  # made only on failure: the hot path stays lean
                retry = Retry(operation, self.retry_timeout)
                if self._owns_pool:
                    self._drop_broken_connections()
            time.sleep(retry.failed(error))
            timeout = retry.remaining()

    def diagnose(self) -> psycopg.Error | None:
        """Why no connection came: None if one can be made now, the error if a retry may help.

        Raises DatabaseConfigurationError at once if the server refuses this DSN. Blocking.
        """
        try:
            psycopg.Connection.connect(self.conninfo, connect_timeout=_DIAGNOSE_TIMEOUT).close()
        except psycopg.Error as exc:
            return classify_connect_failure(self.conninfo, exc)
        return None

    def _drop_broken_connections(self) -> None:
        # After a server restart every idle connection is dead; check them all at once
        # instead of failing on each in turn.
        with contextlib.suppress(Exception):
            self._pool.check()

    # -- asyncio --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def async_connection(self, timeout: float) -> AsyncIterator[psycopg.AsyncConnection]:
        """An asyncio connection for the running loop."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        if self._async_pool is not None:
            try:
                async with self._async_pool.connection(timeout=timeout) as conn:
                    yield conn
            except PoolClosed:
                raise StoreClosedError("the store is closed") from None
            return
        async with self._for_running_loop().connection(timeout) as conn:
            yield conn

    async def run_async(self, operation: str, make_op: Callable[[], Op[T]]) -> T:
        """Asyncio form of :meth:`run`."""
        retry: Retry | None = None
        timeout = self.retry_timeout
        while True:
            try:
                async with self.async_connection(timeout) as conn:
                    return await drive_async(conn, make_op())
            except PoolTimeout as exc:  # diagnosing blocks on a connection: not on the loop
                diagnosed = await asyncio.to_thread(self.diagnose)
                error: psycopg.Error = diagnosed or exc
            except ConnectFailed as exc:
                error = classify_connect_failure(self.conninfo, exc.cause)
            except psycopg.Error as exc:
                if not is_retryable(exc):
                    raise database_error(operation, exc) from exc
                error = exc
            retry = retry or Retry(operation, self.retry_timeout)
            await asyncio.sleep(retry.failed(error))
            timeout = retry.remaining()

    def _for_running_loop(self) -> LoopConnections:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            found = self._loops.get(loop)
            if found is None:
                for other in [other for other in self._loops if other.is_closed()]:
                    self._loops.pop(other).discard()
                found = self._loops[loop] = LoopConnections(self.conninfo, self._async_size)
            return found

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pool (if this object made it) and every idle asyncio connection."""
        self._closed = True
        with self._loops_lock:
            loops, self._loops = self._loops, {}
        for connections in loops.values():
            connections.discard()
        if self._owns_pool:
            self._pool.close()


def _rollback_quietly(conn: psycopg.Connection) -> None:
    # What leaving ``with conn`` does on an error: end a transaction the error left open
    # (only a caller's non-autocommit pool has one), without hiding the error.
    if conn.closed or conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        return
    with contextlib.suppress(Exception):
        conn.rollback()


def _plain_kwargs(kwargs: dict[str, Any] | Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    # Connection keyword arguments that are libpq parameters (not psycopg options). A pool may
    # be given a function that returns them (psycopg_pool 3.3): it calls it for each connection.
    given = kwargs() if callable(kwargs) else kwargs
    skip = {"autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context"}
    return {k: v for k, v in (given or {}).items() if k not in skip}


# One cursor per connection, reused: making a cursor for every statement costs about as much
# client CPU as the rest of an append. A pooled connection serves one thread at a time, and
# so does its cursor. Results come in binary format: integers, uuids and timestamps are then
# copied rather than parsed from text, which halves the cost of fetching a page of events.
_cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _cursor(conn: psycopg.Connection) -> psycopg.Cursor[Any]:
    cursor = _cursors.get(conn)
    if cursor is None or cursor.closed:
        cursor = _cursors[conn] = conn.cursor(binary=True)
    return cursor


def _drive(conn: psycopg.Connection, op: Op[T]) -> T:
    """Run a sans-IO operation on a sync connection."""
    cursor = _cursor(conn)
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.throw(error) if error is not None else op.send(answer)
        except StopIteration as done:
            if not conn.autocommit:
                conn.commit()
            return done.value  # type: ignore[no-any-return]
        answer, error = None, None
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            continue
        try:
            cursor.execute(step.sql, step.params)
            answer = cursor.fetchall() if step.fetch else []
        except pg_errors.UniqueViolation as exc:
            if not conn.autocommit:
                conn.rollback()
            error = exc
