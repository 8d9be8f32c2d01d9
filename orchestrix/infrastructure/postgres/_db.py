"""Connections and the two drivers (sync and asyncio) that run operations with bounded retries.

Sync calls use a ``psycopg_pool.ConnectionPool``. Asyncio calls use ``AsyncConnection`` objects
kept per event loop (or an ``AsyncConnectionPool`` the caller owns): an asyncio pool belongs to
the loop it was opened in, and one store object may outlive several loops (``asyncio.run``
twice), so the store keeps a small idle list per loop instead, with no background tasks that
a finished loop would leave behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from orchestrix.core.errors import StoreClosedError
from orchestrix.infrastructure.postgres._ops import Op, Sleep
from orchestrix.infrastructure.postgres.errors import (
    DatabaseConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)
from orchestrix.infrastructure.postgres.errors import (
    _one_line as one_line,
)

__all__: list[str] = []

T = TypeVar("T")

# Defaults added to a DSN unless it sets them: detect a dead server or network in ~25 s
# instead of hanging on a socket for ever (the peer library's LISTEN hang, eventsourcing#305).
_CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "orchestrix",
}

# The store's own connections run in UTC: timestamps then arrive as UTC datetimes already,
# where a server zone such as Etc/UTC would make the store convert each recorded_at (a sixth
# of the cost of reading an event). A SET, not libpq's ``options``: PgBouncer refuses that
# startup parameter. Connections of a caller's pool keep their zone (and are converted).
_UTC_SESSION = "SET TimeZone TO 'UTC'"


def _utc_session(conn: psycopg.Connection) -> None:
    conn.execute(_UTC_SESSION)


# libpq checks these only when it connects, in the words of a failed connection attempt
# ("connection to server ... failed: invalid integer value"): checked here, a typo is not
# retried for the whole budget like an outage.
_INTEGER_OPTIONS = (
    "port",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)

# libpq reports a failed connection without its SQLSTATE (and libpq's ping, which could tell,
# holds the GIL for as long as a server takes not to answer), so a refusal that retrying cannot
# cure is known by its words: the server's (in English unless its lc_messages says otherwise;
# other languages are then retried like an outage, the words still in the final error) and
# libpq's own. Not here, so retried: refused or timed-out connections, unknown hosts, "the
# database system is starting up / shutting down" (57P03), "too many clients" (53300).
_REFUSALS = re.compile(
    r'database "[^"]*" does not exist'  # 3D000
    r'|role "[^"]*" does not exist'  # 28000
    r"|is not permitted to log in"  # 28000
    r"|no pg_hba\.conf entry"  # 28000
    r"|authentication failed"  # 28P01 and the other methods: password, ident, peer, cert...
    r"|permission denied for database"  # 42501: no CONNECT privilege
    r"|no password supplied"  # libpq: the server wants a password and the DSN has none
)

_DIAGNOSE_TIMEOUT = 2
"""Seconds the connection attempt after a pool timeout may take (the pool already waited)."""


def with_defaults(conninfo: object, extra: dict[str, Any] | None = None) -> str:
    """``conninfo`` with keepalive and timeout defaults for whatever it does not set itself.

    Raises DatabaseConfigurationError, naming what is wrong, for a DSN libpq cannot use.
    """
    if not isinstance(conninfo, str):
        raise DatabaseConfigurationError(
            f"expected a DSN string or a psycopg_pool.ConnectionPool, not {type(conninfo).__name__}",
            refused_by_server=False,
        )
    try:
        given = pg_conninfo.conninfo_to_dict(conninfo, **(extra or {}))
    except psycopg.Error as exc:  # its message may quote the whole DSN, password included
        raise DatabaseConfigurationError(reason(exc, conninfo), refused_by_server=False) from None
    for name in _INTEGER_OPTIONS:
        value = str(given.get(name, ""))
        if not all(item.strip().lstrip("-").isdigit() for item in value.split(",") if item.strip()):
            raise DatabaseConfigurationError(
                f"invalid integer value {value!r} for connection option {name!r}", refused_by_server=False
            )
    return pg_conninfo.make_conninfo(**{**_CONNECTION_DEFAULTS, **{k: str(v) for k, v in given.items()}})


def reason(exc: BaseException, dsn: str) -> str:
    """The words of a connection error on one line, without psycopg's prefix or any password."""
    return hide_password(one_line(exc), dsn)


