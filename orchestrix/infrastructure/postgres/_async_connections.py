"""The asyncio side of the PostgreSQL driver: connections kept per event loop, and the driver
that runs a sans-I/O operation on one.

An asyncio pool belongs to the loop it was opened in, and one store object may outlive several
loops (``asyncio.run`` twice), so the store keeps a small idle list per loop instead, with no
background tasks that a finished loop would leave behind. ``_db.py``'s ``Database`` picks
these (or a caller's ``AsyncConnectionPool``) and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg_pool import PoolTimeout

from orchestrix.infrastructure.postgres._connect import UTC_SESSION, ConnectFailed
from orchestrix.infrastructure.postgres._ops import Op, Sleep

__all__: list[str] = []

T = TypeVar("T")

# One cursor per connection, reused, in binary format: as the sync driver's (``_db.py``).
_cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


async def drive_async(conn: psycopg.AsyncConnection, op: Op[T]) -> T:
    """Run a sans-IO operation on an asyncio connection."""
    cursor = _cursors.get(conn)
    if cursor is None or cursor.closed:
        cursor = _cursors[conn] = conn.cursor(binary=True)
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.throw(error) if error is not None else op.send(answer)
        except StopIteration as done:
            if not conn.autocommit:
                await conn.commit()
            return done.value  # type: ignore[no-any-return]
        answer, error = None, None
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            continue
        try:
            await cursor.execute(step.sql, step.params)
            answer = await cursor.fetchall() if step.fetch else []
        except pg_errors.UniqueViolation as exc:
            if not conn.autocommit:
                await conn.rollback()
            error = exc


class LoopConnections:
    """Idle asyncio connections of one event loop, opened on demand, at most ``size`` in use."""

    def __init__(self, conninfo: str, size: int) -> None:
        self._conninfo = conninfo
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float) -> AsyncIterator[psycopg.AsyncConnection]:
        """Borrow a connection; a broken or busy one is closed instead of kept."""
        try:
            # Not wait_for: on 3.11 it loses a cancel that lands as the semaphore is granted.
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(f"no asyncio connection free within {timeout:.1f} s") from None
        try:
            conn = await self._take()
            reusable = False
            try:
                yield conn
                reusable = True
            except psycopg.Error:
                reusable = True  # the driver's error; the connection may still be fine
                raise
            finally:
                if reusable and _is_idle(conn):
                    self._idle.append(conn)
                else:
                    conn.pgconn.finish()
        finally:
            self._slots.release()

    async def _take(self) -> psycopg.AsyncConnection:
        while self._idle:
            conn = self._idle.pop()
            if _is_idle(conn):
                return conn
            conn.pgconn.finish()
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise ConnectFailed(exc) from exc
        try:
            await conn.execute(UTC_SESSION)
        except BaseException:
            conn.pgconn.finish()
            raise
        return conn

    def discard(self) -> None:
        """Close the idle connections; works after the loop has ended (libpq's close is not async)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.pgconn.finish()


def _is_idle(conn: psycopg.BaseConnection[Any]) -> bool:
    return (
        not conn.closed
        and conn.pgconn.status == pq.ConnStatus.OK
        and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    )
