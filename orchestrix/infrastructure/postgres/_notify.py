"""Wake-ups across processes: NOTIFY after commit (coalesced), LISTEN on a dedicated connection.

A notification is only a hint that something may be readable; readers always re-read from
their position and also poll, so a lost notification delays a reader, never loses an event.
NOTIFY is never sent inside an append's transaction: PostgreSQL serialises all committing
transactions that notified (a global lock at commit), which would undo concurrent writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import LiteralString

import psycopg

__all__: list[str] = []

log = logging.getLogger(__name__)

Connect = Callable[[], psycopg.Connection]


class Notifier:
    """Sends ``NOTIFY`` from its own thread and connection, at most once per ``interval``.

    The first append after a quiet spell is announced at once; appends during the next
    ``interval`` share one notification.
    """

    def __init__(self, connect: Connect, notify_sql: LiteralString, interval: float) -> None:
        self._connect = connect
        self._sql: LiteralString = notify_sql
        self._interval = interval
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        """Ask for a notification soon; never blocks on the database."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="orchestrix-notify", daemon=True)
                    self._thread.start()
        if not self._wanted.is_set():  # under load it usually is: skip the Condition round trip
            self._wanted.set()

    def close(self) -> None:
        """Send a last pending notification, then stop."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join(timeout=5.0)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while True:
                self._wanted.wait()
                if self._stop.is_set() and not self._wanted.is_set():
                    return
                self._wanted.clear()
                conn = self._send(conn)
                if self._stop.is_set():
                    if self._wanted.is_set():
                        self._wanted.clear()
                        conn = self._send(conn)
                    return
                self._stop.wait(self._interval)
        finally:
            if conn is not None:
                conn.close()

    def _send(self, conn: psycopg.Connection | None) -> psycopg.Connection | None:
        try:
            if conn is None or conn.closed:
                conn = self._connect()
                # A notification is a hint: it need not wait for its commit record to be flushed.
                conn.execute("SET synchronous_commit TO off")
            conn.execute(self._sql)
            return conn
        except psycopg.Error as exc:
            log.debug("NOTIFY failed (readers fall back to polling): %s", exc)
            if conn is not None:
                conn.close()
            return None


class Listener:
    """A thread that LISTENs on a dedicated connection and counts wake-ups.

    Waiters read :attr:`generation`, check the database, then wait for the generation to
    change: a notification that arrives while they query is never missed. After the
    connection dies (server restart, ``pg_terminate_backend``, network loss caught by TCP
    keepalives) the thread reconnects with backoff, LISTENs again and then bumps the
    generation, so every waiter re-reads: notifications sent while it was down are lost,
    events are not.
    """

    def __init__(self, connect: Connect, listen_sql: LiteralString) -> None:
        self._connect = connect
        self._sql: LiteralString = listen_sql
        self._cond = threading.Condition()
        self._generation = 0
        self._connected = False
        self._tried = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.backend_pid: int | None = None
        self.connections_made: int = 0

    @property
    def generation(self) -> int:
        """Incremented on every notification, reconnection and close."""
        return self._generation

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._connected

    @property
    def stopped(self) -> bool:
        """True once :meth:`close` was called."""
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread if it is not running."""
        with self._cond:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="orchestrix-listen", daemon=True)
                self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the first connection attempt, so LISTEN precedes the first read."""
        with self._cond:
            self._cond.wait_for(lambda: self._tried or self._stop.is_set(), timeout)

    def wait_change(self, generation: int, timeout: float) -> None:
        """Block until :attr:`generation` differs from ``generation`` or ``timeout`` passes."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation, timeout)

    def add_async_waiter(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Have ``event`` set (in ``loop``) on every generation change."""
        with self._cond:
            self._async_waiters.add((loop, event))

    def remove_async_waiter(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Undo :meth:`add_async_waiter`."""
        with self._cond:
            self._async_waiters.discard((loop, event))

    def close(self) -> None:
        """Stop the thread and wake every waiter."""
        self._stop.set()
        self._bump()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)

    def _bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                log.debug("LISTEN connection failed, retrying in %.2f s: %s", backoff, exc)
                self._set_state(connected=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                with conn:
                    conn.execute(self._sql)
                    self.backend_pid = conn.info.backend_pid
                    self.connections_made += 1
                    self._set_state(connected=True)
                    self._bump()
                    backoff = 0.05
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.25):
                            self._bump()
            except psycopg.Error as exc:
                log.debug("LISTEN connection lost, reconnecting: %s", exc)
            finally:
                self._set_state(connected=False)

    def _set_state(self, *, connected: bool) -> None:
        with self._cond:
            self._connected = connected
            self._tried = True
            self._cond.notify_all()