def hide_password(text: str, dsn: str) -> str:
    """``text`` with the password of ``dsn`` (in any form it may be quoted) replaced by ``***``."""
    text = re.sub(r"(?i)(\w+://[^:/@\s\"']*:)[^@\s\"']*@", r"\1***@", text)
    text = re.sub(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&\"]+)", r"\1***", text)
    try:
        password = pg_conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password and len(str(password)) >= 4:  # a shorter one would blank out ordinary words
        text = text.replace(str(password), "***")
    return text


def _refused_before_trying(message: str) -> bool:
    # libpq refused an option (sslmode=bogus, an unparsable hostaddr) before trying any server;
    # a host name that does not resolve (yet) is not a setting it can judge.
    return (
        message.startswith("connection is bad:")
        and "connection to server" not in message
        and "translate host name" not in message
    )


def classify_connect_failure(conninfo: str, exc: psycopg.Error) -> psycopg.Error:
    """Return ``exc`` if another connection attempt may succeed; raise if retrying cannot help."""
    text = one_line(exc)
    if isinstance(exc, psycopg.ProgrammingError) or _refused_before_trying(str(exc)):
        raise DatabaseConfigurationError(reason(exc, conninfo), refused_by_server=False) from None
    if exc.sqlstate is not None:
        if is_retryable(exc):
            return exc
        raise database_error("connect", exc) from exc
    if _REFUSALS.search(text):
        raise DatabaseConfigurationError(reason(exc, conninfo), refused_by_server=True) from None
    return exc


def is_retryable(exc: BaseException) -> bool:
    """True for failures that retrying on a fresh connection can fix: lost connections, restarts."""
    if isinstance(exc, PoolClosed):
        return False
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # raised by the client: the connection broke or could not be made
        return isinstance(exc, psycopg.OperationalError)
    # 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now;
    # 40001/40P01: serialization failure, deadlock (the transaction was rolled back).
    return state.startswith("08") or state in {"57P01", "57P02", "57P03", "40001", "40P01"}


class Retry:
    """Bounded retries with backoff (10 ms doubling to 1 s) for one operation."""

    def __init__(self, operation: str, budget: float) -> None:
        self.operation = operation
        self.budget = budget
        self.attempts = 0
        self.started = time.monotonic()
        self.delay = 0.01

    def failed(self, exc: BaseException) -> float:
        """Record a failure; return the pause before the next try, or raise if out of budget."""
        self.attempts += 1
        waited = time.monotonic() - self.started
        if waited >= self.budget:
            raise DatabaseUnavailableError(self.operation, self.attempts, waited, exc) from exc
        delay = min(self.delay, self.budget - waited)
        self.delay = min(self.delay * 2, 1.0)
        return delay

    def remaining(self) -> float:
        """Seconds left in the budget (at least a little, so one attempt can always be made)."""
        return max(0.5, self.budget - (time.monotonic() - self.started))


def database_error(operation: str, exc: psycopg.Error) -> DatabaseError:
    """Wrap an error PostgreSQL (or psycopg) reported and retrying will not fix."""
    return DatabaseError(operation, exc.sqlstate, exc)


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
                configure=_utc_session,
                name="orchestrix",
                open=False,
            )
            self._owns_pool = True
        self._loops: dict[asyncio.AbstractEventLoop, _LoopConnections] = {}
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
                raise _ConnectFailed(exc) from exc
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
            except _ConnectFailed as exc:
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
                    return await _drive_async(conn, make_op())
            except PoolTimeout as exc:  # diagnosing blocks on a connection: not on the loop
                diagnosed = await asyncio.to_thread(self.diagnose)
                error: psycopg.Error = diagnosed or exc
            except _ConnectFailed as exc:
                error = classify_connect_failure(self.conninfo, exc.cause)
            except psycopg.Error as exc:
                if not is_retryable(exc):
                    raise database_error(operation, exc) from exc
                error = exc
            retry = retry or Retry(operation, self.retry_timeout)
            await asyncio.sleep(retry.failed(error))
            timeout = retry.remaining()

    def _for_running_loop(self) -> _LoopConnections:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            found = self._loops.get(loop)
            if found is None:
                for other in [other for other in self._loops if other.is_closed()]:
                    self._loops.pop(other).discard()
                found = self._loops[loop] = _LoopConnections(self.conninfo, self._async_size)
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


class _ConnectFailed(Exception):
    """A new connection could not be made (``cause``): the retry loop asks whether it can be."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


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


async def _drive_async(conn: psycopg.AsyncConnection, op: Op[T]) -> T:
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


class _LoopConnections:
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
            raise _ConnectFailed(exc) from exc
        try:
            await conn.execute(_UTC_SESSION)
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
