"""Connecting to PostgreSQL: the settings added to a DSN, and which failures a retry can cure.

A refused password or a database that does not exist fails at once, naming the server's reason
without the password; a lost connection or a restarting server is retried within a budget
(:class:`Retry`). The drivers that use these are ``_db.py`` (sync) and ``_async_connections.py``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import PoolClosed, PoolTimeout

from orchestrix.infrastructure.postgres.errors import (
    DatabaseConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)
from orchestrix.infrastructure.postgres.errors import (
    _one_line as one_line,
)

__all__: list[str] = []

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
UTC_SESSION = "SET TimeZone TO 'UTC'"


def utc_session(conn: psycopg.Connection) -> None:
    conn.execute(UTC_SESSION)


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


class ConnectFailed(Exception):
    """A new connection could not be made (``cause``): the retry loop asks whether it can be."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause
